"""Crash safety: kill -9 at random moments, lost state dir; the bucket ends exactly equal to the source."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon import Daemon, daemon_env, read_back, wait_for
from sessions import SessionFile, complete_lines, make_session

from tracemirrord.model import SessionKey
from tracemirrord.redact import Redactor

APPENDER = Path(__file__).parent / "appender.py"
KILLS = int(os.environ.get("TRACEMIRROR_CRASH_KILLS", "8"))
STARTED = '"tracemirrord started"'


def start_writer(files: list[SessionFile], lines: int, rate: float, seed: int) -> subprocess.Popen[bytes]:
    spec = {
        "files": [[s.harness, s.session_id, str(s.path), 0] for s in files],
        "lines": lines,
        "rate": rate,
        "seed": seed,
        "partial": True,
    }
    return subprocess.Popen([sys.executable, str(APPENDER), json.dumps(spec)])


def assert_exact(bucket: str, files: list[SessionFile], s3_env: dict[str, str] | None = None) -> None:
    redactor = Redactor()
    for s in files:
        got = read_back(bucket, SessionKey(s.harness, s.session_id), s3_env=s3_env)
        assert list(got.generations) == [0], f"{s.path.name}: unexpected generations {list(got.generations)}"
        want = redactor.redact(complete_lines(s.path)).data
        assert got.generations[0] == want, f"{s.path.name}: bucket copy differs from the source"
        lines = got.generations[0].splitlines()
        assert len(lines) == len(set(lines)), "a line appears twice"


def copy_is_current(bucket: str, files: list[SessionFile], s3_env: dict[str, str] | None = None) -> bool:
    redactor = Redactor()
    for s in files:
        try:
            got = read_back(bucket, SessionKey(s.harness, s.session_id), s3_env=s3_env)
        except Exception:
            return False
        if got.generations.get(0, b"") != redactor.redact(complete_lines(s.path)).data:
            return False
    return True


@pytest.mark.parametrize("lose_state", [False, True], ids=["keep-state", "lose-state"])
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_kill9_loop_leaves_no_gap_and_no_duplicate(
    backend: str, lose_state: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """kill -9 at random moments while a writer appends; after a last clean run the copy is exact."""
    s3_env = None
    if backend == "s3":
        s3_env = request.getfixturevalue("s3_env")
        bucket = f"s3://{request.getfixturevalue('s3_bucket')}"
    else:
        bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket, s3_env)
    home = Path(env["HOME"])
    files = [make_session(home, h) for h in ("claude-code", "codex", "pi")]
    rng = random.Random(42)
    writer = start_writer(files, lines=600, rate=60, seed=7)
    log = tmp_path / "daemon.log"
    killed_after_upload = 0
    try:
        for _ in range(KILLS):
            text = log.read_text() if log.exists() else ""
            uploads_before, starts_before = text.count('"part uploaded"'), text.count(STARTED)
            daemon = Daemon(env, log).start()
            # time the kill from the daemon being up, not from the exec: on a loaded machine the
            # imports and the store check take a varying while, and a kill before them tests nothing
            wait_for(lambda n=starts_before: log.read_text().count(STARTED) > n, 20, "the daemon to start")
            time.sleep(rng.uniform(0.2, 1.2))
            daemon.kill9()
            killed_after_upload += log.read_text().count('"part uploaded"') > uploads_before
            if lose_state:
                shutil.rmtree(Path(env["XDG_STATE_HOME"]) / "tracemirror", ignore_errors=True)
        assert writer.wait(60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    assert killed_after_upload >= KILLS // 2, "most kills must land while the daemon is uploading"
    with Daemon(env, log) as daemon:
        wait_for(lambda: copy_is_current(bucket, files, s3_env), 40, "the bucket to catch up")
        assert daemon.stop() == 0
    assert_exact(bucket, files, s3_env)


def test_lost_state_dir_uploads_nothing_twice(tmp_path: Path) -> None:
    """With the state dir deleted, a restart adopts what the bucket holds instead of uploading it again."""
    bucket_dir = tmp_path / "bucket"
    env = daemon_env(tmp_path, f"file://{bucket_dir}")
    home = Path(env["HOME"])
    files = [make_session(home, h) for h in ("claude-code", "codex", "pi")]
    assert start_writer(files, lines=100, rate=0, seed=3).wait(30) == 0
    once = [sys.executable, "-m", "tracemirrord", "--once"]
    assert subprocess.run(once, env=env, capture_output=True, timeout=60).returncode == 0
    parts_before = sorted(p.name for p in bucket_dir.rglob("part-*.jsonl"))
    shutil.rmtree(Path(env["XDG_STATE_HOME"]) / "tracemirror")
    assert subprocess.run(once, env=env, capture_output=True, timeout=60).returncode == 0
    assert sorted(p.name for p in bucket_dir.rglob("part-*.jsonl")) == parts_before
    assert_exact(f"file://{bucket_dir}", files)
