"""The daemon against a faulty S3: a real tracemirrord process, moto behind a fault proxy, a writer.

The proxy (tests/s3server.BytesCountingProxy) switches between refusing connections, answering 503,
resetting mid-request and forwarding slowly. Whatever it does, the daemon must stay up, say what is
wrong without flooding its log, and once the store answers again the bucket copy must equal the
source: nothing lost, nothing twice (reassemble() checks each part starts where the previous ended).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, daemon_env, read_back, wait_for
from s3server import TEST_CREDENTIALS, BytesCountingProxy, MotoServer, ProxyMode
from sessions import SessionFile, complete_lines, make_session, record

from tracemirrord.model import SessionKey
from tracemirrord.redact import Redactor

HARNESSES = ("claude-code", "codex", "pi")
TEST_SECRET = TEST_CREDENTIALS["aws_secret_access_key"]
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


# --- faults the daemon must name and outlast: a store that ignores preconditions, a silent server,
# revoked credentials, a deleted bucket. Redaction is off in these tests, so the bucket must hold the
# source's complete lines byte for byte: the expectation is the file itself, not the redactor's output.


def exact_env(
    tmp_path: Path, bucket: str, s3_env: dict[str, str], proxy: BytesCountingProxy
) -> dict[str, str]:
    """A daemon through the proxy, redaction off, S3 timeouts short enough for a test."""
    env = faulty_env(tmp_path, bucket, s3_env, proxy)
    env.update(
        TRACEMIRROR_REDACT="false",
        TRACEMIRROR_S3__CONNECT_TIMEOUT="1s",
        TRACEMIRROR_S3__READ_TIMEOUT="1s",
    )
    return env


def mirrored_exactly(bucket: str, files: list[SessionFile], s3_env: dict[str, str]) -> bool:
    """Every session reassembles (no gap, no overlap) to exactly the complete lines of its file."""
    return all(mirrored(bucket, s, s3_env) == complete_lines(s.path) for s in files)


def ctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracemirrord.ctl", *args], env=env, capture_output=True, text=True, timeout=30
    )


def status_of(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    done = ctl(env, "status", "--json")
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}


def wait_for_status(
    env: dict[str, str], predicate: Any, timeout: float, what: str
) -> tuple[int, dict[str, Any]]:
    """Poll ``tracemirrorctl status --json`` until ``predicate(code, doc)``; return that answer."""
    seen: list[tuple[int, dict[str, Any]]] = []

    def check() -> bool:
        seen.append(status_of(env))
        return bool(predicate(*seen[-1]))

    wait_for(check, timeout, what, interval=0.3)
    return seen[-1]


def run_tracemirrord(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracemirrord", *args], env=env, capture_output=True, text=True, timeout=60
    )


def bucket_keys(s3_server: MotoServer, bucket: str) -> list[str]:
    listed = s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def test_a_store_that_ignores_preconditions_is_refused(
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    s3_env: dict[str, str],
    s3_proxy: BytesCountingProxy,
) -> None:
    """Behind a server that drops If-None-Match / If-Match, the daemon does not start (exit 2, one line
    naming the problem and the way out, no traceback) and writes nothing but the probe's scratch key;
    ``--check`` says the same."""
    env = exact_env(tmp_path, f"s3://{s3_bucket}/refused", s3_env, s3_proxy)
    sessions_with_history(Path(env["HOME"]), lines=3)
    s3_proxy.mode = "strip_preconditions"

    started = run_tracemirrord(env)
    assert started.returncode == 2, started.stderr[-2000:]
    (line,) = [ln for ln in started.stderr.splitlines() if ln.startswith("tracemirrord: ")]
    assert "ignores conditional writes" in line and "TRACEMIRROR_SINGLE_WRITER=true" in line
    assert "If-None-Match" in line and "If-Match" in line
    assert "Traceback" not in started.stderr and "testing" not in started.stderr
    assert bucket_keys(s3_server, s3_bucket) == ["refused/default/.probe/tester@host.json"]

    assert run_tracemirrord(env, "--once").returncode == 2

    checked = run_tracemirrord(env, "--check")
    assert checked.returncode == 2, checked.stdout
    assert "conditional writes: NOT ENFORCED" in checked.stdout
    assert "store:       REFUSED: " in checked.stdout and "store:       ok" not in checked.stdout
    assert "Traceback" not in checked.stdout + checked.stderr


def test_a_store_unreachable_at_start_is_probed_before_the_first_write(
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    s3_env: dict[str, str],
    s3_proxy: BytesCountingProxy,
) -> None:
    """Started while the store is down, the daemon runs degraded; when the store comes back ignoring
    preconditions, the first write probes it and nothing is written: status names the problem."""
    env = exact_env(tmp_path, f"s3://{s3_bucket}/later", s3_env, s3_proxy)
    sessions_with_history(Path(env["HOME"]), lines=3)
    s3_proxy.mode = "down"
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for_status(env, lambda c, d: c == 1, 20, "status to say the store is down")
        s3_proxy.mode = "strip_preconditions"
        _, doc = wait_for_status(
            env,
            lambda c, d: "ignores conditional writes" in (d.get("store", {}).get("last_error") or ""),
            40,
            "status to name the store's problem",
        )
        assert doc["store"]["conditional_writes"] == "not enforced" and doc["health"] == "degraded"
        assert daemon.alive()
        assert daemon.stop() == 0
    assert bucket_keys(s3_server, s3_bucket) == ["later/default/.probe/tester@host.json"]
    assert "Traceback" not in daemon.log()


def test_check_says_the_store_enforces_conditional_writes(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str], s3_proxy: BytesCountingProxy
) -> None:
    """On S3 that enforces them, and on the embedded bucket (which enforces them itself), --check passes."""
    for bucket in (f"s3://{s3_bucket}/ok", (tmp_path / "embedded").as_uri()):
        checked = run_tracemirrord(exact_env(tmp_path, bucket, s3_env, s3_proxy), "--check")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "conditional writes: enforced" in checked.stdout
        assert "writers:     any" in checked.stdout
        assert checked.stdout.rstrip().endswith("store:       ok")


def test_single_writer_mode_runs_on_such_a_store_says_so_and_mirrors_exactly(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str], s3_proxy: BytesCountingProxy
) -> None:
    """With TRACEMIRROR_SINGLE_WRITER=true the same store is accepted: --check, the log and status say
    so, and the bucket reassembles to the source exactly while a writer appends."""
    bucket = f"s3://{s3_bucket}/single"
    env = {**exact_env(tmp_path, bucket, s3_env, s3_proxy), "TRACEMIRROR_SINGLE_WRITER": "true"}
    files = sessions_with_history(Path(env["HOME"]), lines=10)
    s3_proxy.mode = "strip_preconditions"

    checked = run_tracemirrord(env, "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "writers:     one (single-writer mode, TRACEMIRROR_SINGLE_WRITER=true)" in checked.stdout
    assert "conditional writes: NOT ENFORCED" in checked.stdout
    assert "store:       ok in single-writer mode" in checked.stdout

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        writer = run_appender(files, lines=20, rate=10, first=10)
        code, doc = wait_for_status(env, lambda c, d: bool(d), 20, "the daemon to answer")
        assert doc["single_writer"] is True
        assert writer.wait(30) == 0
        wait_for(lambda: mirrored_exactly(bucket, files, s3_env), 30, "the bucket to hold every line")
        code, doc = status_of(env)
        assert code == 0, doc.get("problems")
        assert doc["store"]["conditional_writes"] == "not enforced"
        assert any("single-writer mode" in w for w in doc["warnings"])
        human = ctl(env, "status").stdout
        assert "WARNING: single-writer mode (TRACEMIRROR_SINGLE_WRITER)" in human
        assert "\ntracemirror_single_writer_mode 1.0\n" in ctl(env, "metrics").stdout
        assert daemon.stop() == 0
    warnings = [e["event"] for e in log_events(daemon.log()) if e.get("level") == "warning"]
    assert any(w.startswith("single-writer mode (TRACEMIRROR_SINGLE_WRITER=true)") for w in warnings)
    assert any(w.startswith("store does not enforce conditional writes") for w in warnings)
    assert "Traceback" not in daemon.log()


def test_a_silent_store_is_unreachable_not_a_hang_and_nothing_is_lost(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str], s3_proxy: BytesCountingProxy
) -> None:
    """A server that accepts connections and never answers: requests end at their timeouts, status says
    unreachable (exit 1) while it lasts, and once it answers again the bucket catches up exactly."""
    bucket = f"s3://{s3_bucket}/silent"
    env = exact_env(tmp_path, bucket, s3_env, s3_proxy)
    files = sessions_with_history(Path(env["HOME"]), lines=10)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: mirrored_exactly(bucket, files, s3_env), 20, "the history in the bucket")
        writer = run_appender(files, lines=30, rate=6, first=10)
        s3_proxy.mode = "blackhole"
        _, doc = wait_for_status(env, lambda c, d: c == 1, 20, "status to say the store is unreachable")
        assert doc["store"]["state"] == "unreachable"
        assert "timeout" in doc["store"]["last_error"].lower() or "no answer" in doc["store"]["last_error"]
        assert daemon.alive()
        s3_proxy.mode = "pass"
        recovered = time.monotonic()
        assert writer.wait(30) == 0
        wait_for(lambda: mirrored_exactly(bucket, files, s3_env), 30, "the bucket to catch up")
        caught_up_s = time.monotonic() - recovered
        assert caught_up_s < 15  # each session alone may wait up to a minute after an outage
        wait_for_status(env, lambda c, d: c == 0, 15, "status to be healthy again")
        assert daemon.stop() == 0, daemon.log()[-3000:]
    assert "Traceback" not in daemon.log()
    print(f"\nsilent store: caught up {caught_up_s:.1f}s after it answered again")


def test_sigterm_while_the_store_is_silent_exits_in_seconds_and_loses_nothing(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str], s3_proxy: BytesCountingProxy
) -> None:
    """SIGTERM while PUTs hang on a silent store, at the default 20 s read timeout: the daemon abandons
    them and exits 0 within seconds; the next start, with the store back, mirrors exactly."""
    bucket = f"s3://{s3_bucket}/stop"
    env = exact_env(tmp_path, bucket, s3_env, s3_proxy)
    del env["TRACEMIRROR_S3__CONNECT_TIMEOUT"], env["TRACEMIRROR_S3__READ_TIMEOUT"]  # the defaults
    files = sessions_with_history(Path(env["HOME"]), lines=3)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: mirrored_exactly(bucket, files, s3_env), 20, "the history in the bucket")
        s3_proxy.mode = "blackhole"
        for s in files:
            with s.path.open("ab") as f:
                f.write(record(s.harness, s.session_id, 3, random.Random(3)))
        time.sleep(1.5)  # the flush is under way, its PUTs waiting for an answer
        signalled = time.monotonic()
        assert daemon.stop(timeout=30) == 0, daemon.log()[-3000:]
        stop_s = time.monotonic() - signalled
    assert stop_s < 9, f"the stop took {stop_s:.1f}s"
    assert not mirrored_exactly(bucket, files, s3_env), "the appended lines waited in the sources"
    s3_proxy.mode = "pass"
    with Daemon(env, tmp_path / "daemon2.log") as daemon:
        wait_for(lambda: mirrored_exactly(bucket, files, s3_env), 20, "the next start to catch up")
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()


def test_revoked_credentials_are_named_in_status_without_a_retry_storm(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str], s3_proxy: BytesCountingProxy
) -> None:
    """Every request refused with 403 InvalidAccessKeyId for 7 s while 9 sessions grow: status names the
    bucket and the cause; the daemon sends fewer requests than there are sessions waiting (a few asks on
    a doubling backoff, not one per session or flush); once the credentials work again the bucket
    catches up exactly, within seconds."""
    bucket = f"s3://{s3_bucket}/revoked"
    env = {**exact_env(tmp_path, bucket, s3_env, s3_proxy), "TRACEMIRROR_UPLOAD_CONCURRENCY": "1"}
    files = sessions_with_history(Path(env["HOME"]), lines=3, per_harness=3)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: mirrored_exactly(bucket, files, s3_env), 20, "the history in the bucket")
        s3_proxy.mode = "error403"
        s3_proxy.reset_counters()
        refused_at = time.monotonic()
        writer = run_appender(files, lines=8, rate=2, first=3)
        _, doc = wait_for_status(env, lambda c, d: c == 1, 20, "status to report the refusal")
        error = doc["store"]["last_error"]
        assert f"bucket '{s3_bucket}'" in error and "access key id is not known" in error, error
        assert writer.wait(30) == 0
        while time.monotonic() - refused_at < 7:
            assert daemon.alive()
            time.sleep(0.2)
        refused_requests, refused_for_s = s3_proxy.requests, time.monotonic() - refused_at
        s3_proxy.mode = "pass"
        recovered = time.monotonic()
        wait_for(lambda: mirrored_exactly(bucket, files, s3_env), 40, "the bucket to catch up")
        caught_up_s = time.monotonic() - recovered
        assert daemon.stop() == 0, daemon.log()[-3000:]
    print(
        f"\nrevoked credentials: {refused_requests} requests in {refused_for_s:.0f}s of 403s "
        f"with {len(files)} sessions waiting; caught up {caught_up_s:.1f}s after they worked again"
    )
    assert refused_requests < len(files), f"{refused_requests} requests while the credentials were refused"
    assert caught_up_s < 20  # the gate's next ask is at most ~8 s away here; a session alone waits 30 s
    assert "Traceback" not in daemon.log()
    assert TEST_SECRET not in daemon.log()


def test_a_deleted_bucket_is_named_and_mirroring_resumes_when_it_is_back(
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    s3_env: dict[str, str],
    s3_proxy: BytesCountingProxy,
) -> None:
    """The bucket deleted under a running daemon: status names it as missing; once it is back (here
    restored with its objects, as from a backup) the daemon carries on and the copy is exact."""
    bucket = f"s3://{s3_bucket}/deleted"
    env = exact_env(tmp_path, bucket, s3_env, s3_proxy)
    files = sessions_with_history(Path(env["HOME"]), lines=5)
    client = s3_server.client()
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: mirrored_exactly(bucket, files, s3_env), 20, "the history in the bucket")
        saved = _empty_and_delete(client, s3_bucket)
        writer = run_appender(files, lines=10, rate=4, first=5)
        _, doc = wait_for_status(env, lambda c, d: c == 1, 20, "status to report the missing bucket")
        assert f"bucket '{s3_bucket}' does not exist" in doc["store"]["last_error"]
        client.create_bucket(Bucket=s3_bucket)
        for key, (body, metadata) in saved.items():
            client.put_object(Bucket=s3_bucket, Key=key, Body=body, Metadata=metadata)
        assert writer.wait(30) == 0
        wait_for(lambda: mirrored_exactly(bucket, files, s3_env), 40, "the bucket to catch up")
        assert daemon.stop() == 0, daemon.log()[-3000:]
    assert "Traceback" not in daemon.log()


def test_a_bucket_deleted_and_created_again_empty_gets_every_session_again(
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    s3_env: dict[str, str],
    s3_proxy: BytesCountingProxy,
) -> None:
    """The bucket deleted and created again empty under a running daemon: nothing is written on what
    was known of the old bucket (no part after a gap), and every session, the idle ones too, is
    mirrored again from its start: the copy is exact."""
    bucket = f"s3://{s3_bucket}/recreated"
    env = exact_env(tmp_path, bucket, s3_env, s3_proxy)
    files = sessions_with_history(Path(env["HOME"]), lines=5)
    busy = files[:1]
    client = s3_server.client()
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: mirrored_exactly(bucket, files, s3_env), 20, "the history in the bucket")
        _empty_and_delete(client, s3_bucket)
        writer = run_appender(busy, lines=6, rate=4, first=5)
        _, doc = wait_for_status(env, lambda c, d: c == 1, 20, "status to report the missing bucket")
        assert f"bucket '{s3_bucket}' does not exist" in doc["store"]["last_error"]
        client.create_bucket(Bucket=s3_bucket)
        assert writer.wait(30) == 0
        wait_for(lambda: mirrored_exactly(bucket, files, s3_env), 40, "every session mirrored again")
        assert daemon.stop() == 0, daemon.log()[-3000:]
        log = daemon.log()
    assert "bucket was missing and is back" in log
    assert "Traceback" not in log


def _empty_and_delete(client: Any, bucket: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Delete every object and then the bucket (again while the daemon adds some); return what was
    there (body and user metadata)."""
    saved = {}
    for _ in range(20):
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            got = client.get_object(Bucket=bucket, Key=item["Key"])
            saved[item["Key"]] = (got["Body"].read(), got["Metadata"])
            client.delete_object(Bucket=bucket, Key=item["Key"])
        try:
            client.delete_bucket(Bucket=bucket)
            return saved
        except client.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] != "BucketNotEmpty":
                raise
    raise AssertionError(f"bucket {bucket} never stayed empty long enough to delete it")


SOAK_ROUNDS = int(os.environ.get("TRACEMIRROR_SOAK_ROUNDS", "1"))
SOAK_MODES: tuple[ProxyMode, ...] = ("down", "reset", "blackhole", "slow", "error503", "error500", "error403")


@pytest.mark.soak
def test_soak_every_fault_mode_in_turn(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str], s3_proxy: BytesCountingProxy
) -> None:
    """Every fault mode in turn, TRACEMIRROR_SOAK_ROUNDS times (1 by default, more by hand), while a
    writer appends: after each round the bucket holds every complete line once, and the figures (bytes
    lost, doubled, time to recover) are printed at the end."""
    bucket = f"s3://{s3_bucket}/soak"
    env = exact_env(tmp_path, bucket, s3_env, s3_proxy)
    files = sessions_with_history(Path(env["HOME"]), lines=5)
    s3_proxy.slow_delay_s = 0.3
    hold_s = 1.0
    recoveries: list[float] = []
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: mirrored_exactly(bucket, files, s3_env), 20, "the history in the bucket")
        first = 5
        for _ in range(SOAK_ROUNDS):
            lines = int(len(SOAK_MODES) * hold_s * 2)
            writer = run_appender(files, lines=lines, rate=2, first=first)
            first += lines
            for mode in SOAK_MODES:
                s3_proxy.mode = mode
                time.sleep(hold_s)
                assert daemon.alive(), f"the daemon died in {mode}:\n{daemon.log()[-3000:]}"
            s3_proxy.mode = "pass"
            back = time.monotonic()
            assert writer.wait(60) == 0
            wait_for(lambda: mirrored_exactly(bucket, files, s3_env), 60, "the bucket to catch up")
            recoveries.append(time.monotonic() - back)
        assert daemon.stop() == 0, daemon.log()[-3000:]
    source_bytes = sum(len(complete_lines(s.path)) for s in files)
    mirrored_bytes = sum(len(mirrored(bucket, s, s3_env)) for s in files)
    assert mirrored_bytes == source_bytes  # and each session equal to its file, checked per round
    print(
        f"\nsoak: {SOAK_ROUNDS} rounds of {', '.join(SOAK_MODES)} ({hold_s:g}s each, "
        f"{SOAK_ROUNDS * len(SOAK_MODES) * hold_s:.0f}s of faults); {source_bytes} source bytes, "
        f"{mirrored_bytes} in the bucket: lost 0, doubled 0; "
        f"caught up within {max(recoveries):.1f}s of each recovery (writer included)"
    )
    assert "Traceback" not in daemon.log()
