"""End to end: tracemirrord as a subprocess, a writer process appending, the bucket read back."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon import Daemon, daemon_env, read_back, read_meta, wait_for
from s3server import BytesCountingProxy, s3_subprocess_env
from sessions import SessionFile, complete_lines, make_session, record

from tracemirrord.model import SessionKey
from tracemirrord.redact import Redactor

HARNESSES = ("claude-code", "codex", "pi")
APPENDER = Path(__file__).parent / "appender.py"


def expected(path: Path) -> bytes:
    return Redactor().redact(complete_lines(path)).data if complete_lines(path) else b""


def mirrored(bucket: str, s: SessionFile, s3_env: dict[str, str] | None = None) -> bytes:
    try:
        got = read_back(bucket, SessionKey(s.harness, s.session_id), s3_env=s3_env)
    except Exception:
        return b"<unreadable>"
    return b"".join(got.generations[g] for g in sorted(got.generations))


def run_appender(
    files: list[SessionFile], lines: int, rate: float, seed: int, first: int = 0
) -> subprocess.Popen[bytes]:
    spec = {
        "files": [[s.harness, s.session_id, str(s.path), first] for s in files],
        "lines": lines,
        "rate": rate,
        "seed": seed,
        "partial": True,
    }
    return subprocess.Popen([sys.executable, str(APPENDER), json.dumps(spec)])


def converged(bucket: str, files: list[SessionFile], s3_env: dict[str, str] | None = None) -> bool:
    return all(mirrored(bucket, s, s3_env) == expected(s.path) for s in files)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_live_sessions_mirror_exactly(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Sessions of every harness, appended while the daemon runs, reassemble to their source."""
    s3_env: dict[str, str] | None = None
    if backend == "s3":
        bucket_name = request.getfixturevalue("s3_bucket")
        s3_env = request.getfixturevalue("s3_env")
        bucket = f"s3://{bucket_name}/mirror"
    else:
        bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket, s3_env)
    home = Path(env["HOME"])
    files = [make_session(home, h) for h in HARNESSES]
    # history written before the daemon starts
    for s in files:
        with s.path.open("ab") as f:
            for i in range(20):
                f.write(record(s.harness, s.session_id, i, random.Random(i)))
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        writer = run_appender(files, lines=40, rate=40, seed=1, first=20)
        assert writer.wait(60) == 0
        wait_for(lambda: converged(bucket, files, s3_env), 30, "the bucket to match the sources")
        assert daemon.stop() == 0, daemon.log()
    for s in files:
        meta = _meta(bucket, s, s3_env)
        assert meta["harness"] == s.harness and meta["session_id"] == s.session_id
        assert meta["cwd"] == "/home/dev/proj"
        assert meta["total_source_bytes"] == len(complete_lines(s.path))
        assert meta["writer"] is None, "a clean stop releases the lease"


def _meta(bucket: str, s: SessionFile, s3_env: dict[str, str] | None) -> dict:
    doc = read_meta(bucket, SessionKey(s.harness, s.session_id), s3_env=s3_env)
    assert doc is not None, f"no meta.json for {s.harness}/{s.session_id}"
    return doc


def test_a_burst_is_one_part_and_an_idle_session_sends_nothing(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str], s3_proxy: BytesCountingProxy
) -> None:
    """The flush policy on the wire (counted by a proxy in front of the S3 server): lines written in
    a burst coalesce into one part, and a session that is fully mirrored and idle costs no request.
    """
    bucket = f"s3://{s3_bucket}"
    through_proxy = s3_subprocess_env(s3_proxy.endpoint_url)
    env = daemon_env(tmp_path, bucket, {**through_proxy, "TRACEMIRROR_FLUSH_INTERVAL": "2s"})
    s = make_session(Path(env["HOME"]), "claude-code")
    rng = random.Random(7)
    s.path.write_bytes(b"".join(record(s.harness, s.session_id, i, rng) for i in range(3)))

    def meta_current() -> bool:
        return _meta(bucket, s, s3_env).get("total_source_bytes") == s.path.stat().st_size

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: converged(bucket, [s], s3_env), 20, "the first lines")
        wait_for(meta_current, 20, "meta.json to catch up")
        time.sleep(1.5)  # anything still due goes out now
        s3_proxy.reset_counters()
        time.sleep(4.0)
        idle = [f"{r.method} {r.target}" for r in s3_proxy.request_log if "/agents/" not in r.target]
        assert idle == [], "an idle, fully mirrored session sends no request"

        with s.path.open("ab") as f:
            for i in range(3, 43):  # 40 separate writes in about 0.6 s: well inside the 2 s interval
                f.write(record(s.harness, s.session_id, i, rng))
                f.flush()
                time.sleep(0.015)
        wait_for(lambda: converged(bucket, [s], s3_env), 20, "the burst")
        wait_for(meta_current, 20, "meta.json to catch up")
        part_puts = [r for r in s3_proxy.request_log if r.method == "PUT" and "/part-" in r.target]
        assert len(part_puts) == 1, [r.target for r in part_puts]
        assert daemon.stop() == 0, daemon.log()


def test_once_writes_a_new_sessions_meta_json_once_and_claims_a_known_one(
    tmp_path: Path, s3_bucket: str, s3_env: dict[str, str], s3_proxy: BytesCountingProxy
) -> None:
    """``--once`` on sessions new to the bucket: their parts, then one meta.json each (released).
    On a session the bucket already has, the lease is claimed first, as the daemon always does."""
    bucket = f"s3://{s3_bucket}"
    env = daemon_env(tmp_path, bucket, s3_subprocess_env(s3_proxy.endpoint_url))
    files = [make_session(Path(env["HOME"]), h) for h in HARNESSES]
    rng = random.Random(11)
    for s in files:
        s.path.write_bytes(b"".join(record(s.harness, s.session_id, i, rng) for i in range(5)))
    once = [sys.executable, "-m", "tracemirrord", "--once"]

    def puts(kind: str) -> list[str]:
        return [r.target for r in s3_proxy.request_log if r.method == "PUT" and kind in r.target]

    assert subprocess.run(once, env=env, capture_output=True, timeout=60).returncode == 0
    assert len(puts("/part-")) == 3 and len(puts("/meta.json")) == 3, s3_proxy.request_log
    assert converged(bucket, files, s3_env)
    assert all(_meta(bucket, s, s3_env)["writer"] is None for s in files)

    s3_proxy.reset_counters()
    with files[0].path.open("ab") as f:
        f.write(record(files[0].harness, files[0].session_id, 5, rng))
    assert subprocess.run(once, env=env, capture_output=True, timeout=60).returncode == 0
    assert len(puts("/part-")) == 1
    assert len(puts("/meta.json")) == 2, "claim before the part, release after"
    assert converged(bucket, files, s3_env)
    assert _meta(bucket, files[0], s3_env)["writer"] is None
