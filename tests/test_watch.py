"""Following by file-system notifications: real files, written by other processes, a real kernel.

The daemon tests set a scan interval of a minute and a rescan interval of ten minutes: a session
file that notifications cover has no polling of its own, so a change mirrored within seconds can
only have been noticed through a notification (or, after an overflow, through the rescan it starts).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from daemon import Daemon, daemon_env, read_back, status_json, wait_for
from sessions import SessionFile, complete_lines, make_session

from tracemirrord.mirror import PARKED_POLL_S, watched_wait_s
from tracemirrord.model import SessionKey
from tracemirrord.redact import Redactor
from tracemirrord.watch import Changes, TreeWatcher, is_remote, open_watcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux only")

APPENDER = Path(__file__).parent / "appender.py"
SLOW_SCANS = {"TRACEMIRROR_SCAN_INTERVAL": "60s", "TRACEMIRROR_RESCAN_INTERVAL": "10m"}


def append(files: list[SessionFile], lines: int, rate: float, first: int = 0, seed: int = 3) -> None:
    """Append ``lines`` lines to each file from another process, and wait for it to finish."""
    spec = {
        "files": [[s.harness, s.session_id, str(s.path), first] for s in files],
        "lines": lines,
        "rate": rate,
        "seed": seed,
        "partial": True,
    }
    subprocess.run([sys.executable, str(APPENDER), json.dumps(spec)], check=True, timeout=60)


def mirrored(bucket: str, s: SessionFile) -> bytes:
    try:
        got = read_back(bucket, SessionKey(s.harness, s.session_id))
    except Exception:
        return b"<unreadable>"
    return b"".join(got.generations[g] for g in sorted(got.generations))


def current(bucket: str, files: list[SessionFile]) -> bool:
    redactor = Redactor()
    return all(mirrored(bucket, s) == redactor.redact(complete_lines(s.path)).data for s in files)


def harness_line(log: str, harness: str) -> dict[str, object]:
    for line in log.splitlines():
        if '"harness started"' in line:
            record = json.loads(line)
            if record.get("harness") == harness:
                return record
    raise AssertionError(f"no start line for {harness}")


# ---------- the watcher itself ----------


def test_remote_file_systems_are_polled() -> None:
    assert is_remote("nfs4") and is_remote("cifs") and is_remote("fuse.sshfs") and is_remote("9p")
    assert not is_remote("ext4") and not is_remote("tmpfs") and not is_remote("overlay")
    assert not is_remote(None)


def test_a_notified_source_has_one_timer_until_it_parks() -> None:
    now = 1_000_000.0
    assert watched_wait_s(now - 60, now) == 241.0  # parks 300 s after its last write
    assert watched_wait_s(now + 30, now) == 301.0  # an mtime in the future waits no longer
    assert watched_wait_s(now - 300, now) == PARKED_POLL_S  # old enough: park


def test_watcher_reports_writes_new_directories_and_files(tmp_path: Path) -> None:
    """An append by another process, a new directory and a file in it, two levels down."""
    root = tmp_path / "projects"
    (root / "-home-dev-a").mkdir(parents=True)
    session = make_session(tmp_path / "home", "claude-code")
    inside = root / "-home-dev-a" / session.path.name
    session = SessionFile("claude-code", session.session_id, inside)
    inside.touch()

    async def go() -> None:
        watcher = open_watcher([root], max_depth=4)
        try:
            assert watcher.watched == 2
            await anyio.to_thread.run_sync(append, [session], 2, 0.0)
            with anyio.fail_after(5):
                changes = await watcher.changes()
            assert changes.written == {str(inside)}
            new_dir = root / "-home-dev-b" / "sub"
            new_dir.mkdir(parents=True)
            with anyio.fail_after(5):
                assert (await watcher.changes()).entries
            (new_dir / "s2.jsonl").write_bytes(b"{}\n")
            with anyio.fail_after(5):
                changes = await watcher.changes()
            assert changes.written == {str(new_dir / "s2.jsonl")} and changes.entries
            assert watcher.covers(str(new_dir / "s2.jsonl"))
            assert not watcher.covers(str(tmp_path / "elsewhere.jsonl"))
        finally:
            watcher.close()

    anyio.run(go)


def test_watcher_reports_an_overflow(tmp_path: Path) -> None:
    """More events than the kernel queues while nobody reads: the overflow is reported, not hidden."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many writes to overflow it here")
    (tmp_path / "a.txt").touch()
    (tmp_path / "b.txt").touch()

    async def go() -> Changes:
        watcher = TreeWatcher([tmp_path], max_depth=0)
        watcher.refresh()
        try:
            flood(tmp_path, limit + 100)
            with anyio.fail_after(5):
                return await watcher.changes()
        finally:
            watcher.close()

    assert anyio.run(go).overflow


def flood(directory: Path, events: int) -> None:
    """Modify two files in turn (the kernel merges only identical consecutive events)."""
    a = os.open(directory / "a.txt", os.O_WRONLY | os.O_APPEND)
    b = os.open(directory / "b.txt", os.O_WRONLY | os.O_APPEND)
    try:
        for _ in range(events // 2 + 1):
            os.write(a, b"x")
            os.write(b, b"y")
    finally:
        os.close(a)
        os.close(b)


# ---------- the daemon ----------


def test_daemon_follows_changes_and_new_sessions_by_notification(tmp_path: Path) -> None:
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket, SLOW_SCANS)
    home = Path(env["HOME"])
    first = make_session(home, "claude-code")
    append([first], 3, 0.0)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: current(bucket, [first]), 20, "the first session's copy")
        assert harness_line(daemon.log(), "claude-code")["following"] == "notifications"
        assert harness_line(daemon.log(), "codex")["following"] == "notifications"
        harnesses = {h["name"]: h for h in status_json(env)["harnesses"]}
        assert harnesses["claude-code"]["following"] == "notifications"
        assert harnesses["claude-code"]["polling_because"] is None
        assert harnesses["hermes"]["following"] == "notifications"  # its database watch is woken

        append([first], 20, 40.0, first=3)  # half a second of writing, some lines in two writes
        written = time.monotonic()
        wait_for(lambda: current(bucket, [first]), 10, "the appended lines")
        picked_up = time.monotonic() - written
        assert picked_up < 5, f"appends took {picked_up:.1f}s to land"

        codex = make_session(home, "codex")  # a new dated directory, then a file in it
        append([codex], 3, 0.0)
        created = time.monotonic()
        wait_for(lambda: current(bucket, [codex]), 10, "the new session's copy")
        assert time.monotonic() - created < 5
        assert daemon.stop() == 0


def test_overflow_rescans_every_file(tmp_path: Path) -> None:
    """The daemon stopped (SIGSTOP) while the queue overflows, the session's own event lost: the
    rescan after the overflow finds the append (the scans are a minute, the rescans ten apart)."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many writes to overflow it here")
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket, {**SLOW_SCANS, "TRACEMIRROR_HARNESSES": "claude-code"})
    session = make_session(Path(env["HOME"]), "claude-code")
    append([session], 3, 0.0)
    noise = session.path.parent.parent
    (noise / "a.txt").touch()
    (noise / "b.txt").touch()
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: current(bucket, [session]), 20, "the first copy")
        assert daemon.proc is not None
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        try:
            flood(noise, limit + 100)  # files no session lives in, in a watched directory
            append([session], 2, 0.0, first=3)  # queued after the overflow: never reported
        finally:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        wait_for(lambda: current(bucket, [session]), 15, "the append, found by the rescan")
        assert "notification queue overflowed" in daemon.log()
        assert daemon.stop() == 0


def test_polling_when_notifications_are_off(tmp_path: Path) -> None:
    """TRACEMIRROR_WATCH=poll: no watcher; appends and new sessions are found by polling."""
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(
        tmp_path, bucket, {"TRACEMIRROR_WATCH": "poll", "TRACEMIRROR_HARNESSES": "claude-code,pi"}
    )
    home = Path(env["HOME"])
    first = make_session(home, "claude-code")
    append([first], 3, 0.0)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: current(bucket, [first]), 20, "the first copy")
        started = harness_line(daemon.log(), "claude-code")
        assert started["following"] == "polling" and started["polling_because"] == "watch = poll"
        append([first], 10, 40.0, first=3)
        later = make_session(home, "pi")
        append([later], 3, 0.0)
        wait_for(lambda: current(bucket, [first, later]), 15, "the appends and the new session")
        assert daemon.stop() == 0
