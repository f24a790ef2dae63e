"""The control plane of a running daemon: status, sessions, flush, metrics, heartbeat, reload.

The daemon runs as a subprocess (tests/daemon.py) and ``tracemirrorctl`` as another; the bucket is
the embedded one or moto's S3 server behind a proxy the test can take down. Expected values are
the lines the test wrote and numbers it counted itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, daemon_env, read_back, wait_for
from prometheus_client.parser import text_string_to_metric_families
from s3server import BytesCountingProxy, free_port, sync_s3_client
from sessions import SessionFile, complete_lines, make_session, record

from tracemirrord.model import SessionKey

STATUS_FIELDS = {
    "version": str,
    "pid": int,
    "agent_id": str,
    "bucket": str,
    "uptime_s": float,
    "store": dict,
    "harnesses": list,
    "sessions": list,
    "totals": dict,
}
HARNESS_FIELDS = {"name": str, "root": str, "state": str, "sessions": int}
SESSION_FIELDS = {
    "harness": str,
    "session_id": str,
    "source_path": str,
    "state": str,
    "cursor": int,
    "behind_bytes": int,
    "parts": int,
    "redactions": dict,
}


def ctl(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tracemirrord.ctl", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status_json(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    done = ctl(env, "status", "--json")
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}


def write(s: SessionFile, first: int, count: int) -> None:
    import random

    rng = random.Random(f"{s.session_id}-{first}")
    with s.path.open("ab") as f:
        for i in range(first, first + count):
            f.write(record(s.harness, s.session_id, i, rng))


def mirrored_equals_source(bucket: str, s: SessionFile, s3_env: dict[str, str] | None = None) -> bool:
    try:
        got = read_back(bucket, SessionKey(s.harness, s.session_id), s3_env=s3_env)
    except Exception:
        return False
    return got.generations.get(0, b"") == complete_lines(s.path)


def socket_file(env: dict[str, str]) -> Path:
    return Path(env["XDG_STATE_HOME"]) / "tracemirror" / "ctl.sock"


# ---------- status: every field, every exit code ----------


def test_status_fields_and_exit_codes_through_an_outage(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str], s3_proxy: BytesCountingProxy
) -> None:
    """0 healthy with every design.md section 7 field; 1 while the S3 server is unreachable, with the
    store unreachable and lag growing; 0 again after; 2 once the daemon is gone."""
    bucket = f"s3://{s3_bucket}/ctl"
    env = daemon_env(
        tmp_path,
        bucket,
        {
            **s3_env,
            "TRACEMIRROR_S3__ENDPOINT_URL": s3_proxy.endpoint_url,
            "TRACEMIRROR_HEARTBEAT_INTERVAL": "1s",
        },
    )
    home = Path(env["HOME"])
    claude, pi = make_session(home, "claude-code"), make_session(home, "pi")
    write(claude, 0, 6)
    write(pi, 0, 3)
    history = claude.path.stat().st_size + pi.path.stat().st_size
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(
            lambda: all(mirrored_equals_source(bucket, s, s3_env) for s in (claude, pi)), 30, "both sessions"
        )
        code, doc = status_json(env)
        backfill = doc["backfill"]
        assert (backfill["running"], backfill["sessions_total"], backfill["sessions_done"]) == (False, 2, 2)
        assert backfill["bytes_total"] == backfill["bytes_done"] == history
        assert backfill["started_at"] and backfill["finished_at"]
        assert code == 0, doc
        for name, kind in STATUS_FIELDS.items():
            assert isinstance(doc[name], kind), (name, doc[name])
        assert doc["agent_id"] == "tester@host" and doc["pid"] == daemon.proc.pid  # type: ignore[union-attr]
        assert doc["bucket"].startswith(bucket) and doc["health"] == "healthy" and doc["problems"] == []
        assert doc["store"] == {
            "state": "ok",
            "last_error": None,
            "last_ok_at": doc["store"]["last_ok_at"],
            "conditional_writes": "enforced",  # the start-up probe's verdict
        }
        assert doc["single_writer"] is False and doc["warnings"] == []
        harnesses = {h["name"]: h for h in doc["harnesses"]}
        for h in harnesses.values():
            for name, kind in HARNESS_FIELDS.items():
                assert isinstance(h[name], kind), (name, h)
            assert h["error"] is None
        assert harnesses["claude-code"]["state"] == "running" and harnesses["claude-code"]["sessions"] == 1
        assert harnesses["codex"]["state"] == "missing" and harnesses["codex"]["sessions"] == 0
        sessions = {s["session_id"]: s for s in doc["sessions"]}
        assert set(sessions) == {claude.session_id, pi.session_id}
        for s in (claude, pi):
            got = sessions[s.session_id]
            for name, kind in SESSION_FIELDS.items():
                assert isinstance(got[name], kind), (name, got)
            size = len(s.path.read_bytes())
            assert got["harness"] == s.harness and got["source_path"] == str(s.path)
            assert got["cursor"] == size and got["behind_bytes"] == 0
            assert got["parts"] >= 1 and got["last_flush_at"].endswith("Z")
            assert got["lag_s"] == 0.0 and got["state"] in ("following", "idle")
        assert doc["totals"]["sessions"] == 2
        assert doc["totals"]["parts"] == sum(s["parts"] for s in doc["sessions"])
        human = ctl(env, "status")
        assert human.returncode == 0 and "healthy" in human.stdout and claude.session_id in human.stdout

        # the outage: lines keep coming, nothing can land
        s3_proxy.mode = "down"
        write(claude, 6, 4)
        wait_for(lambda: status_json(env)[0] == 1, 30, "status to say degraded during the outage")
        code, doc = status_json(env)
        assert doc["store"]["state"] == "unreachable" and doc["store"]["last_error"]
        assert any(p.startswith("store unreachable") for p in doc["problems"]), doc["problems"]
        session = next(s for s in doc["sessions"] if s["session_id"] == claude.session_id)
        assert session["behind_bytes"] > 0
        first_lag = session["lag_s"]
        assert first_lag is not None and first_lag > 0
        time.sleep(1.5)
        later = next(s for s in status_json(env)[1]["sessions"] if s["session_id"] == claude.session_id)
        assert later["lag_s"] >= first_lag + 1.0, "lag grows during an outage"
        assert "Traceback" not in ctl(env, "status").stdout
        assert env["AWS_SECRET_ACCESS_KEY"] not in ctl(env, "status").stdout

        # back: everything lands, healthy again
        s3_proxy.mode = "pass"
        wait_for(lambda: mirrored_equals_source(bucket, claude, s3_env), 40, "the bucket to catch up")
        wait_for(lambda: status_json(env)[0] == 0, 30, "status to say healthy again")
        code, doc = status_json(env)
        session = next(s for s in doc["sessions"] if s["session_id"] == claude.session_id)
        assert session["lag_s"] == 0.0 and session["behind_bytes"] == 0
        assert doc["counters"]["request_errors"], "the failed requests are counted"
        assert doc["counters"]["errors"].get("heartbeat", 0) >= 1, "the heartbeat failed during the outage"
        assert "heartbeat not written; will retry" in daemon.log()
        assert daemon.stop() == 0
    done = ctl(env, "status")
    assert done.returncode == 2 and "no tracemirrord is running" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_daemon_is_exit_2_for_every_socket_verb(tmp_path: Path) -> None:
    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}")
    for verb in ("status", "sessions", "flush", "metrics", "reload"):
        done = ctl(env, verb)
        assert done.returncode == 2, (verb, done.stderr)
        assert done.stderr.startswith("tracemirrorctl: no tracemirrord is running here"), done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


# ---------- the socket ----------


def test_the_socket_is_private_and_a_stale_one_is_replaced(tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket)
    path = socket_file(env)
    with Daemon(env, tmp_path / "first.log") as first:
        wait_for(path.exists, 20, "the control socket")
        info = path.lstat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert ctl(env, "status").returncode == 0
        first.kill9()
    assert path.exists(), "a kill -9 leaves the socket behind"
    with Daemon(env, tmp_path / "second.log") as second:
        wait_for(lambda: ctl(env, "status").returncode == 0, 20, "the new daemon to answer on the stale path")
        assert second.stop() == 0
    assert not path.exists(), "a clean stop removes the socket"


def test_a_path_that_is_not_a_socket_is_never_replaced(tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    precious = tmp_path / "notes.txt"
    precious.write_text("mine\n")
    env = daemon_env(tmp_path, bucket, {"TRACEMIRROR_SOCKET": str(precious)})
    done = subprocess.run(
        [sys.executable, "-m", "tracemirrord"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1, done.stderr
    assert "is not a socket; not replacing it" in done.stderr and "Traceback" not in done.stderr
    assert precious.read_text() == "mine\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a probe as another user")
def test_another_user_cannot_connect(tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket, {"TRACEMIRROR_SOCKET": str(tmp_path / "run" / "ctl.sock")})
    path = tmp_path / "run" / "ctl.sock"
    os.chmod(tmp_path, 0o755)  # the other user may walk to the directory; the socket's own modes decide
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(path.exists, 20, "the control socket")
        probe = (
            "import os, socket, sys\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            f"    s.connect({str(path)!r})\n"
            "except PermissionError:\n"
            "    sys.exit(13)\n"
            "sys.exit(0)\n"
        )
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30)
        assert done.returncode == 13, f"nobody could connect: {done.stderr!r}"
        assert daemon.stop() == 0


# ---------- sessions, flush ----------


def test_flush_puts_what_is_held_now_and_sessions_filters(tmp_path: Path) -> None:
    """With a one-minute flush interval, ``flush`` lands appended lines at once."""
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(
        tmp_path, bucket, {"TRACEMIRROR_FLUSH_INTERVAL": "60s", "TRACEMIRROR_META_INTERVAL": "60s"}
    )
    home = Path(env["HOME"])
    claude, pi = make_session(home, "claude-code"), make_session(home, "pi")
    write(claude, 0, 5)
    write(pi, 0, 2)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: ctl(env, "status").returncode == 0, 20, "the daemon")
        done = ctl(env, "flush", "--timeout", "20")
        assert done.returncode == 0, done.stderr
        assert mirrored_equals_source(bucket, claude) and mirrored_equals_source(bucket, pi)
        write(claude, 5, 3)
        time.sleep(1.0)  # read by now, held for the minute-long interval
        assert not mirrored_equals_source(bucket, claude)
        done = ctl(env, "flush")
        assert done.returncode == 0 and done.stdout.startswith("flushed:"), done.stderr
        assert mirrored_equals_source(bucket, claude), "flush returned before the lines landed"

        listed = json.loads(ctl(env, "sessions", "--harness", "pi", "--json").stdout)
        assert [s["session_id"] for s in listed] == [pi.session_id]
        assert json.loads(ctl(env, "sessions", "--cwd", "/nowhere", "--json").stdout) == []
        recent = json.loads(ctl(env, "sessions", "--max-age", "1h", "--json").stdout)
        assert {s["session_id"] for s in recent} == {claude.session_id, pi.session_id}
        table = ctl(env, "sessions")
        assert table.returncode == 0 and claude.session_id in table.stdout and "2 sessions" in table.stdout
        bad = ctl(env, "sessions", "--max-age", "soon")
        assert bad.returncode == 2 and "--max-age" in bad.stderr
        assert daemon.stop() == 0


def test_a_parked_session_still_reports_its_cursor_and_parts(tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket)
    s = make_session(Path(env["HOME"]), "claude-code")
    write(s, 0, 7)
    old = time.time() - 2 * 3600
    os.utime(s.path, (old, old))
    once = subprocess.run(
        [sys.executable, "-m", "tracemirrord", "--once"], env=env, capture_output=True, text=True, timeout=60
    )
    assert once.returncode == 0, once.stderr
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: ctl(env, "status").returncode == 0, 20, "the daemon")
        wait_for(lambda: status_json(env)[1]["sessions"], 20, "the session to be discovered")
        got = status_json(env)[1]["sessions"][0]
        assert got["parked"] is True and got["state"] == "idle"
        assert got["cursor"] == len(s.path.read_bytes()) and got["parts"] == 1
        assert got["behind_bytes"] == 0 and got["lag_s"] == 0.0
        human = ctl(env, "status")
        assert human.returncode == 0 and "sessions: 1 (0 active)" in human.stdout, human.stdout
        assert s.session_id not in human.stdout, "people see the sessions doing something"
        assert daemon.stop() == 0


# ---------- metrics ----------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_over_the_socket_and_on_loopback_agree_with_status(tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    port = free_port()
    env = daemon_env(tmp_path, bucket, {"TRACEMIRROR_METRICS_ADDR": f"127.0.0.1:{port}"})
    home = Path(env["HOME"])
    s = make_session(home, "claude-code")
    with s.path.open("ab") as f:
        f.write(b'{"type":"user","message":"my key is AKIAIOSFODNN7EXAMPLE ok"}\n')
    write(s, 1, 4)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: mirrored_lines(bucket, s) == 5, 20, "the session")
        wait_for(lambda: status_json(env)[1]["sessions"][0]["parts"] >= 1, 20, "status to show the part")
        done = ctl(env, "metrics")
        assert done.returncode == 0, done.stderr
        over_socket = samples(done.stdout)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            scraped = samples(response.read().decode())
        for path in ("/v1/status", "/v1/sessions"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
            assert refused.value.code == 404, "the loopback address serves the metrics alone"
        post = urllib.request.Request(f"http://127.0.0.1:{port}/v1/reload", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(post, timeout=10)
        status = status_json(env)[1]
        for got in (over_socket, scraped):
            assert got[("tracemirror_store_up", ())] == 1.0
            assert got[("tracemirror_healthy", ())] == 1.0
            assert got[("tracemirror_redactions_total", (("rule", "aws-access-key-id"),))] == 1.0
            assert got[("tracemirror_parts_written_total", ())] == status["counters"]["parts_written"]
            assert got[("tracemirror_harness_sessions", (("harness", "claude-code"),))] == 1.0
            assert not any("session" in dict(labels) for _, labels in got), "no session ids as labels"
        assert status["sessions"][0]["redactions"] == {"aws-access-key-id": 1}
        assert daemon.stop() == 0


def mirrored_lines(bucket: str, s: SessionFile) -> int:
    try:
        got = read_back(bucket, SessionKey(s.harness, s.session_id))
    except Exception:
        return -1
    return got.generations.get(0, b"").count(b"\n")


# ---------- heartbeat ----------


def test_heartbeat_in_the_s3_bucket(tmp_path: Path, s3_bucket: str, s3_env: dict[str, str]) -> None:
    bucket = f"s3://{s3_bucket}/hb"
    env = daemon_env(tmp_path, bucket, {**s3_env, "TRACEMIRROR_HEARTBEAT_INTERVAL": "1s"})
    s = make_session(Path(env["HOME"]), "codex")
    write(s, 0, 3)
    client = sync_s3_client(s3_env["TRACEMIRROR_S3__ENDPOINT_URL"])

    def heartbeat() -> dict[str, Any] | None:
        try:
            got = client.get_object(Bucket=s3_bucket, Key="hb/default/agents/tester@host.json")
        except client.exceptions.NoSuchKey:
            return None
        return json.loads(got["Body"].read())

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: (heartbeat() or {}).get("sessions") == 1, 30, "a heartbeat naming the session")
        doc = heartbeat()
        assert doc is not None
        assert doc["id"] == "tester@host" and doc["status"] == "running" and doc["step"] is None
        assert doc["started_at"].endswith("Z") and doc["heartbeat"].endswith("Z")
        assert doc["summary"].startswith("tracemirrord ")
        assert doc["kind"] == "tracemirrord" and doc["pid"] == daemon.proc.pid  # type: ignore[union-attr]
        assert doc["host"] == socket.gethostname() and doc["store"] == "ok" and doc["health"] == "healthy"
        assert doc["single_writer"] is False
        assert doc["harnesses"]["codex"] == "running" and doc["heartbeat_interval_s"] == 1.0
        wait_for(lambda: (heartbeat() or {}).get("recent_sessions"), 20, "the session among the recent ones")
        recent = heartbeat()["recent_sessions"]  # type: ignore[index]
        assert recent[0]["harness"] == "codex" and recent[0]["session_id"] == s.session_id
        first = doc["heartbeat"]
        wait_for(lambda: (heartbeat() or {}).get("heartbeat") != first, 10, "a fresh heartbeat on the timer")
        assert daemon.stop() == 0
    assert heartbeat()["status"] == "stopped"  # type: ignore[index]


# ---------- SIGHUP ----------


def test_sighup_reload_with_a_good_and_a_bad_configuration(tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    config = tmp_path / "config.toml"
    config.write_text('harnesses = ["claude-code"]\nflush_interval = "200ms"\n')
    env = daemon_env(tmp_path, bucket)
    del env["TRACEMIRROR_FLUSH_INTERVAL"]  # the environment wins over the file: leave it to the file
    home = Path(env["HOME"])
    claude, pi = make_session(home, "claude-code"), make_session(home, "pi")
    write(claude, 0, 4)
    write(pi, 0, 4)
    daemon = Daemon(env, tmp_path / "daemon.log", args=("--config", str(config))).start()
    try:
        wait_for(lambda: mirrored_equals_source(bucket, claude), 20, "claude-code mirrored")
        time.sleep(1.0)
        assert mirrored_lines(bucket, pi) <= 0, "pi is not configured yet"

        # good: add pi, shorten the flush interval
        config.write_text('harnesses = ["claude-code", "pi"]\nflush_interval = "100ms"\n')
        daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for(lambda: mirrored_equals_source(bucket, pi), 20, "pi mirrored after the reload")
        doc = status_json(env)[1]
        assert doc["settings"]["flush_interval_s"] == 0.1 and doc["counters"]["reloads"] == 1
        assert {h["name"] for h in doc["harnesses"]} == {"claude-code", "pi"}

        # bad: a value that does not parse, then a change that needs a restart: both refused
        config.write_text('harnesses = ["claude-code"]\nflush_interval = "soon"\n')
        daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for(lambda: "configuration reload refused" in daemon.log(), 20, "the refusal in the log")
        config.write_text('harnesses = ["claude-code"]\nproject = "elsewhere"\n')
        refused = ctl(env, "reload")
        assert refused.returncode == 1 and "project cannot change while running" in refused.stderr
        doc = status_json(env)[1]
        assert {h["name"] for h in doc["harnesses"]} == {"claude-code", "pi"}, "the old config keeps running"
        write(claude, 4, 3)
        write(pi, 4, 3)
        wait_for(
            lambda: mirrored_equals_source(bucket, claude) and mirrored_equals_source(bucket, pi),
            20,
            "both still mirrored, exactly",
        )

        # remove pi while it is written to, then add it back: what it missed comes, nothing twice
        config.write_text('harnesses = ["claude-code"]\nflush_interval = "100ms"\n')
        done = ctl(env, "reload")
        assert done.returncode == 0 and "harness pi stopped" in done.stdout, done.stderr
        time.sleep(0.5)  # its followers finish the step they were in, drain and stop
        write(pi, 7, 5)
        write(claude, 7, 2)
        wait_for(lambda: mirrored_equals_source(bucket, claude), 20, "claude-code after pi was removed")
        assert not mirrored_equals_source(bucket, pi), "pi is not followed while it is not configured"
        config.write_text('harnesses = ["claude-code", "pi"]\nflush_interval = "100ms"\n')
        done = ctl(env, "reload")
        assert done.returncode == 0 and "harness pi started" in done.stdout, done.stderr
        wait_for(lambda: mirrored_equals_source(bucket, pi), 20, "pi caught up after it came back")
        assert daemon.alive()
        assert daemon.stop() == 0
    finally:
        if daemon.alive():
            daemon.kill9()
    log = daemon.log()
    assert "flush_interval" in log and "Traceback" not in log
    assert not (tmp_path / "bucket" / "elsewhere").exists()


# ---------- pieces ----------


def test_tracemirrorctl_status_loads_nothing_else_of_the_daemon(tmp_path: Path) -> None:
    """The socket verbs speak the shared schema only: no settings, store, pipeline or harness code."""
    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}")
    probe = (
        "import sys\n"
        "from tracemirrord.ctl.__main__ import main\n"
        "code = main(['status'])\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('tracemirrord'))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pydantic', 'pydantic_settings', 'aiobotocore', 'botocore', 'structlog', 'anyio'))\n"
        "print(code, ' '.join(loaded), '|', ' '.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    code, rest = done.stdout.split(" ", 1)
    ours, heavy = rest.split("|")
    assert code == "2"
    allowed = {
        "tracemirrord",
        "tracemirrord.control",
        "tracemirrord.control.schema",
        "tracemirrord.ctl",
        "tracemirrord.ctl.__main__",
        "tracemirrord.ctl.common",
        "tracemirrord.ctl.client",
        "tracemirrord.ctl.status",
        "tracemirrord.ctl.bucket",
        "tracemirrord.ctl.team",
        "tracemirrord.ctl.redact",
    }
    assert set(ours.split()) <= allowed, set(ours.split()) - allowed
    assert heavy.strip() == ""


@pytest.mark.anyio
async def test_a_harness_error_clears_when_it_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A harness whose discovery fails shows ``error`` (and the daemon is degraded); once its discovery
    works again the error is gone, without a restart."""
    from tracemirrord.config import load_settings
    from tracemirrord.supervisor import Daemon as InProcessDaemon

    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}", {"TRACEMIRROR_HARNESSES": "pi"})
    for name in [n for n in os.environ if n.startswith("TRACEMIRROR_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = make_session(Path(env["HOME"]), "pi")
    write(s, 0, 2)
    daemon = InProcessDaemon(load_settings(), env)
    task = daemon.tasks[0]
    real = task.harness.discover
    failures = {"left": 1}

    async def flaky(roots: list[Path]) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("disk went away")
        return await real(roots)

    task.harness.discover = flaky  # type: ignore[method-assign]
    await daemon.open()
    try:
        import anyio

        stopping = anyio.Event()
        seen = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon._supervise, task, stopping)
            for _ in range(60):
                status = daemon.snapshot()
                seen.append((status.harnesses[0].state, status.harnesses[0].error, status.health))
                if seen[-1][0] == "running":
                    break
                await anyio.sleep(0.1)
            stopping.set()
        assert ("error", "OSError: disk went away", "degraded") in seen, seen[:3]
        assert seen[-1] == ("running", None, "healthy"), seen[-3:]
        assert daemon.telemetry.counters.errors == {"harness": 1}
    finally:
        await daemon.close()


def test_sigterm_during_start_up_is_a_clean_stop(tmp_path: Path) -> None:
    """A SIGTERM before the daemon's own handler is in place (still importing, opening) still ends
    in a clean stop with exit 0, not death by the default action."""
    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}")
    # not earlier: before the interpreter itself is up no Python program has its handlers yet
    for delay in (0.4, 0.8):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tracemirrord"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, (delay, err.decode()[-2000:])
    once = subprocess.Popen(
        [sys.executable, "-m", "tracemirrord", "--once"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.05)
    once.send_signal(signal.SIGTERM)
    once.communicate(timeout=30)
    assert once.returncode in (143, -15), "--once stopped by SIGTERM did not mirror everything: not 0"
