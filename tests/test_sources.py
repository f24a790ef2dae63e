"""Hostile and changing sources, end to end through a running daemon into the embedded bucket.

Partial lines, truncation, replacement, a 20 MB line, invalid UTF-8 and non-JSON lines, deleted and
moved files, the backfill window and a second daemon on the same sessions.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest
from daemon import Daemon, daemon_env, read_back, wait_for
from sessions import SessionFile, complete_lines, make_session, record
from structlog.testing import capture_logs

from tracemirrord import supervisor
from tracemirrord.config import load_settings
from tracemirrord.model import SessionKey
from tracemirrord.reassemble import Reassembled
from tracemirrord.redact import Redactor
from tracemirrord.supervisor import Daemon as InProcessDaemon

redactor = Redactor()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}")


@pytest.fixture
def daemon(env: dict[str, str], tmp_path: Path) -> Iterator[Daemon]:
    with Daemon(env, tmp_path / "daemon.log") as running:
        yield running
        if running.alive():
            assert running.stop() == 0, running.log()


InProcess = Callable[[], contextlib.AbstractAsyncContextManager[InProcessDaemon]]


@pytest.fixture
def in_process(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> InProcess:
    """Opens the supervisor's Daemon in this process on ``env`` (closed again on the way out)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[InProcessDaemon]:
        daemon = InProcessDaemon(load_settings(), env)
        await daemon.open()
        try:
            yield daemon
        finally:
            await daemon.close()

    return opened


def mirror_once(env: dict[str, str]) -> None:
    """``tracemirrord --once`` as a subprocess; it must succeed."""
    once = [sys.executable, "-m", "tracemirrord", "--once"]
    assert subprocess.run(once, env=env, capture_output=True, timeout=60).returncode == 0


def bucket_of(env: dict[str, str]) -> str:
    return env["TRACEMIRROR_BUCKET"]


def back(env: dict[str, str], s: SessionFile) -> Reassembled:
    return read_back(bucket_of(env), SessionKey(s.harness, s.session_id))


def generations(env: dict[str, str], s: SessionFile) -> dict[int, bytes]:
    try:
        return back(env, s).generations
    except Exception:
        return {}


def meta(env: dict[str, str], s: SessionFile) -> dict:
    path = (
        Path(bucket_of(env).removeprefix("file://"))
        / "default/sessions"
        / s.harness
        / s.session_id
        / "meta.json"
    )
    return json.loads(path.read_bytes()) if path.exists() else {}


def append(s: SessionFile, data: bytes) -> None:
    with s.path.open("ab") as f:
        f.write(data)


def lines(s: SessionFile, start: int, count: int) -> bytes:
    rng = random.Random(start)
    return b"".join(record(s.harness, s.session_id, i, rng) for i in range(start, start + count))


def test_partial_line_waits_for_its_newline(env: dict[str, str], daemon: Daemon) -> None:
    """A half-written last line is not mirrored until its newline arrives, then it is, whole."""
    s = make_session(Path(env["HOME"]), "claude-code")
    first = lines(s, 0, 3)
    append(s, first)
    wait_for(lambda: generations(env, s).get(0) == first, 15, "the complete lines")
    half = lines(s, 3, 1)
    append(s, half[:25])
    time.sleep(1.0)
    assert generations(env, s)[0] == first, "a partial line must never be uploaded"
    append(s, half[25:])
    wait_for(lambda: generations(env, s).get(0) == first + half, 15, "the completed line")


def test_truncated_file_starts_a_new_generation(env: dict[str, str], daemon: Daemon) -> None:
    """A truncated and rewritten file is mirrored as generation 1; generation 0 stays as it was."""
    s = make_session(Path(env["HOME"]), "codex")
    old = lines(s, 0, 10)
    append(s, old)
    wait_for(lambda: generations(env, s).get(0) == old, 15, "generation 0")
    new = lines(s, 100, 3)
    with s.path.open("r+b") as f:
        f.truncate(0)
        f.write(new)
    wait_for(lambda: generations(env, s) == {0: old, 1: new}, 15, "generation 1")
    assert daemon.stop() == 0
    assert meta(env, s)["generation"] == 1, "meta.json names the current generation after the drain"


def test_replaced_file_starts_a_new_generation(env: dict[str, str], daemon: Daemon) -> None:
    """A file replaced by rename with different content (even longer) is a new generation."""
    s = make_session(Path(env["HOME"]), "pi")
    old = lines(s, 0, 5)
    append(s, old)
    wait_for(lambda: generations(env, s).get(0) == old, 15, "generation 0")
    new = lines(s, 50, 20)
    tmp = s.path.with_suffix(".tmp")
    tmp.write_bytes(new)
    os.replace(tmp, s.path)
    wait_for(lambda: generations(env, s) == {0: old, 1: new}, 15, "generation 1")


def test_huge_line_invalid_utf8_and_non_json_are_kept_byte_exact(env: dict[str, str], daemon: Daemon) -> None:
    """A 20 MB line, invalid UTF-8, NUL bytes and plain text lines all reassemble byte for byte."""
    s = make_session(Path(env["HOME"]), "claude-code")
    huge = json.dumps({"type": "tool_result", "content": "x" * (20 * 2**20)}).encode() + b"\n"
    odd = (
        b'{"bad utf8": "\xff\xfe\xc3"}\n' + b"not json at all\n" + b"\x00\x01 nul bytes\n" + b"{broken json\n"
    )
    body = lines(s, 0, 2) + huge + odd + lines(s, 2, 2)
    append(s, body)
    wait_for(lambda: generations(env, s).get(0) == body, 60, "the hostile lines")


def test_line_over_the_limit_becomes_a_counted_placeholder(tmp_path: Path) -> None:
    """A line longer than max_line_bytes is replaced by a placeholder that records its size and hash."""
    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}", {"TRACEMIRROR_MAX_LINE_BYTES": "1MiB"})
    s = make_session(Path(env["HOME"]), "claude-code")
    big = b'{"blob":"' + b"A" * (3 * 2**20) + b'"}\n'
    append(s, lines(s, 0, 1) + big + lines(s, 1, 1))
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: len(generations(env, s).get(0, b"").splitlines()) == 3, 30, "three lines")
        assert daemon.stop() == 0
    placeholder = json.loads(generations(env, s)[0].splitlines()[1])
    assert placeholder["reason"] == "line_too_long" and placeholder["bytes"] == len(big)
    assert meta(env, s)["redaction_counts"]["oversize-line"] == 1


def test_deleted_source_keeps_the_copy_and_marks_the_session_ended(
    env: dict[str, str], daemon: Daemon
) -> None:
    """Deleting a followed transcript deletes nothing in the bucket; meta.json gets ended_at."""
    s = make_session(Path(env["HOME"]), "claude-code")
    body = lines(s, 0, 8)
    append(s, body)
    wait_for(lambda: generations(env, s).get(0) == body, 15, "the copy")
    s.path.unlink()
    wait_for(lambda: meta(env, s).get("ended_at") is not None, 20, "ended_at in meta.json")
    assert generations(env, s) == {0: body}


def test_archived_codex_session_is_the_same_session(env: dict[str, str], daemon: Daemon) -> None:
    """A Codex rollout moved to archived_sessions keeps its id and cursor: no new generation, no re-upload."""
    s = make_session(Path(env["HOME"]), "codex")
    body = lines(s, 0, 6)
    append(s, body)
    wait_for(lambda: generations(env, s).get(0) == body, 15, "the copy")
    parts_before = len(back(env, s).parts)
    archived = Path(env["HOME"]) / ".codex" / "archived_sessions" / s.path.name
    archived.parent.mkdir(parents=True)
    os.rename(s.path, archived)
    more = lines(s, 6, 2)
    with archived.open("ab") as f:
        f.write(more)
    wait_for(lambda: generations(env, s).get(0) == body + more, 20, "the appended lines after the move")
    assert list(generations(env, s)) == [0]
    assert len(back(env, s).parts) == parts_before + 1
    wait_for(lambda: meta(env, s).get("source_path") == str(archived), 40, "meta.json to name the new path")
    assert meta(env, s).get("ended_at") is None


def test_backfill_window_skips_old_sessions_until_they_change(tmp_path: Path) -> None:
    """With TRACEMIRROR_BACKFILL=7d a month-old session is skipped; once appended, it is mirrored whole."""
    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}", {"TRACEMIRROR_BACKFILL": "7d"})
    old = make_session(Path(env["HOME"]), "claude-code")
    fresh = make_session(Path(env["HOME"]), "pi")
    append(old, lines(old, 0, 4))
    append(fresh, lines(fresh, 0, 4))
    month_ago = time.time() - 30 * 86400
    os.utime(old.path, (month_ago, month_ago))
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(
            lambda: generations(env, fresh).get(0) == complete_lines(fresh.path), 15, "the fresh session"
        )
        time.sleep(1.0)
        assert generations(env, old) == {}
        append(old, lines(old, 4, 1))
        # a month-old file is *cold*: only every 30th scan (9 s here) looks at it
        wait_for(
            lambda: generations(env, old).get(0) == complete_lines(old.path), 30, "the touched old session"
        )
        assert daemon.stop() == 0


def test_second_agent_backs_off_while_the_first_holds_the_lease(tmp_path: Path) -> None:
    """Two daemons (two agent ids, two state dirs) on one HOME and bucket: one writes, the other backs off."""
    bucket = f"file://{tmp_path / 'bucket'}"
    env_a = daemon_env(tmp_path, bucket)
    env_b = dict(env_a, TRACEMIRROR_AGENT_ID="other@host", XDG_STATE_HOME=str(tmp_path / "state-b"))
    s = make_session(Path(env_a["HOME"]), "claude-code")
    append(s, lines(s, 0, 5))
    with Daemon(env_a, tmp_path / "a.log") as a:
        wait_for(lambda: generations(env_a, s).get(0) == complete_lines(s.path), 15, "daemon A's copy")
        with Daemon(env_b, tmp_path / "b.log") as b:
            for i in range(5, 25):
                append(s, lines(s, i, 1))
                time.sleep(0.05)
            wait_for(lambda: generations(env_a, s).get(0) == complete_lines(s.path), 15, "the full copy")
            wait_for(lambda: "backing off" in b.log(), 15, "daemon B to report the lease")
            assert b.stop() == 0
        assert a.stop() == 0
    got = back(env_a, s)
    assert got.generations[0] == complete_lines(s.path)
    assert "other@host" not in json.dumps(meta(env_a, s)), "daemon B never wrote meta.json"


def test_two_writers_with_one_agent_id_never_interleave(tmp_path: Path) -> None:
    """Two daemons that both think the lease is theirs race for part keys; the copy is still exact."""
    bucket = f"file://{tmp_path / 'bucket'}"
    env_a = daemon_env(tmp_path, bucket)
    env_b = dict(env_a, XDG_STATE_HOME=str(tmp_path / "state-b"))
    files = [make_session(Path(env_a["HOME"]), h) for h in ("claude-code", "codex")]
    with Daemon(env_a, tmp_path / "a.log"), Daemon(env_b, tmp_path / "b.log") as b:
        for i in range(150):
            for s in files:
                append(s, lines(s, i, 1))
            time.sleep(0.01)
        wait_for(
            lambda: all(generations(env_a, s).get(0) == complete_lines(s.path) for s in files),
            30,
            "both sessions mirrored",
        )
        assert b.stop() == 0
    for s in files:
        got = back(env_a, s)
        assert list(got.generations) == [0] and got.generations[0] == complete_lines(s.path)


def test_parked_idle_session_wakes_up_when_appended(env: dict[str, str], tmp_path: Path) -> None:
    """A session idle for hours is parked (no task); appending to it later resumes from its cursor."""
    s = make_session(Path(env["HOME"]), "claude-code")
    body = lines(s, 0, 5)
    append(s, body)
    two_hours_ago = time.time() - 7200
    os.utime(s.path, (two_hours_ago, two_hours_ago))
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: generations(env, s).get(0) == body, 15, "the first copy")
        wait_for(lambda: meta(env, s).get("writer", "held") is None, 15, "the lease released on parking")
        more = lines(s, 5, 3)
        append(s, more)
        wait_for(lambda: generations(env, s).get(0) == body + more, 15, "the appended lines")
        assert daemon.stop() == 0
    assert len(back(env, s).parts) == 2


def test_restart_parks_fully_mirrored_old_sessions_without_a_task(
    env: dict[str, str], in_process: InProcess
) -> None:
    """After a restart, old sessions the checkpoint shows fully mirrored are parked at discovery.

    Only the changed one gets a follower task; the others wake through the idle sweep when appended.
    """
    home = Path(env["HOME"])
    sessions = [make_session(home, "claude-code") for _ in range(3)]
    two_hours_ago = time.time() - 7200
    for n, s in enumerate(sessions):
        append(s, lines(s, 0, 3 + n))
        os.utime(s.path, (two_hours_ago, two_hours_ago))
    mirror_once(env)
    append(sessions[0], lines(sessions[0], 3, 1))  # changed since: needs a task

    async def restart() -> None:
        async with in_process() as daemon:
            (task,) = [t for t in daemon.tasks if t.name == "claude-code"]
            started = await task.discover()
            assert [f.key.session_id for f in started] == [sessions[0].session_id]
            parked = {f.key.session_id for f in task.followers.values() if f.parked}
            assert parked == {sessions[1].session_id, sessions[2].session_id}
            assert await task.sweep_parked() == []
            append(sessions[2], lines(sessions[2], 5, 1))
            woken = await task.sweep_parked()
            assert [f.key.session_id for f in woken] == [sessions[2].session_id]
            await woken[0].sync_once()

    anyio.run(restart)
    got = back(env, sessions[2]).generations[0]
    assert got == redactor.redact(complete_lines(sessions[2].path)).data


def test_a_failing_harness_task_is_restarted_and_never_stops_the_others(
    env: dict[str, str], in_process: InProcess
) -> None:
    """A harness whose discovery raises is restarted with growing, jittered delays (each logged) and
    mirrors once it recovers; meanwhile the other harness follows its sessions as if nothing happened.
    """
    home = Path(env["HOME"])
    healthy, flaky = make_session(home, "claude-code"), make_session(home, "codex")
    append(healthy, lines(healthy, 0, 3))
    append(flaky, lines(flaky, 0, 3))
    broken = True
    failures = 0

    def mirrored(s: SessionFile) -> bool:
        return generations(env, s).get(0) == complete_lines(s.path)

    async def until(predicate: Callable[[], bool]) -> None:
        while True:
            if await anyio.to_thread.run_sync(predicate):
                return
            await anyio.sleep(0.1)

    async def scenario() -> None:
        nonlocal broken
        async with in_process() as daemon:
            (codex,) = [t for t in daemon.tasks if t.name == "codex"]
            real_discover = codex.harness.discover

            def broken_discover(*args: object) -> object:
                nonlocal failures
                if broken:
                    failures += 1
                    raise OSError("simulated: the codex sessions dir is unreadable")
                return real_discover(*args)

            codex.harness.discover = broken_discover  # type: ignore[method-assign]
            stopping = anyio.Event()
            async with anyio.create_task_group() as tg:
                for task in daemon.tasks:
                    tg.start_soon(daemon._supervise, task, stopping)
                with anyio.fail_after(15):
                    await until(lambda: mirrored(healthy))  # while codex fails
                with anyio.fail_after(15):
                    await until(lambda: failures >= 3)  # a few restarts: the delays must grow
                assert codex.state == "error" and "unreadable" in (codex.error or "")
                broken = False
                with anyio.fail_after(30):
                    await until(lambda: mirrored(flaky))  # restarted, it mirrors
                append(healthy, lines(healthy, 3, 2))
                with anyio.fail_after(15):
                    await until(lambda: mirrored(healthy))  # and the other one is still followed
                stopping.set()

    with capture_logs() as logs:
        anyio.run(scenario)
    restarts = [e for e in logs if e["event"] == "harness task failed; restarting"]
    assert {e["harness"] for e in restarts} == {"codex"}
    assert all("OSError: simulated" in e["error"] for e in restarts), "the cause, not the task group"
    assert len(restarts) == failures >= 3
    for attempt, event in enumerate(restarts[:4]):  # full jitter: in [2^k / 2, 2^k] seconds
        assert 2**attempt / 2 - 0.05 <= event["retry_in_s"] <= 2**attempt + 0.05, restarts


def test_cold_parked_sessions_are_only_looked_at_in_the_cold_sweeps(
    env: dict[str, str], in_process: InProcess
) -> None:
    """Parked files untouched for over a day are stat'ed only by the sweeps that include cold ones."""
    home = Path(env["HOME"])
    warm, cold = make_session(home, "claude-code"), make_session(home, "claude-code")
    for s, age in ((warm, 7200), (cold, 30 * 86400)):
        append(s, lines(s, 0, 3))
        os.utime(s.path, (time.time() - age, time.time() - age))
    mirror_once(env)

    async def restart() -> None:
        async with in_process() as daemon:
            (task,) = [t for t in daemon.tasks if t.name == "claude-code"]
            assert await task.discover() == []  # both parked
            append(warm, lines(warm, 3, 1))
            append(cold, lines(cold, 3, 1))
            woken = await task.sweep_parked(cold=False)
            assert [f.key.session_id for f in woken] == [warm.session_id]
            woken = await task.sweep_parked(cold=True)
            assert [f.key.session_id for f in woken] == [cold.session_id]

    anyio.run(restart)


def test_once_reports_progress_while_it_works(
    env: dict[str, str], in_process: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--once`` logs how many sessions are done out of how many while it runs, then a summary."""
    home = Path(env["HOME"])
    for harness in ("claude-code", "codex", "pi"):
        s = make_session(home, harness)
        append(s, lines(s, 0, 20))
    monkeypatch.setattr(supervisor, "PROGRESS_EVERY_S", 0.001)

    async def once() -> int:
        async with in_process() as daemon:
            return await daemon.run_once()

    with capture_logs() as logs:
        assert anyio.run(once) == 0
    progress = [e for e in logs if e["event"] == "mirroring pending sessions"]
    assert progress, "no progress line"
    assert all(0 <= e["sessions_done"] <= e["sessions"] <= 3 and e["elapsed_s"] >= 0 for e in progress)
    (summary,) = [e for e in logs if e["event"] == "everything pending is mirrored"]
    assert summary["sessions"] == summary["sessions_done"] == 3
