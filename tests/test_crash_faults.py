"""kill -9 where it hurts most: during ``--once``, during a store outage, and while the source is
rewritten. After the kills a last clean run must leave the bucket exactly equal to the source.

The kills per test come from ``TRACEMIRROR_CRASH_KILLS`` (5 here by default; a soak run by hand
sets more). Expected copies are the source's complete lines (redaction off: the redactor is not
under test here), or for the rewritten file the versions the rewriter wrote, rebuilt from its
version numbers (tests/rewriter.py).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon import Daemon, daemon_env, read_back, wait_for
from s3server import BytesCountingProxy
from sessions import SessionFile, complete_lines, make_session
from test_crash import start_writer
from test_paths_and_races import check_generations

from tracemirrord.model import SessionKey

KILLS = int(os.environ.get("TRACEMIRROR_CRASH_KILLS", "5"))
STARTED = '"tracemirrord started"'
REWRITER = Path(__file__).resolve().parent / "rewriter.py"


def copy_of(bucket: str, s: SessionFile, s3_env: dict[str, str] | None) -> dict[int, bytes]:
    return read_back(bucket, SessionKey(s.harness, s.session_id), s3_env=s3_env).generations


def is_exact(bucket: str, files: list[SessionFile], s3_env: dict[str, str] | None = None) -> bool:
    """One generation per session, equal to the source's complete lines (no gap, nothing twice:
    reassembly checks every part starts where the previous one ended)."""
    try:
        return all(copy_of(bucket, s, s3_env) == {0: complete_lines(s.path)} for s in files)
    except Exception:
        return False


def plain_env(tmp_path: Path, bucket: str, s3_env: dict[str, str] | None = None) -> dict[str, str]:
    return daemon_env(tmp_path, bucket, {**(s3_env or {}), "TRACEMIRROR_REDACT": "false"})


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_kill9_during_once(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """``tracemirrord --once`` killed -9 while it uploads (just after a part landed, at a random
    few milliseconds) as a writer appends; a last ``--once`` exits 0 and the copy is exact."""
    s3_env = None
    if backend == "s3":
        s3_env = request.getfixturevalue("s3_env")
        bucket = f"s3://{request.getfixturevalue('s3_bucket')}"
    else:
        bucket = f"file://{tmp_path / 'bucket'}"
    env = plain_env(tmp_path, bucket, s3_env)
    files = [make_session(Path(env["HOME"]), h) for h in ("claude-code", "codex")]
    rng = random.Random(11)
    writer = start_writer(files, lines=300, rate=60, seed=5)
    once = [sys.executable, "-m", "tracemirrord", "--once"]
    killed_running = 0
    log = tmp_path / "once.log"
    log.touch()
    try:
        for _ in range(KILLS):
            with log.open("ab") as err:
                uploads = log.read_text().count('"part uploaded"')
                proc = subprocess.Popen(once, env=env, stdout=subprocess.DEVNULL, stderr=err)
                deadline = time.monotonic() + 30
                while proc.poll() is None and time.monotonic() < deadline:
                    if log.read_text().count('"part uploaded"') > uploads:
                        break
                    time.sleep(0.01)
                time.sleep(rng.uniform(0, 0.05))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    killed_running += 1
                proc.wait(30)
        assert writer.wait(60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    assert killed_running >= KILLS // 2, "most kills must land while --once uploads"
    last = subprocess.run(once, env=env, capture_output=True, timeout=120)
    assert last.returncode == 0, last.stderr[-2000:]
    assert is_exact(bucket, files, s3_env)


def test_kill9_during_an_outage(
    tmp_path: Path, s3_server: object, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    """The daemon killed -9 while the store refuses, resets or answers 503 (the proxy switches
    mid-run); when the store is back a last run catches up exactly."""
    rng = random.Random(23)
    with BytesCountingProxy(s3_server.endpoint_url) as proxy:  # type: ignore[attr-defined]
        env = plain_env(
            tmp_path,
            f"s3://{s3_bucket}",
            {**s3_env, "TRACEMIRROR_S3__ENDPOINT_URL": proxy.endpoint_url},
        )
        files = [make_session(Path(env["HOME"]), h) for h in ("claude-code", "pi")]
        writer = start_writer(files, lines=300, rate=60, seed=9)
        log = tmp_path / "daemon.log"
        try:
            for i in range(KILLS):
                proxy.mode = "pass"
                starts = log.read_text().count(STARTED) if log.exists() else 0
                daemon = Daemon(env, log).start()
                wait_for(lambda n=starts: log.read_text().count(STARTED) > n, 30, "the daemon to start")
                time.sleep(rng.uniform(0.2, 0.8))
                proxy.mode = ("down", "reset", "error503")[i % 3]
                time.sleep(rng.uniform(0.3, 1.2))
                daemon.kill9()
            assert writer.wait(60) == 0
        finally:
            if writer.poll() is None:
                writer.kill()
        proxy.mode = "pass"
        with Daemon(env, log) as daemon:
            wait_for(lambda: is_exact(f"s3://{s3_bucket}", files, s3_env), 60, "the bucket to catch up")
            assert daemon.stop() == 0


def test_kill9_while_the_source_is_rewritten(tmp_path: Path) -> None:
    """Another process rewrites the session again and again while the daemon is killed -9: every
    generation in the bucket is a prefix of one version as written (valid JSON, never mixed, no
    gap or overlap), and once the writer stops the last generation equals the file."""
    bucket = f"file://{tmp_path / 'bucket'}"
    env = plain_env(tmp_path, bucket)
    env["TRACEMIRROR_FLUSH_INTERVAL"] = "0.05"
    s = make_session(Path(env["HOME"]), "claude-code", "s-rewritten")
    s.path.write_bytes(b"")
    rng = random.Random(31)
    seconds = 1.5 * KILLS + 2
    rewriter = subprocess.Popen(
        [sys.executable, str(REWRITER), str(s.path), str(seconds)], stdout=subprocess.PIPE
    )
    log = tmp_path / "daemon.log"
    try:
        for _ in range(KILLS):
            starts = log.read_text().count(STARTED) if log.exists() else 0
            daemon = Daemon(env, log).start()
            wait_for(lambda n=starts: log.read_text().count(STARTED) > n, 30, "the daemon to start")
            time.sleep(rng.uniform(0.2, 1.0))
            daemon.kill9()
        out, _ = rewriter.communicate(timeout=seconds + 60)
    finally:
        if rewriter.poll() is None:
            rewriter.kill()
    assert rewriter.returncode == 0
    last = int(out)
    final = complete_lines(s.path)
    with Daemon(env, log) as daemon:

        def caught_up() -> bool:
            generations = copy_of(bucket, s, None)
            return bool(generations) and generations[max(generations)] == final

        wait_for(caught_up, 40, "the last version in the bucket")
        assert daemon.stop() == 0
    generations = copy_of(bucket, s, None)
    assert last in check_generations(generations, tight=False)
    assert len(generations) >= 2, "the rewrites were seen as new generations"
