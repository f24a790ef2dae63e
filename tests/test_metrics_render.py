"""The Prometheus exposition of a status snapshot: every sample, the naming rules, no per-session series."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tracemirrord.control.metrics import CONTENT_TYPE, render_metrics
from tracemirrord.control.schema import (
    Backfill,
    Counters,
    HarnessStatus,
    SessionStateName,
    SessionStatus,
    Status,
    StoreStatus,
    Totals,
)

SESSION_IDS = ("0b7f6a4e-aaaa-4aaa-8aaa-000000000001", "1c8e7b5f-bbbb", "20250102_030405_cccc", "9d9d-ended")


def session(
    harness: str,
    session_id: str,
    state: SessionStateName,
    *,
    behind_bytes: int = 0,
    lag_s: float | None = 0.0,
    cursor_unit: str = "bytes",
    parked: bool = False,
) -> SessionStatus:
    """A session whose paths would leak into the exposition if anything exported them."""
    return SessionStatus(
        harness=harness,
        session_id=session_id,
        source_path=f"/home/u/{harness}/{session_id}.jsonl",
        state=state,
        cursor=1000,
        behind_bytes=behind_bytes,
        parts=3,
        last_flush_at="2025-01-02T03:09:00Z",
        lag_s=lag_s,
        cursor_unit=cursor_unit,
        cwd="/home/u/proj",
        parked=parked,
    )


def make_status() -> Status:
    """Three harnesses (running, error, missing), four sessions in four states, two redaction rules."""
    return Status(
        version="0.1.0",
        pid=4242,
        agent_id="laptop-1",
        bucket="s3://traces/team-a",
        uptime_s=360.5,
        store=StoreStatus(state="ok", last_error=None, last_ok_at="2025-01-02T03:10:00Z"),
        harnesses=[
            HarnessStatus("claude-code", "/home/u/.claude/projects", "running", sessions=3, parked=1),
            HarnessStatus("hermes", "/home/u/.hermes", "error", sessions=1, error="database is locked"),
            HarnessStatus("codex", "/home/u/.codex/sessions", "missing", sessions=0),
        ],
        sessions=[
            session("claude-code", SESSION_IDS[0], "following", behind_bytes=300, lag_s=2.5),
            session("claude-code", SESSION_IDS[1], "idle", parked=True),
            session("hermes", SESSION_IDS[2], "blocked", cursor_unit="rows", behind_bytes=7, lag_s=42.0),
            session("claude-code", SESSION_IDS[3], "ended", behind_bytes=120, lag_s=None),
        ],
        totals=Totals(sessions=4, parts=12, bytes_uploaded=99999, redactions=4),
        project="myproject",
        instance="inst-1",
        host="laptop",
        started_at="2025-01-02T03:04:05Z",
        backfill=Backfill(
            running=True, sessions_total=10, sessions_done=4, bytes_total=500000, bytes_done=123456
        ),
        counters=Counters(
            bytes_read=20000,
            bytes_uploaded=12345,
            requests={"put": 40, "get": 3, "head": 5, "list": 7},
            request_errors={"store_unavailable": 2, "store_rejected": 1},
            parts_written=38,
            retries=4,
            redactions={"aws-access-key-id": 3, "github-token": 1},
            errors={"heartbeat": 2},
            heartbeats=6,
            reloads=1,
        ),
    )


def make_outage() -> Status:
    """The same daemon while the bucket does not answer."""
    return dataclasses.replace(
        make_status(),
        store=StoreStatus(
            state="unreachable", last_error="connect timeout", last_ok_at="2025-01-02T02:58:30Z"
        ),
        health="degraded",
        problems=["bucket unreachable since 2025-01-02T02:58:30Z"],
    )


def parse(exposition: bytes) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(exposition.decode())}


def samples(
    exposition: bytes, prefix: str = "tracemirror_"
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample whose name starts with ``prefix``, keyed by name and sorted labels."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for s in family.samples:
            if s.name.startswith(prefix):
                key = (s.name, tuple(sorted(s.labels.items())))
                assert key not in found, f"duplicate series {key}"
                found[key] = s.value
    return found


def all_samples(exposition: bytes) -> list[Sample]:
    return [s for f in text_string_to_metric_families(exposition.decode()) for s in f.samples]


def k(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


EXPECTED: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
    k(
        "tracemirror_build_info",
        version="0.1.0",
        agent_id="laptop-1",
        project="myproject",
        bucket="s3://traces/team-a",
    ): 1.0,
    k("tracemirror_start_time_seconds"): 1735787045.0,  # date -u -d 2025-01-02T03:04:05Z +%s
    k("tracemirror_uptime_seconds"): 360.5,
    k("tracemirror_healthy"): 1.0,
    k("tracemirror_redaction_enabled"): 1.0,
    k("tracemirror_single_writer_mode"): 0.0,
    k("tracemirror_store_up"): 1.0,
    k("tracemirror_store_last_ok_time_seconds"): 1735787400.0,  # 2025-01-02T03:10:00Z
    k("tracemirror_source_read_bytes_total"): 20000.0,
    k("tracemirror_uploaded_bytes_total"): 12345.0,
    k("tracemirror_store_requests_total", operation="put"): 40.0,
    k("tracemirror_store_requests_total", operation="get"): 3.0,
    k("tracemirror_store_requests_total", operation="head"): 5.0,
    k("tracemirror_store_requests_total", operation="list"): 7.0,
    k("tracemirror_store_request_errors_total", kind="store_unavailable"): 2.0,
    k("tracemirror_store_request_errors_total", kind="store_rejected"): 1.0,
    k("tracemirror_parts_written_total"): 38.0,
    k("tracemirror_retries_total"): 4.0,
    k("tracemirror_redactions_total", rule="aws-access-key-id"): 3.0,
    k("tracemirror_redactions_total", rule="github-token"): 1.0,
    k("tracemirror_errors_total", kind="heartbeat"): 2.0,
    k("tracemirror_heartbeats_total"): 6.0,
    k("tracemirror_config_reloads_total"): 1.0,
    k("tracemirror_harness_state", harness="claude-code", state="running"): 1.0,
    k("tracemirror_harness_state", harness="claude-code", state="idle"): 0.0,
    k("tracemirror_harness_state", harness="claude-code", state="error"): 0.0,
    k("tracemirror_harness_state", harness="claude-code", state="missing"): 0.0,
    k("tracemirror_harness_state", harness="hermes", state="running"): 0.0,
    k("tracemirror_harness_state", harness="hermes", state="idle"): 0.0,
    k("tracemirror_harness_state", harness="hermes", state="error"): 1.0,
    k("tracemirror_harness_state", harness="hermes", state="missing"): 0.0,
    k("tracemirror_harness_state", harness="codex", state="running"): 0.0,
    k("tracemirror_harness_state", harness="codex", state="idle"): 0.0,
    k("tracemirror_harness_state", harness="codex", state="error"): 0.0,
    k("tracemirror_harness_state", harness="codex", state="missing"): 1.0,
    k("tracemirror_harness_sessions", harness="claude-code"): 3.0,
    k("tracemirror_harness_sessions", harness="hermes"): 1.0,
    k("tracemirror_harness_sessions", harness="codex"): 0.0,
    k("tracemirror_harness_sessions_parked", harness="claude-code"): 1.0,
    k("tracemirror_harness_sessions_parked", harness="hermes"): 0.0,
    k("tracemirror_harness_sessions_parked", harness="codex"): 0.0,
    k("tracemirror_sessions", harness="claude-code", state="following"): 1.0,
    k("tracemirror_sessions", harness="claude-code", state="idle"): 1.0,
    k("tracemirror_sessions", harness="claude-code", state="blocked"): 0.0,
    k("tracemirror_sessions", harness="claude-code", state="ended"): 1.0,
    k("tracemirror_sessions", harness="claude-code", state="error"): 0.0,
    k("tracemirror_sessions", harness="hermes", state="following"): 0.0,
    k("tracemirror_sessions", harness="hermes", state="idle"): 0.0,
    k("tracemirror_sessions", harness="hermes", state="blocked"): 1.0,
    k("tracemirror_sessions", harness="hermes", state="ended"): 0.0,
    k("tracemirror_sessions", harness="hermes", state="error"): 0.0,
    k("tracemirror_sessions", harness="codex", state="following"): 0.0,
    k("tracemirror_sessions", harness="codex", state="idle"): 0.0,
    k("tracemirror_sessions", harness="codex", state="blocked"): 0.0,
    k("tracemirror_sessions", harness="codex", state="ended"): 0.0,
    k("tracemirror_sessions", harness="codex", state="error"): 0.0,
    k(
        "tracemirror_lag_seconds", harness="claude-code"
    ): 2.5,  # the ended session's unknown lag counts as none
    k("tracemirror_lag_seconds", harness="hermes"): 42.0,
    k("tracemirror_lag_seconds", harness="codex"): 0.0,
    k("tracemirror_behind_bytes", harness="claude-code"): 420.0,  # 300 + 0 + 120
    k("tracemirror_behind_rows", harness="hermes"): 7.0,
    k("tracemirror_backfill_running"): 1.0,
    k("tracemirror_backfill_sessions"): 10.0,
    k("tracemirror_backfill_sessions_done"): 4.0,
    k("tracemirror_backfill_bytes"): 500000.0,
    k("tracemirror_backfill_bytes_done"): 123456.0,
}

COUNTER_SAMPLES = {
    "tracemirror_source_read_bytes_total",
    "tracemirror_uploaded_bytes_total",
    "tracemirror_store_requests_total",
    "tracemirror_store_request_errors_total",
    "tracemirror_parts_written_total",
    "tracemirror_retries_total",
    "tracemirror_redactions_total",
    "tracemirror_errors_total",
    "tracemirror_heartbeats_total",
    "tracemirror_config_reloads_total",
}


def test_every_sample_has_the_value_written_out() -> None:
    """The whole tracemirror_ exposition of a known snapshot is exactly the expected series and values."""
    assert samples(render_metrics(make_status(), process=False)) == EXPECTED


def test_outage_turns_store_up_and_healthy_to_zero() -> None:
    """With the bucket unreachable, store_up and healthy are 0 and the last success time stays."""
    got = samples(render_metrics(make_outage(), process=False))
    assert got[k("tracemirror_store_up")] == 0.0
    assert got[k("tracemirror_healthy")] == 0.0
    assert got[k("tracemirror_store_last_ok_time_seconds")] == 1735786710.0  # 2025-01-02T02:58:30Z
    changed = {key for key in EXPECTED if got[key] != EXPECTED[key]}
    assert changed == {
        k("tracemirror_store_up"),
        k("tracemirror_healthy"),
        k("tracemirror_store_last_ok_time_seconds"),
    }


def test_counters_are_counter_families_with_total_samples() -> None:
    """Each Counters field is a counter whose sample lines end in _total; no other family is a counter."""
    families = parse(render_metrics(make_status(), process=False))
    counter_samples = {s.name for f in families.values() if f.type == "counter" for s in f.samples}
    assert counter_samples == COUNTER_SAMPLES
    text = render_metrics(make_status(), process=False).decode()
    for name in COUNTER_SAMPLES:
        assert f"# TYPE {name} counter\n" in text


def test_no_session_appears_as_a_label_or_value() -> None:
    """No per-session series: no session label, and no session id or source path anywhere in the text."""
    exposition = render_metrics(make_status())
    for s in all_samples(exposition):
        assert not {"session", "session_id", "source_path", "cwd"} & set(s.labels), s
    text = exposition.decode()
    for session_id in SESSION_IDS:
        assert session_id not in text
    assert "/home/u" not in text


def test_every_family_has_help() -> None:
    """Every family, ours and the process ones, has a HELP line with text."""
    exposition = render_metrics(make_status())
    text = exposition.decode()
    for name, family in parse(exposition).items():
        assert family.documentation, name
        line = name + "_total" if family.type == "counter" else name
        assert f"# HELP {line} " in text


def test_harness_state_is_one_hot() -> None:
    """Each harness has one sample per known state and exactly one of them is 1."""
    for status in (make_status(), make_outage()):
        families = parse(render_metrics(status, process=False))
        by_harness: dict[str, dict[str, float]] = {}
        for s in families["tracemirror_harness_state"].samples:
            by_harness.setdefault(s.labels["harness"], {})[s.labels["state"]] = s.value
        assert set(by_harness) == {"claude-code", "hermes", "codex"}
        for states in by_harness.values():
            assert set(states) == {"running", "idle", "error", "missing"}
            assert sorted(states.values()) == [0.0, 0.0, 0.0, 1.0]


def test_status_decoded_from_its_json_renders_the_same() -> None:
    """The ctl and the daemon share Status.from_json: a snapshot through JSON gives the same samples."""
    for status in (make_status(), make_outage()):
        wire = json.loads(json.dumps(status.to_json()))
        decoded = Status.from_json(wire)
        assert render_metrics(decoded, process=False) == render_metrics(status, process=False)
        assert samples(render_metrics(decoded)) == samples(render_metrics(status))


def test_empty_daemon_leaves_unknown_times_absent() -> None:
    """No harness, session or start time: no time samples (unknown is not 1970), no per-harness series."""
    status = Status(
        version="0.1.0",
        pid=1,
        agent_id="a",
        bucket="file:///tmp/b",
        uptime_s=0.0,
        store=StoreStatus(),
        harnesses=[],
        sessions=[],
        totals=Totals(),
    )
    got = samples(render_metrics(status, process=False))
    assert k("tracemirror_start_time_seconds") not in got
    assert k("tracemirror_store_last_ok_time_seconds") not in got
    assert not [key for key in got if "harness" in dict(key[1])]
    assert got[k("tracemirror_uploaded_bytes_total")] == 0.0
    assert got[k("tracemirror_backfill_running")] == 0.0


@pytest.mark.parametrize(
    ("started_at", "expected"),
    [
        ("2025-01-02T03:04:05Z", 1735787045.0),
        ("2025-01-02T03:04:05+00:00", 1735787045.0),
        ("2025-01-02T03:04:05", 1735787045.0),  # no zone: UTC, as the daemon writes times
        ("2025-01-02T03:04:05+02:00", 1735779845.0),
    ],
)
def test_start_time_reads_iso_8601(started_at: str, expected: float) -> None:
    """started_at in any ISO 8601 form the daemon might write becomes the same unix time."""
    status = dataclasses.replace(make_status(), started_at=started_at)
    assert samples(render_metrics(status, process=False))[k("tracemirror_start_time_seconds")] == expected


def test_unreadable_time_is_absent_not_an_error() -> None:
    """A start time that does not parse leaves its sample out; the rest of the exposition still renders."""
    status = dataclasses.replace(make_status(), started_at="yesterday")
    got = samples(render_metrics(status, process=False))
    assert k("tracemirror_start_time_seconds") not in got
    assert got[k("tracemirror_uploaded_bytes_total")] == 12345.0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process metrics are read from /proc")
def test_process_metrics_only_when_asked() -> None:
    """process=True adds this process's CPU, memory and fds from a private registry; process=False none."""
    with_process = {f.name for f in text_string_to_metric_families(render_metrics(make_status()).decode())}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"} <= with_process
    without = render_metrics(make_status(), process=False).decode()
    assert "process_" not in without
    assert "python_gc" not in render_metrics(make_status()).decode()  # no default-registry collectors


def test_content_type_is_text_format_0_0_4() -> None:
    """The content type served with the exposition names the format generate_latest writes."""
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
