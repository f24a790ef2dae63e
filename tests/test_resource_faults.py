"""Resource faults under a real daemon: a full disk (bucket, state dir), the checkpoint database
locked by another process or overwritten with garbage, and the bucket directory deleted while
running. In each the daemon stays up, says what is wrong in ``tracemirrorctl status``, and ends
with the bucket exactly equal to the (redacted) source: nothing lost, nothing twice.

Full disks are real: a tmpfs of a few MiB mounted for the test and filled with a file until
ENOSPC, then freed. Mounting needs root (CI runs as root); elsewhere those two tests are skipped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon, daemon_env, read_back, wait_for
from sessions import SessionFile, complete_lines, make_session, record

from tracemirrord.model import SessionKey
from tracemirrord.redact import Redactor
from tracemirrord.store.local import HIDDEN_DIR, TEMP_PREFIX


def append(s: SessionFile, start: int, count: int) -> None:
    rng = random.Random(start * 31 + len(s.session_id))
    with s.path.open("ab") as f:
        f.write(b"".join(record(s.harness, s.session_id, i, rng) for i in range(start, start + count)))


def expected(s: SessionFile) -> bytes:
    return Redactor().redact(complete_lines(s.path)).data


def is_current(bucket: str, files: list[SessionFile]) -> bool:
    try:
        return all(
            read_back(bucket, SessionKey(s.harness, s.session_id)).generations.get(0) == expected(s)
            for s in files
        )
    except Exception:
        return False


def assert_exact(bucket: str, files: list[SessionFile]) -> None:
    for s in files:
        got = read_back(bucket, SessionKey(s.harness, s.session_id))
        assert list(got.generations) == [0], f"{s.harness}: generations {list(got.generations)}"
        assert got.generations[0] == expected(s), f"{s.harness}: the copy differs from the source"
        lines = got.generations[0].splitlines()
        assert len(lines) == len(set(lines)), "a line appears twice"


def status(env: dict[str, str]) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "tracemirrord.ctl", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.returncode, (json.loads(done.stdout) if done.stdout.strip() else {})


def store_error(env: dict[str, str]) -> str:
    _, doc = status(env)
    store = doc.get("store") or {}
    return str(store.get("last_error") or "") if store.get("state") == "unreachable" else ""  # type: ignore[union-attr]


def checkpoint_of(env: dict[str, str]) -> dict[str, object]:
    return status(env)[1].get("checkpoint") or {}  # type: ignore[return-value]


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own (root only): a disk that really fills up."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its filesystem is full; returns it (delete it to free)."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    probe = directory / "probe"
    with pytest.raises(OSError) as full:
        probe.write_bytes(b"x" * 8192)
    probe.unlink(missing_ok=True)
    assert full.value.errno == errno.ENOSPC
    return filler


def test_bucket_disk_full_daemon_waits_and_resumes(tmp_path: Path, tiny_fs: Path) -> None:
    """The embedded bucket's disk fills up: status says "out of space", the daemon stays up, and once
    space returns the copy is exact; the failed writes left no temp files."""
    bucket_dir = tiny_fs / "bucket"
    bucket = f"file://{bucket_dir}"
    env = daemon_env(tmp_path, bucket)
    files = [make_session(Path(env["HOME"]), h) for h in ("claude-code", "codex")]
    for s in files:
        append(s, 0, 10)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: is_current(bucket, files), 20, "the first copy")
        filler = fill(tiny_fs)
        for s in files:
            append(s, 10, 20)
        wait_for(lambda: "out of space" in store_error(env), 20, "status to say the bucket is full")
        assert status(env)[0] == 1, "degraded while the disk is full"
        assert daemon.alive()
        time.sleep(1.0)
        assert not is_current(bucket, files)
        filler.unlink()
        for s in files:
            append(s, 30, 5)
        wait_for(lambda: is_current(bucket, files), 30, "the copy after space returned")
        wait_for(lambda: status(env)[0] == 0, 20, "healthy again")
        assert daemon.stop() == 0
    assert_exact(bucket, files)
    strays = [p for p in bucket_dir.rglob(f"{TEMP_PREFIX}*")]
    assert strays == []


def test_state_dir_disk_full_mirroring_goes_on(tmp_path: Path, tiny_fs: Path) -> None:
    """The state dir's disk fills up: checkpoint saves fail (status: checkpoint failing, degraded),
    parts still land; when space returns saves work again; a kill -9 restart adds nothing twice."""
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket, {"TRACEMIRROR_STATE_DIR": str(tiny_fs / "state")})
    s = make_session(Path(env["HOME"]), "claude-code")
    append(s, 0, 10)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: is_current(bucket, [s]), 20, "the first copy")
        filler = fill(tiny_fs)
        for i in range(10, 40, 5):
            append(s, i, 5)
            time.sleep(0.2)
        wait_for(
            lambda: checkpoint_of(env).get("state") == "failing", 20, "status to say the checkpoint fails"
        )
        assert "full" in str(checkpoint_of(env).get("last_error")), checkpoint_of(env)
        wait_for(lambda: is_current(bucket, [s]), 20, "parts landing while the state dir is full")
        assert status(env)[0] == 1
        filler.unlink()
        append(s, 40, 5)
        wait_for(lambda: checkpoint_of(env).get("state") == "ok", 20, "checkpoint saves working again")
        wait_for(lambda: is_current(bucket, [s]), 20, "the copy")
        daemon.kill9()
    append(s, 45, 5)
    with Daemon(env, tmp_path / "again.log") as daemon:
        wait_for(lambda: is_current(bucket, [s]), 20, "the copy after a restart")
        assert daemon.stop() == 0
    assert_exact(bucket, [s])


LOCK_HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
if sys.argv[2] == "exclusive":  # nobody else may even read (as a backup tool might hold it)
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
    db.execute("BEGIN EXCLUSIVE")
    db.execute("SELECT count(*) FROM session_state").fetchall()
else:  # the write lock of a WAL database, taken while the daemon has it open
    db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
"""


def hold_lock(path: Path, how: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(10)


def test_checkpoint_locked_by_another_process(tmp_path: Path) -> None:
    """Locked at start: this run caches in memory (status warns), the file is left as it is. Locked
    while running: saves pause, status says so, the parts do not wait; released: saves resume."""
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket)
    db = Path(env["XDG_STATE_HOME"]) / "tracemirror" / "checkpoint.sqlite3"
    s = make_session(Path(env["HOME"]), "codex")
    append(s, 0, 10)
    assert (
        subprocess.run([sys.executable, "-m", "tracemirrord", "--once"], env=env, timeout=60).returncode == 0
    )
    holder = hold_lock(db, "exclusive")
    try:
        with Daemon(env, tmp_path / "locked.log") as daemon:
            append(s, 10, 10)
            wait_for(lambda: is_current(bucket, [s]), 20, "the copy with the checkpoint locked")
            assert checkpoint_of(env).get("state") == "memory"
            assert any("checkpoint in memory" in w for w in status(env)[1].get("warnings", []))  # type: ignore[union-attr]
            assert daemon.stop() == 0
    finally:
        release(holder)
    assert db.exists() and not db.with_suffix(".corrupt").exists(), "a locked database is not set aside"
    with Daemon(env, tmp_path / "running.log") as daemon:
        append(s, 20, 5)
        wait_for(lambda: is_current(bucket, [s]), 20, "the copy")
        assert checkpoint_of(env).get("state") == "ok"
        holder = hold_lock(db, "write")
        try:
            started = time.monotonic()
            for i in range(25, 45, 5):
                append(s, i, 5)
                time.sleep(0.3)
            wait_for(lambda: is_current(bucket, [s]), 20, "parts landing with the checkpoint locked")
            assert time.monotonic() - started < 10
            wait_for(
                lambda: "locked" in str(checkpoint_of(env).get("last_error")), 10, "status naming the lock"
            )
        finally:
            release(holder)
        append(s, 45, 5)
        wait_for(lambda: checkpoint_of(env).get("state") == "ok", 20, "saves working again")
        wait_for(lambda: is_current(bucket, [s]), 20, "the copy")
        assert daemon.stop() == 0
    assert_exact(bucket, [s])


def test_checkpoint_garbage_is_rebuilt_from_the_bucket(tmp_path: Path) -> None:
    """Garbage bytes over the checkpoint, while running and between runs: set aside, rebuilt from the
    bucket (logged), nothing uploaded twice."""
    bucket_dir = tmp_path / "bucket"
    bucket = f"file://{bucket_dir}"
    env = daemon_env(tmp_path, bucket)
    db = Path(env["XDG_STATE_HOME"]) / "tracemirror" / "checkpoint.sqlite3"
    files = [make_session(Path(env["HOME"]), h) for h in ("claude-code", "pi")]
    garbage = random.Random(5).randbytes(64 * 1024)
    for s in files:
        append(s, 0, 10)
    with Daemon(env, tmp_path / "first.log") as daemon:
        wait_for(lambda: is_current(bucket, files), 20, "the first copy")
        db.write_bytes(garbage)
        for i in range(10, 30, 5):
            for s in files:
                append(s, i, 5)
            time.sleep(0.3)
        wait_for(lambda: is_current(bucket, files), 20, "the copy with a garbage checkpoint")
        assert daemon.stop() == 0
    parts = sorted(p.name for p in bucket_dir.rglob("part-*") if HIDDEN_DIR not in p.parts)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(garbage)
    done = subprocess.run(
        [sys.executable, "-m", "tracemirrord", "--once"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"checkpoint reset" in done.stderr and b"rebuilt from the bucket" in done.stderr
    assert db.with_suffix(".corrupt").read_bytes()[: len(garbage)] == garbage
    assert sorted(p.name for p in bucket_dir.rglob("part-*") if HIDDEN_DIR not in p.parts) == parts
    assert_exact(bucket, files)


def test_bucket_deleted_while_running(tmp_path: Path) -> None:
    """The bucket directory deleted, its parent too: status says so and the daemon waits; the parent
    back: the bucket is recreated and every session (the idle one too) mirrored again, exactly."""
    bucket_dir = tmp_path / "disk" / "bucket"
    bucket = f"file://{bucket_dir}"
    env = daemon_env(tmp_path, bucket)
    busy, idle = (make_session(Path(env["HOME"]), h) for h in ("claude-code", "codex"))
    for s in (busy, idle):
        append(s, 0, 10)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: is_current(bucket, [busy, idle]), 20, "the first copy")
        shutil.rmtree(tmp_path / "disk")
        append(busy, 10, 5)
        wait_for(lambda: "does not exist" in store_error(env), 20, "status to say the bucket is gone")
        assert status(env)[0] == 1 and daemon.alive()
        (tmp_path / "disk").mkdir()
        append(busy, 15, 5)
        wait_for(lambda: is_current(bucket, [busy, idle]), 30, "both sessions mirrored again")
        wait_for(lambda: status(env)[0] == 0, 20, "healthy again")
        assert daemon.stop() == 0
        log = daemon.log()
        assert "was deleted while running; recreated it empty" in log
        # each follower reads the bucket again once or twice; a loop on the conflict logged hundreds
        assert log.count("another writer wrote this session") <= 6
    assert_exact(bucket, [busy, idle])
