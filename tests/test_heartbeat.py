"""Heartbeats under one agent id: another live daemon writing them is noticed and named; our own
earlier instances, stopped daemons and old beats are not.

The writer runs against the embedded store on real files; the end-to-end test runs two daemons
with one agent id on one bucket.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, daemon_env, status_json, wait_for
from structlog.testing import capture_logs

from tracemirrord.heartbeat import HeartbeatWriter, OtherDaemon, live_other
from tracemirrord.store import LocalStore

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
AT_NOW = "2027-01-15T08:00:00Z"


def beat(**fields: Any) -> bytes:
    doc = {
        "id": "me@host",
        "status": "running",
        "heartbeat": AT_NOW,
        "instance": "b" * 12,
        "host": "other-host",
        "pid": 4242,
        "heartbeat_interval_s": 60,
    }
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (beat(), OtherDaemon("b" * 12, "other-host", 4242)),
        (beat(heartbeat="2027-01-15T07:57:01Z"), OtherDaemon("b" * 12, "other-host", 4242)),  # 179 s
        (beat(heartbeat="2027-01-15T07:56:59Z"), None),  # 181 s: more than 3 of its 60 s intervals
        (beat(heartbeat_interval_s=1, heartbeat="2027-01-15T07:59:56Z"), None),  # 4 s at 1 s
        (
            beat(heartbeat_interval_s=..., heartbeat="2027-01-15T07:57:30Z"),
            OtherDaemon("b" * 12, "other-host", 4242),
        ),
        (beat(status="stopped"), None),
        (beat(instance="a" * 12), None),  # ourselves
        (beat(instance="c" * 12), None),  # our predecessor on this state dir
        (beat(instance=...), None),  # tracecraft's own heartbeat shape: no instance
        (beat(pid="x", host=...), OtherDaemon("b" * 12, "?", None)),
        (beat(heartbeat="yesterday"), None),
        (b"not json", None),
        (b"[1, 2]", None),
    ],
)
def test_live_other(body: bytes, expected: OtherDaemon | None) -> None:
    assert live_other(body, "a" * 12, frozenset({"c" * 12}), NOW) == expected


@pytest.mark.anyio
async def test_two_writers_on_one_key_name_each_other_once(tmp_path: Path) -> None:
    """Beats alternating between two instances: each notices the other at its next beat and logs it
    once; a writer alone (the other stopped) clears it again."""
    store = LocalStore(tmp_path / "bucket")
    key = "p/agents/me@host.json"
    mine = HeartbeatWriter(store, key, "me@host", "a" * 12)
    theirs = HeartbeatWriter(store, key, "me@host", "b" * 12)
    now = _iso_now()
    with capture_logs() as logs:
        await mine.write(_doc("a" * 12, now))
        assert mine.other is None
        for _ in range(3):
            await theirs.write(_doc("b" * 12, now))
            await mine.write(_doc("a" * 12, now))
    assert mine.other == OtherDaemon("b" * 12, "host-b", 2)
    assert theirs.other == OtherDaemon("a" * 12, "host-a", 1)
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert sorted(e["other"] for e in warned) == [
        "host host-a, pid 1, instance aaaaaaaaaaaa",
        "host host-b, pid 2, instance bbbbbbbbbbbb",
    ]
    await theirs.write(_doc("b" * 12, now, status="stopped"))
    await mine.write(_doc("a" * 12, now))  # sees the stopped beat: nobody else
    assert mine.other is None
    await mine.write(_doc("a" * 12, now))  # If-Match on its own beat: still alone
    assert mine.other is None
    assert (
        json.loads((tmp_path / "bucket" / "p" / "agents" / "me@host.json").read_bytes())["instance"]
        == "a" * 12
    )


@pytest.mark.anyio
async def test_a_predecessors_beat_is_taken_over_silently(tmp_path: Path) -> None:
    """A restart (the beat left by our earlier instance on this state dir, status running after a
    kill -9) is no other daemon."""
    store = LocalStore(tmp_path / "bucket")
    key = "p/agents/me@host.json"
    await store.put(key, _doc("c" * 12, _iso_now()))
    writer = HeartbeatWriter(store, key, "me@host", "a" * 12, frozenset({"c" * 12}))
    with capture_logs() as logs:
        await writer.write(_doc("a" * 12, _iso_now()))
    assert writer.other is None and not logs


def _iso_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _doc(instance: str, at: str, status: str = "running") -> bytes:
    host, pid = {"a" * 12: ("host-a", 1), "b" * 12: ("host-b", 2)}.get(instance, ("host-c", 3))
    return json.dumps(
        {"id": "me@host", "status": status, "heartbeat": at, "instance": instance, "host": host, "pid": pid}
    ).encode()


def test_two_daemons_with_one_agent_id_say_so(tmp_path: Path) -> None:
    """Two daemons, own homes and state dirs, one bucket, one agent id: both name the other in their
    log and in status; once one stops, the other's status no longer says it."""
    bucket = f"file://{tmp_path / 'bucket'}"
    for name in "ab":
        (tmp_path / name).mkdir()
    envs = [daemon_env(tmp_path / name, bucket, {"TRACEMIRROR_HEARTBEAT_INTERVAL": "0.5s"}) for name in "ab"]
    shared = "another tracemirrord writes heartbeats under agent id tester@host"
    with Daemon(envs[0], tmp_path / "a.log") as a, Daemon(envs[1], tmp_path / "b.log") as b:
        wait_for(lambda: "another tracemirrord writes heartbeats" in a.log(), 20, "daemon a to name b")
        wait_for(lambda: "another tracemirrord writes heartbeats" in b.log(), 20, "daemon b to name a")
        wait_for(lambda: any(shared in w for w in status_json(envs[0])["warnings"]), 20, "a's status")
        assert b.stop() == 0
        wait_for(
            lambda: not any(shared in w for w in status_json(envs[0])["warnings"]), 20, "a's status to clear"
        )
        assert a.stop() == 0
        assert a.log().count("another tracemirrord writes heartbeats") == 1  # named once, not every beat
