"""The daemon against a faulty S3: a real tracemirrord process, moto behind a fault proxy, a writer.

The proxy (tests/s3server.BytesCountingProxy) switches between refusing connections, answering 503,
resetting mid-request and forwarding slowly. Whatever it does, the daemon must stay up, say what is
wrong without flooding its log, and once the store answers again the bucket copy must equal the
source: nothing lost, nothing twice (reassemble() checks each part starts where the previous ended).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from daemon import Daemon, daemon_env, read_back, wait_for
from s3server import BytesCountingProxy, ProxyMode
from sessions import SessionFile, complete_lines, make_session, record

from tracemirrord.model import SessionKey
from tracemirrord.redact import Redactor

HARNESSES = ("claude-code", "codex", "pi")
APPENDER = Path(__file__).parent / "appender.py"


def expected(path: Path) -> bytes:
    return Redactor().redact(complete_lines(path)).data


def mirrored(bucket: str, s: SessionFile, s3_env: dict[str, str]) -> bytes:
    got = read_back(bucket, SessionKey(s.harness, s.session_id), s3_env=s3_env)
    return b"".join(got.generations[g] for g in sorted(got.generations))


def converged(bucket: str, files: list[SessionFile], s3_env: dict[str, str]) -> bool:
    """True when every session reassembles (no gap, no overlap) to exactly its redacted source."""
    return all(mirrored(bucket, s, s3_env) == expected(s.path) for s in files)


def sessions_with_history(home: Path, lines: int, per_harness: int = 1) -> list[SessionFile]:
    files = []
    for harness in HARNESSES:
        for n in range(per_harness):
            s = make_session(home, harness)
            rng = random.Random(f"{harness}-{n}")
            with s.path.open("ab") as f:
                for i in range(lines):
                    f.write(record(harness, s.session_id, i, rng))
            files.append(s)
    return files


def run_appender(files: list[SessionFile], lines: int, rate: float, first: int) -> subprocess.Popen[bytes]:
    spec = {
        "files": [[s.harness, s.session_id, str(s.path), first] for s in files],
        "lines": lines,
        "rate": rate,
        "seed": 7,
        "partial": True,
    }
    return subprocess.Popen([sys.executable, str(APPENDER), json.dumps(spec)])


def log_events(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def error_events(text: str) -> list[dict[str, Any]]:
    return [e for e in log_events(text) if e.get("level") in ("error", "critical")]


def faulty_env(
    tmp_path: Path, bucket: str, s3_env: dict[str, str], proxy: BytesCountingProxy
) -> dict[str, str]:
    return daemon_env(tmp_path, bucket, {**s3_env, "TRACEMIRROR_S3__ENDPOINT_URL": proxy.endpoint_url})


def hold_mode(
    proxy: BytesCountingProxy,
    daemon: Daemon,
    mode: ProxyMode,
    *,
    min_s: float,
    min_requests: int,
    max_s: float,
) -> tuple[int, float]:
    """Put the proxy in ``mode`` for at least ``min_s`` and until it has seen ``min_requests`` requests.

    Returns the requests seen and the seconds spent. The daemon must stay alive throughout.
    """
    proxy.mode = mode
    before, started = proxy.requests, time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        seen = proxy.requests - before
        assert daemon.alive(), f"daemon died while the store was {mode}:\n{daemon.log()[-3000:]}"
        if elapsed >= min_s and seen >= min_requests:
            return seen, elapsed
        assert elapsed < max_s, f"the daemon sent {seen} requests in {elapsed:.0f}s of {mode}"
        time.sleep(0.1)


def test_outage_of_every_kind_loses_and_duplicates_nothing(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str], s3_proxy: BytesCountingProxy
) -> None:
    """Down, 503, reset, slow in turn while a writer appends: the daemon survives and catches up exactly."""
    bucket = f"s3://{s3_bucket}/faults"
    env = faulty_env(tmp_path, bucket, s3_env, s3_proxy)
    files = sessions_with_history(Path(env["HOME"]), lines=10)
    s3_proxy.slow_delay_s = 0.2
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: converged(bucket, files, s3_env), 20, "the history in the bucket")
        writer = run_appender(files, lines=40, rate=4, first=10)
        # each failing mode is held until the daemon has really met it (requests seen by the proxy)
        hold_mode(s3_proxy, daemon, "down", min_s=2.5, min_requests=0, max_s=3)
        seen_503, spent_503 = hold_mode(s3_proxy, daemon, "error503", min_s=2.5, min_requests=2, max_s=20)
        hold_mode(s3_proxy, daemon, "reset", min_s=2, min_requests=2, max_s=20)
        hold_mode(s3_proxy, daemon, "slow", min_s=2, min_requests=2, max_s=20)
        s3_proxy.mode = "pass"
        assert writer.wait(60) == 0
        wait_for(lambda: converged(bucket, files, s3_env), 40, "the bucket to catch up after the outage")
        assert daemon.alive()
        assert daemon.stop() == 0, daemon.log()[-3000:]

    log = daemon.log()
    events = log_events(log)
    errors = error_events(log)
    assert any(e.get("event") == "store error" for e in errors), "the outage is logged"
    assert any(e.get("event") == "store reachable again" for e in events), "so is the recovery"
    assert "Traceback" not in log
    # retries back off: no tight loop against a store answering 503
    assert seen_503 / spent_503 < 30, f"{seen_503} requests in {spent_503:.1f}s of 503s"
    # bounded: at most a couple of lines per session and failing mode (down, 503, reset), never per request
    failing_modes = 3
    assert len(errors) <= 2 * len(files) * failing_modes, f"{len(errors)} error lines: {_by_event(errors)}"
    warnings = [e for e in events if e.get("level") == "warning"]
    assert len(warnings) <= 3 * len(files) * failing_modes, f"{len(warnings)} warnings: {_by_event(warnings)}"


def _by_event(events: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in events:
        counts[e.get("event", "?")] = counts.get(e.get("event", "?"), 0) + 1
    return counts


def test_bucket_unreachable_at_start_then_back(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str], s3_proxy: BytesCountingProxy
) -> None:
    """Started while the store is down, the daemon stays up and mirrors everything once it comes back."""
    bucket = f"s3://{s3_bucket}/late"
    env = faulty_env(tmp_path, bucket, s3_env, s3_proxy)
    files = sessions_with_history(Path(env["HOME"]), lines=15)
    s3_proxy.mode = "down"
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: "store error" in daemon.log(), 30, "the daemon to report the store down")
        writer = run_appender(files, lines=5, rate=10, first=15)
        assert writer.wait(30) == 0
        assert daemon.alive(), daemon.log()[-3000:]
        assert read_back(bucket, SessionKey(files[0].harness, files[0].session_id), s3_env=s3_env).parts == []
        s3_proxy.mode = "pass"
        wait_for(lambda: converged(bucket, files, s3_env), 40, "everything to catch up")
        assert daemon.stop() == 0, daemon.log()[-3000:]
    assert "Traceback" not in daemon.log()


def test_an_outage_is_logged_once_not_once_per_session(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str], s3_proxy: BytesCountingProxy
) -> None:
    """When every session has run into the same outage, the store error was logged once, not per session."""
    bucket = f"s3://{s3_bucket}/many"
    env = faulty_env(tmp_path, bucket, s3_env, s3_proxy)
    env["TRACEMIRROR_UPLOAD_CONCURRENCY"] = "8"
    files = sessions_with_history(Path(env["HOME"]), lines=3, per_harness=2)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: converged(bucket, files, s3_env), 20, "the history in the bucket")
        s3_proxy.mode = "down"
        for s in files:
            with s.path.open("ab") as f:
                f.write(record(s.harness, s.session_id, 3, random.Random(1)))

        def sessions_failed() -> set[str]:
            events = log_events(daemon.log())
            return {e["session"] for e in events if e.get("event") == "session not mirrored for now"}

        wait_for(lambda: len(sessions_failed()) == len(files), 30, "every session to run into the outage")
        s3_proxy.mode = "pass"
        assert daemon.stop() == 0
    store_errors = [e for e in error_events(daemon.log()) if e.get("event") == "store error"]
    assert len(store_errors) <= 2, (
        f"{len(store_errors)} 'store error' lines for one outage of {len(files)} sessions"
    )
