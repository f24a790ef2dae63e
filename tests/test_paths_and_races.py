"""Issue 10: paths that cannot leave an agent's root, roots that are symlinks, reads that cannot race a
rewrite, and long-lived tasks that are supervised.

Real parts throughout: tracemirrord runs as a subprocess, files are written or rewritten by another
process (tests/rewriter.py), the bucket is the embedded one, read back with the store classes or
as plain files. Expected contents come from what the writer saved, never from the code under test.
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
from rewriter import HEADER, full_version
from sessions import complete_lines, make_session, record

from tracemirrord.harnesses.jsonl import Mismatch, _still_holds, read_chunk, read_chunk_fd
from tracemirrord.model import Chunk, Fingerprint, SessionKey

REWRITER = Path(__file__).resolve().parent / "rewriter.py"
MARKER = b"OUTSIDE-THE-ROOT-7c1e"


def lines_for(session_id: str, first: int, count: int) -> bytes:
    rng = random.Random(f"{session_id}-{first}")
    return b"".join(record("claude-code", session_id, i, rng) for i in range(first, first + count))


def mirrored(bucket: str, session_id: str) -> dict[int, bytes]:
    try:
        return read_back(bucket, SessionKey("claude-code", session_id)).generations
    except Exception as exc:  # nothing there yet reads as no generation; anything else is shown
        if "no parts" in str(exc) or "meta.json" in str(exc) or "missing" in str(exc):
            return {}
        raise


def ctl_status(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tracemirrord.ctl", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return json.loads(done.stdout) if done.stdout.strip() else {}


def bucket_bytes(bucket_dir: Path) -> bytes:
    """Every byte of every file in the embedded bucket, sidecars included."""
    return b"".join(p.read_bytes() for p in sorted(bucket_dir.rglob("*")) if p.is_file())


# ---------- paths ----------


def test_a_symlinked_root_finds_project_dirs_created_after_the_start(tmp_path: Path) -> None:
    """``~/.claude/projects`` linked to another disk: a project dir made after the start is found.

    The link's own mtime never changes; the listing used to be cached by it, so new project
    directories were never discovered.
    """
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket)
    disk = tmp_path / "otherdisk" / "projects"
    (disk / "-home-dev-a").mkdir(parents=True)
    first = disk / "-home-dev-a" / "s-first.jsonl"
    first.write_bytes(lines_for("s-first", 0, 5))
    root = Path(env["HOME"]) / ".claude" / "projects"
    root.parent.mkdir(parents=True)
    root.symlink_to(disk)
    old = time.time() - 3600
    os.utime(root, (old, old), follow_symlinks=False)  # a link made long ago
    with Daemon(env, tmp_path / "daemon.log", ("--once",)) as d:
        assert d.proc is not None and d.proc.wait(60) == 0, d.log()
    with Daemon(env, tmp_path / "daemon.log") as d:
        wait_for(lambda: mirrored(bucket, "s-first") == {0: first.read_bytes()}, 20, "the first session")
        time.sleep(1.0)  # a few scans of the unchanged tree: the listing is cached now
        (disk / "-home-dev-b").mkdir()
        second = disk / "-home-dev-b" / "s-second.jsonl"
        second.write_bytes(lines_for("s-second", 0, 7))
        started = time.monotonic()
        wait_for(lambda: mirrored(bucket, "s-second") == {0: second.read_bytes()}, 15, "the new project")
        assert time.monotonic() - started < 10, "found within a few scan intervals"
        assert d.stop() == 0


def test_a_directory_swapped_for_a_symlink_is_never_followed(tmp_path: Path) -> None:
    """A project dir replaced by a symlink to a directory outside the root after discovery: nothing
    outside is uploaded (not even lines that continue the session exactly), and status says why."""
    bucket_dir = tmp_path / "bucket"
    env = daemon_env(tmp_path, f"file://{bucket_dir}")
    home = Path(env["HOME"])
    s = make_session(home, "claude-code", "s-swapped")
    project = s.path.parent
    s.path.write_bytes(lines_for("s-swapped", 0, 6))
    original = s.path.read_bytes()
    with Daemon(env, tmp_path / "daemon.log") as d:
        wait_for(
            lambda: mirrored(str(f"file://{bucket_dir}"), "s-swapped") == {0: original}, 20, "the mirror"
        )
        outside = tmp_path / "outside" / project.name
        outside.parent.mkdir()
        project.rename(outside)  # the real directory leaves the root ...
        project.symlink_to(outside)  # ... and a symlink to it takes its place
        with (outside / s.path.name).open("ab") as f:  # a continuation: the fingerprint still matches
            f.write(json.dumps({"type": "user", "text": MARKER.decode()}).encode() + b"\n")
        (outside / "s-planted.jsonl").write_bytes(json.dumps({"text": MARKER.decode()}).encode() + b"\n")

        def refused() -> bool:
            sessions = ctl_status(env).get("sessions", [])
            return any(
                x["session_id"] == "s-swapped" and "is a symlink; not followed" in (x.get("error") or "")
                for x in sessions
            )

        wait_for(refused, 20, "status to say the session is refused")
        time.sleep(1.5)  # more polls and scans: still nothing of it
        assert d.alive()
        assert "is a symlink; not followed" in d.log()
        assert MARKER not in bucket_bytes(bucket_dir)
        assert mirrored(f"file://{bucket_dir}", "s-swapped") == {0: original}
        assert d.stop() == 0
    assert MARKER not in bucket_bytes(bucket_dir)


# ---------- reads that cannot race a rewrite ----------


def check_generations(generations: dict[int, bytes], tight: bool) -> set[int]:
    """Each generation is a prefix of one version as the writer wrote it, of valid JSON lines, unmixed.

    Returns the versions seen.
    """
    seen = set()
    for generation, data in sorted(generations.items()):
        assert data.endswith(b"\n"), f"generation {generation} ends mid-line"
        vs = set()
        for raw in data.splitlines():
            try:
                vs.add(json.loads(raw)["v"])
            except ValueError:
                raise AssertionError(
                    f"generation {generation} holds a line that is no JSON: {raw[:60]!r}"
                ) from None
        vs.discard(0)  # the header line every tight version starts with
        assert len(vs) <= 1, f"generation {generation} mixes versions {sorted(vs)}"
        if not vs:
            assert data == HEADER, f"generation {generation} holds only part of the header"
            continue
        (v,) = vs
        assert full_version(v, tight).startswith(data), f"generation {generation} is no prefix of version {v}"
        seen.add(v)
    return seen


@pytest.mark.parametrize("mode", ["paced", "tight"])
def test_reads_of_a_file_rewritten_in_a_loop_never_mix_versions(tmp_path: Path, mode: str) -> None:
    """read_chunk followed as the daemon does while another process rewrites the file in a loop
    (truncate + write in pieces, and rename-over; ``tight``: versions with one header, in place as
    fast as it can): each generation is one version's prefix, valid JSON, unmixed."""
    root = tmp_path / "root"
    root.mkdir()
    path = root / "s.jsonl"
    path.write_bytes(b"")
    tight = mode == "tight"
    writer = subprocess.Popen(
        [sys.executable, str(REWRITER), str(path), "4", *(["tight"] if tight else [])],
        stdout=subprocess.PIPE,
        text=True,
    )
    rng = random.Random(5)
    sizes = [200, 700] if tight else [200, 700, 4096]
    generations: dict[int, bytes] = {}
    generation, cursor, fingerprint = 0, 0, None
    reads = rewrites = 0
    try:
        done_at = None
        while done_at is None or time.monotonic() - done_at < 0.5:
            if done_at is None and writer.poll() is not None:
                done_at = time.monotonic()
            expected: Fingerprint | None = fingerprint
            got = read_chunk(
                path,
                generation=generation,
                start=cursor,
                expected=expected,
                max_bytes=rng.choice(sizes),
                max_line_bytes=64 << 20,
                root=root,
            )
            reads += 1
            if got is None:
                continue
            if isinstance(got, Mismatch):
                generation, cursor, fingerprint = generation + 1, 0, None
                rewrites += 1
                continue
            if got.data:
                generations[generation] = generations.get(generation, b"") + got.data
                cursor, fingerprint = got.end, got.fingerprint
    finally:
        out, _ = writer.communicate(timeout=30)
    assert writer.returncode == 0
    seen = check_generations(generations, tight)
    assert generations[generation] == complete_lines(path), "the last generation caught up"
    assert int(out) in seen
    assert rewrites >= 5 and reads > 20, (rewrites, reads)


def test_the_check_after_a_read_catches_a_rewrite_made_during_it(tmp_path: Path) -> None:
    """The read's window cannot be hit on demand, so its check is run on a file rewritten (in place,
    by another process) between the read and the check: a changed prefix is a Mismatch (new
    generation), changed lines read are read again, an unchanged file passes."""
    path = tmp_path / "s.jsonl"
    first = b"".join(json.dumps({"v": 1, "i": i}).encode() + b"\n" for i in range(40))
    more = b"".join(json.dumps({"v": 1, "i": i, "more": True}).encode() + b"\n" for i in range(40, 60))
    path.write_bytes(first + more)
    fd = os.open(path, os.O_RDONLY)
    try:
        head = read_chunk_fd(
            fd, len(first), generation=0, start=0, expected=None, max_bytes=1 << 20, max_line_bytes=1 << 20
        )
        assert isinstance(head, Chunk) and head.data == first
        tail = read_chunk_fd(
            fd,
            len(first) + len(more),
            generation=0,
            start=head.end,
            expected=head.fingerprint,
            max_bytes=1 << 20,
            max_line_bytes=1 << 20,
        )
        assert isinstance(tail, Chunk) and tail.data == more
        assert _still_holds(fd, tail, head.fingerprint) is None

        def rewrite(data: bytes) -> None:  # truncate and write in place, from another process
            code = (
                "import sys; f = open(sys.argv[1], 'r+b'); f.truncate(0); "
                "f.write(sys.argv[2].encode()); f.close()"
            )
            subprocess.run([sys.executable, "-c", code, str(path), data.decode()], check=True)

        rewrite((first + more).replace(b'"more": true', b'"more": 1234'))  # the lines read changed
        assert isinstance(_still_holds(fd, tail, head.fingerprint), str)
        rewrite(first.replace(b'"v": 1', b'"v": 2') + more)  # what was mirrored before them changed
        verdict = _still_holds(fd, tail, head.fingerprint)
        assert isinstance(verdict, Mismatch) and "while it was being read" in verdict.reason
    finally:
        os.close(fd)


def test_daemon_follows_a_file_rewritten_in_a_loop(tmp_path: Path) -> None:
    """The daemon follows a session that another process keeps rewriting: every generation in the
    bucket is a prefix of one version as written, valid JSON throughout, none mixed; the last one
    equals the file when the writer stops."""
    bucket = f"file://{tmp_path / 'bucket'}"
    env = daemon_env(tmp_path, bucket, {"TRACEMIRROR_FLUSH_INTERVAL": "0.05"})
    s = make_session(Path(env["HOME"]), "claude-code", "s-rewritten")
    s.path.write_bytes(b"")
    with Daemon(env, tmp_path / "daemon.log") as d:
        time.sleep(1.0)
        writer = subprocess.run(
            [sys.executable, str(REWRITER), str(s.path), "5"], timeout=60, check=True, capture_output=True
        )
        last = int(writer.stdout)
        final = complete_lines(s.path)

        def caught_up() -> bool:
            return max(mirrored(bucket, "s-rewritten").items(), default=(0, b""))[1] == final

        wait_for(caught_up, 30, "catch-up")
        generations = mirrored(bucket, "s-rewritten")
        assert d.alive()
        assert d.stop() == 0
    assert last in check_generations(generations, tight=False)
    assert len(generations) >= 3, "the rewrites were seen as new generations"


# ---------- every long-lived task supervised ----------

FAULTY_DAEMON = """
import sys

from tracemirrord import layout

real = layout.agent_key
calls = 0


def refused_twice(project, agent_id):
    # the heartbeat's key refused by its first two runs (as a store or the layout would refuse it),
    # outside the heartbeat's own error handling: only the supervisor can keep the daemon up
    global calls
    calls += 1
    if calls <= 2:
        raise layout.LayoutError(f"injected fault {calls}: agents key refused")
    return real(project, agent_id)


layout.agent_key = refused_twice
from tracemirrord.__main__ import main  # noqa: E402

sys.exit(main([]))
"""


def test_a_failing_heartbeat_is_restarted_and_the_daemon_keeps_mirroring(tmp_path: Path) -> None:
    """The heartbeat task raising (twice) is logged, counted and restarted; the daemon stays up, keeps
    mirroring, and the heartbeat is written once the fault is gone. (It used to take the daemon down.)"""
    bucket_dir = tmp_path / "bucket"
    bucket = f"file://{bucket_dir}"
    env = daemon_env(tmp_path, bucket, {"TRACEMIRROR_HEARTBEAT_INTERVAL": "1s"})
    s = make_session(Path(env["HOME"]), "claude-code", "s-beating")
    s.path.write_bytes(lines_for("s-beating", 0, 4))
    script = tmp_path / "faulty_daemon.py"
    script.write_text(FAULTY_DAEMON)
    log_path = tmp_path / "daemon.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=log, stderr=log)
    try:
        heartbeat = bucket_dir / "default" / "agents" / "tester@host.json"
        wait_for(heartbeat.exists, 30, "the heartbeat after the faults")
        assert proc.poll() is None, log_path.read_text()
        with s.path.open("ab") as f:
            f.write(lines_for("s-beating", 4, 5))
        wait_for(lambda: mirrored(bucket, "s-beating") == {0: s.path.read_bytes()}, 20, "mirroring goes on")
        status = ctl_status(env)
        assert status["counters"]["errors"].get("task") == 2, status["counters"]
        text = log_path.read_text()
        events = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
        failed = [e for e in events if e.get("event") == "task failed; restarting"]
        assert [e["task"] for e in failed] == ["heartbeat", "heartbeat"]
        assert "injected fault 1" in failed[0]["error"] and "exception" in failed[0]
        assert json.loads(heartbeat.read_bytes())["status"] == "running"
        proc.send_signal(15)
        assert proc.wait(30) == 0
        assert json.loads(heartbeat.read_bytes())["status"] == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_hermes_profile_swapped_for_a_symlink_is_never_read(tmp_path: Path) -> None:
    """SQLite sources too: a hermes profile directory moved out of the root and linked back (its
    database keeps its inode) is refused; rows added to it afterwards never reach the bucket."""
    from hermes_writer import add_session, connect, create_db, insert, message

    bucket_dir = tmp_path / "bucket"
    env = daemon_env(tmp_path, f"file://{bucket_dir}", {"TRACEMIRROR_HARNESSES": "hermes"})
    profile = Path(env["HOME"]) / ".hermes" / "profiles" / "work"
    db = profile / "state.db"
    create_db(db)
    rng = random.Random(3)
    conn = connect(db)
    add_session(conn, "s1")
    for i in range(5):
        insert(conn, message("s1", i, rng))
    conn.close()
    part_dir = bucket_dir / "default" / "sessions" / "hermes" / "work__s1"
    with Daemon(env, tmp_path / "daemon.log") as d:
        wait_for(lambda: any(part_dir.glob("part-*.jsonl")), 20, "the first rows mirrored")
        outside = tmp_path / "outside-work"
        profile.rename(outside)
        profile.symlink_to(outside)
        conn = connect(outside / "state.db")
        for i in range(5, 10):
            values = message("s1", i, rng)
            values["content"] = MARKER.decode()
            insert(conn, values)
        conn.close()
        wait_for(lambda: "is a symlink; not followed" in d.log(), 20, "the refusal in the log")
        time.sleep(1.5)
        assert d.alive()
        assert MARKER not in bucket_bytes(bucket_dir)
        assert d.stop() == 0
    assert MARKER not in bucket_bytes(bucket_dir)


def test_an_opencode_database_swapped_for_a_symlink_is_never_read(tmp_path: Path) -> None:
    """The database in the data dir moved elsewhere and linked back (same inode, open connection):
    refused; a message written to it afterwards never reaches the bucket."""
    from fixture_opencode import add_session, connect, make_db, put_message

    bucket_dir = tmp_path / "bucket"
    env = daemon_env(tmp_path, f"file://{bucket_dir}", {"TRACEMIRROR_HARNESSES": "opencode"})
    db_path = Path(env["XDG_DATA_HOME"]) / "opencode" / "opencode.db"
    db = make_db(db_path)
    add_session(db, "ses_swapped")
    put_message(db, "msg_1", "ses_swapped", 1_790_000_000_000, {"role": "user", "text": "inside"})
    db.close()
    part_dir = bucket_dir / "default" / "sessions" / "opencode" / "ses_swapped"
    with Daemon(env, tmp_path / "daemon.log") as d:
        wait_for(lambda: any(part_dir.glob("part-*.jsonl")), 20, "the first message mirrored")
        outside = tmp_path / "outside.db"
        for suffix in ("", "-wal", "-shm"):  # the database moves whole ...
            db_path.with_name(db_path.name + suffix).rename(outside.with_name(outside.name + suffix))
        db_path.symlink_to(outside)  # ... and a link to it takes its place
        db = connect(outside)
        put_message(db, "msg_2", "ses_swapped", 1_790_000_001_000, {"role": "user", "text": MARKER.decode()})
        db.close()
        wait_for(lambda: "is a symlink; not followed" in d.log(), 20, "the refusal in the log")
        time.sleep(1.5)
        assert d.alive()
        assert MARKER not in bucket_bytes(bucket_dir)
        assert d.stop() == 0
    assert MARKER not in bucket_bytes(bucket_dir)
