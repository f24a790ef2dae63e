"""Leases by instance: two real daemons with the SAME agent id never write one session at once.

Every daemon here is a real ``tracemirrord`` process on one HOME and one embedded bucket, with
its own state dir (so its own control socket), and a short lease TTL (TRACEMIRROR_LEASE_TTL).
Who wrote which part is read from each daemon's own log ("part uploaded" with its seq).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon import Daemon, daemon_env, read_back, store_for, wait_for
from sessions import SessionFile, complete_lines, make_session, record

from tracemirrord import layout
from tracemirrord.lease import Holder, LeaseHeld, record_instance, takeover_reason
from tracemirrord.model import Lease, SessionKey
from tracemirrord.redact import Redactor

TTL_S = 4.0
AGENT = "tester@host"  # both daemons: the old agent-id check let them both write


def two_envs(tmp_path: Path, ttl_s: float = TTL_S) -> tuple[dict[str, str], dict[str, str]]:
    bucket = f"file://{tmp_path / 'bucket'}"
    env_a = daemon_env(tmp_path, bucket, {"TRACEMIRROR_LEASE_TTL": f"{ttl_s}s"})
    env_b = dict(env_a, XDG_STATE_HOME=str(tmp_path / "state-b"))
    assert env_a["TRACEMIRROR_AGENT_ID"] == env_b["TRACEMIRROR_AGENT_ID"] == AGENT
    return env_a, env_b


def append(s: SessionFile, start: int, count: int) -> None:
    import random

    rng = random.Random(start)
    with s.path.open("ab") as f:
        f.write(b"".join(record(s.harness, s.session_id, i, rng) for i in range(start, start + count)))


def events(daemon: Daemon, name: str) -> list[dict[str, object]]:
    """The JSON log lines of ``daemon`` whose event is ``name``."""
    found = []
    for line in daemon.log().splitlines():
        if f'"{name}"' in line:
            doc = json.loads(line)
            if doc.get("event") == name:
                found.append(doc)
    return found


def seqs_written(daemon: Daemon, s: SessionFile) -> list[int]:
    return [int(e["seq"]) for e in events(daemon, "part uploaded") if e.get("session") == s.session_id]


def assert_exact(env: dict[str, str], s: SessionFile) -> None:
    got = read_back(env["TRACEMIRROR_BUCKET"], SessionKey(s.harness, s.session_id))
    assert list(got.generations) == [0]
    assert got.generations[0] == Redactor().redact(complete_lines(s.path)).data
    lines = got.generations[0].splitlines()
    assert len(lines) == len(set(lines)), "a line appears twice"


def is_current(env: dict[str, str], s: SessionFile) -> bool:
    try:
        got = read_back(env["TRACEMIRROR_BUCKET"], SessionKey(s.harness, s.session_id))
    except Exception:
        return False
    return got.generations.get(0) == Redactor().redact(complete_lines(s.path)).data


def status_json(env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "tracemirrord.ctl", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return json.loads(done.stdout) if done.stdout.strip() else {}  # {}: no daemon reachable yet


def session_state(env: dict[str, str], s: SessionFile) -> str | None:
    for entry in status_json(env).get("sessions", []):  # type: ignore[union-attr]
        if entry["session_id"] == s.session_id:  # type: ignore[index]
            return str(entry["state"])  # type: ignore[index]
    return None


def lease_of(env: dict[str, str], s: SessionFile) -> dict[str, object] | None:
    async def go() -> dict[str, object] | None:
        store = store_for(env["TRACEMIRROR_BUCKET"], None)
        got = await store.get(layout.meta_key("default", SessionKey(s.harness, s.session_id)))
        return json.loads(got.body)["writer"]

    return asyncio.run(go())


def test_same_agent_id_second_daemon_backs_off(tmp_path: Path) -> None:
    """Same agent id, two state dirs: one writes every part, the other says "blocked"; copy exact.

    The TTL is long enough that A's lease cannot lapse while B starts on a loaded machine (an idle
    holder does not renew: it only has to hold the session while it writes)."""
    env_a, env_b = two_envs(tmp_path, ttl_s=30.0)
    s = make_session(Path(env_a["HOME"]), "claude-code")
    append(s, 0, 5)
    with Daemon(env_a, tmp_path / "a.log") as a:
        wait_for(lambda: is_current(env_a, s), 20, "daemon A's first copy")
        with Daemon(env_b, tmp_path / "b.log") as b:
            wait_for(lambda: session_state(env_b, s) == "blocked", 20, "daemon B to report blocked")
            for i in range(5, 65):  # appends keep A's lease renewed (every TTL/2 at most)
                append(s, i, 1)
                time.sleep(0.05)
            wait_for(lambda: is_current(env_a, s), 20, "the full copy")
            assert session_state(env_b, s) == "blocked"
            assert "holds this session's lease" in b.log() and "backing off" in b.log()
            assert b.stop() == 0
        assert a.stop() == 0
    assert seqs_written(b, s) == [], "the daemon that backed off wrote no part"
    written = seqs_written(a, s)
    assert written == list(range(len(written))) and len(written) >= 2
    assert_exact(env_a, s)


def test_holder_killed_other_takes_over_within_ttl(tmp_path: Path) -> None:
    """kill -9 of the holder: the waiting daemon (same agent id) writes the rest, well within the TTL."""
    env_a, env_b = two_envs(tmp_path, ttl_s=30.0)
    s = make_session(Path(env_a["HOME"]), "codex")
    append(s, 0, 5)
    a = Daemon(env_a, tmp_path / "a.log").start()
    try:
        wait_for(lambda: is_current(env_a, s), 20, "daemon A's copy")
    except BaseException:
        a.kill9()
        raise
    with Daemon(env_b, tmp_path / "b.log") as b:
        try:
            wait_for(lambda: session_state(env_b, s) == "blocked", 20, "daemon B to report blocked")
            a.kill9()
            killed = time.monotonic()
            append(s, 5, 10)
            wait_for(lambda: is_current(env_b, s), 25, "daemon B to take over")
            took = time.monotonic() - killed
        finally:
            if a.alive():
                a.kill9()
        assert took < 30.0 / 2, f"takeover took {took:.1f}s"
        reasons = [str(e["reason"]) for e in events(b, "taking over the session's lease")]
        assert reasons and "on this machine is gone" in reasons[0], reasons
        assert b.stop() == 0
    assert seqs_written(b, s), "daemon B wrote the rest"
    assert_exact(env_a, s)


def test_lease_of_unprovable_holder_expires_after_ttl(tmp_path: Path) -> None:
    """A lease whose holder cannot be proven gone (another machine's) is honoured until the TTL ends.

    The lease is planted by hand in meta.json: an instance on a machine of another pid scope.
    """
    env_a, env_b = two_envs(tmp_path)
    s = make_session(Path(env_a["HOME"]), "pi")
    append(s, 0, 5)
    once = subprocess.run(
        [sys.executable, "-m", "tracemirrord", "--once"], env=env_a, capture_output=True, timeout=60
    )
    assert once.returncode == 0, once.stderr
    key = layout.meta_key("default", SessionKey(s.harness, s.session_id))

    async def plant() -> None:
        store = store_for(env_a["TRACEMIRROR_BUCKET"], None)
        got = await store.get(key)
        doc = json.loads(got.body)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        doc["writer"] = {
            "agent_id": AGENT,
            "instance": "elsewhere001",
            "renewed_at": now,
            "pid": 1,
            "pid_scope": "another-machine",
        }
        await store.put(key, json.dumps(doc).encode(), if_match=got.info.etag)

    asyncio.run(plant())
    planted = time.monotonic()
    append(s, 5, 5)
    with Daemon(env_b, tmp_path / "b.log") as b:
        wait_for(lambda: is_current(env_b, s), TTL_S + 15, "daemon B to take over")
        took = time.monotonic() - planted
        assert b.stop() == 0
    assert took >= TTL_S - 0.5, f"took over after {took:.1f}s, before the lease expired"
    reasons = [str(e["reason"]) for e in events(b, "taking over the session's lease")]
    assert reasons == [f"not renewed for {TTL_S:g}s"]
    assert "holds this session's lease" in b.log()
    assert_exact(env_b, s)


def test_kill9_restart_on_same_state_dir_takes_its_leases_at_once(tmp_path: Path) -> None:
    """A daemon restarted on its state dir after kill -9 resumes at once, not after the TTL."""
    env_a, _ = two_envs(tmp_path, ttl_s=60.0)
    s = make_session(Path(env_a["HOME"]), "claude-code")
    append(s, 0, 5)
    first = Daemon(env_a, tmp_path / "a1.log").start()
    try:
        wait_for(lambda: is_current(env_a, s), 20, "the first copy")
        held = lease_of(env_a, s)
        assert held is not None, "the running daemon holds the lease"
    finally:
        first.kill9()
    append(s, 5, 10)
    restarted = time.monotonic()
    with Daemon(env_a, tmp_path / "a2.log") as second:
        wait_for(lambda: is_current(env_a, s), 20, "the restarted daemon's copy")
        took = time.monotonic() - restarted
        assert second.stop() == 0
    assert took < 10.0, f"resumed after {took:.1f}s (TTL 60s)"
    reasons = [str(e["reason"]) for e in events(second, "taking over the session's lease")]
    assert reasons == ["held by an earlier daemon on this state dir"]
    assert "holds this session's lease" not in second.log()
    assert_exact(env_a, s)


# ---------- the rules alone (lease.py), on hand-written leases ----------

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def at(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - seconds_ago)) + ".000Z"


ME = Holder("me@host", "aaaaaaaaaaaa", 4242, "scope-here", frozenset({"bbbbbbbbbbbb"}))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_lease_rules() -> None:
    """Whose lease it is: by instance, predecessors, a provably dead pid, then the TTL; never by agent id."""
    assert takeover_reason(None, ME, 120, NOW) is None
    assert takeover_reason(Lease("other@x", "aaaaaaaaaaaa", at(1)), ME, 120, NOW) is None  # ours
    assert takeover_reason(Lease("me@host", "bbbbbbbbbbbb", at(1)), ME, 120, NOW) == (
        "held by an earlier daemon on this state dir"
    )
    with pytest.raises(LeaseHeld) as held:  # same agent id, another instance, fresh: not ours
        takeover_reason(Lease("me@host", "cccccccccccc", at(10)), ME, 120, NOW)
    assert held.value.retry_in_s == 30.0  # a quarter TTL at most
    with pytest.raises(LeaseHeld) as held:
        takeover_reason(Lease("me@host", "cccccccccccc", at(110)), ME, 120, NOW)
    assert abs(held.value.retry_in_s - 10.05) < 1e-6  # just after it would expire
    alive = os.getppid()
    with pytest.raises(LeaseHeld):  # a live process of this machine
        takeover_reason(Lease("me@host", "cccccccccccc", at(10), alive, "scope-here"), ME, 120, NOW)
    gone = dead_pid()
    assert takeover_reason(Lease("me@host", "cccccccccccc", at(10), gone, "scope-here"), ME, 120, NOW) == (
        f"its process {gone} on this machine is gone"
    )
    with pytest.raises(LeaseHeld):  # the same pid number on another machine proves nothing
        takeover_reason(Lease("me@host", "cccccccccccc", at(10), gone, "scope-elsewhere"), ME, 120, NOW)
    assert takeover_reason(Lease("x@y", "cccccccccccc", at(120)), ME, 120, NOW) == "not renewed for 120s"


def test_record_instance_keeps_the_predecessors(tmp_path: Path) -> None:
    """Each start adds its instance; the earlier ones (at most 31) are returned as predecessors."""
    assert record_instance(tmp_path, "i00") == frozenset()
    assert record_instance(tmp_path, "i01") == frozenset({"i00"})
    for n in range(2, 40):
        record_instance(tmp_path, f"i{n:02d}")
    assert record_instance(tmp_path, "i40") == frozenset(f"i{n:02d}" for n in range(9, 40))
