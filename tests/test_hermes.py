"""hermes: the Source and Harness against real WAL databases, then the real daemon end to end.

Expected rows come from tests/hermes_writer.py, which records what it inserted; nothing expected is
computed by tracemirrord's code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from daemon import Daemon, daemon_env, read_back, status_json, wait_for
from hermes_writer import add_session, connect, create_db, delete_session, insert, message

from tracemirrord.harnesses.base import HarnessHooks, UnknownSource, UnsafeSessionId
from tracemirrord.harnesses.hermes import Hermes, HermesSource
from tracemirrord.model import SessionKey
from tracemirrord.source import START, Discontinuity, Position, Records, UnknownFormat

pytestmark = pytest.mark.anyio
WRITER = Path(__file__).with_name("hermes_writer.py")
MAX_LINE = 8 * 2**20


class Cursors:
    """The shared-cursor store as a plain dict (the checkpoint's role in the daemon)."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values = dict(values or {})

    async def load(self, source: str) -> str | None:
        return self.values.get(source)

    async def save(self, source: str, value: str) -> None:
        self.values[source] = value


def make_db(home: Path, sessions: list[str], rows: int, seed: int = 1) -> tuple[Path, dict[str, list[dict]]]:
    """A state.db with ``rows`` messages interleaved over ``sessions``; expected objects by session."""
    db = home / ".hermes" / "state.db"
    create_db(db)
    expected: dict[str, list[dict]] = {sid: [] for sid in sessions}
    conn = connect(db)
    for sid in sessions:
        add_session(conn, sid, title=f"title of {sid}")
    add_rows(conn, sessions, rows, expected, seed)
    conn.close()
    return db, expected


def add_rows(
    conn: Any, sessions: list[str], rows: int, expected: dict[str, list[dict]], seed: int = 2
) -> None:
    rng = random.Random(seed)
    for k in range(rows):
        sid = sessions[k % len(sessions)]
        expected[sid].append(insert(conn, message(sid, len(expected[sid]), rng)))


async def read_all(src: HermesSource, pos: Position, max_bytes: int = 4096) -> tuple[list[dict], Position]:
    """Read until nothing is left; every part's lines parsed, the final position."""
    out: list[dict] = []
    while True:
        got = await src.read(pos, max_bytes)
        assert isinstance(got, Records), got
        if got.empty:
            return out, pos
        assert got.start == pos and got.end.cursor > pos.cursor
        out.extend(json.loads(line) for line in got.data.splitlines())
        src.committed(got.end)
        pos = got.end


async def until(predicate: Callable[[], bool], seconds: float) -> None:
    with anyio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110 - polling a file or another task's list
            await anyio.sleep(0.05)


def sources(harness: Hermes, discovery: Any) -> dict[str, HermesSource]:
    opened = {}
    for ref in discovery.sessions:
        src = harness.open_source(ref, max_line_bytes=MAX_LINE)
        assert isinstance(src, HermesSource)
        opened[ref.session_id] = src
    return opened


def sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


# ---------- the source against a real database ----------


async def test_rows_split_by_session_in_rowid_order_with_json_content_decoded(tmp_path: Path) -> None:
    """Without watch (per-session queries) and with the shared reader: each session gets its rows."""
    sessions = ["20260501_080000_aaaaaa", "20260501_080001_bbbbbb", "20260501_080002_cccccc"]
    db, expected = make_db(tmp_path, sessions, 60)
    assert any(isinstance(row["content"], list) for rows in expected.values() for row in rows)
    for shared in (False, True):
        harness = Hermes()
        found = await harness.discover(harness.default_roots({}, tmp_path))
        assert sorted(ref.session_id for ref in found.sessions) == sessions and not found.refused
        opened = sources(harness, found)
        if shared:
            harness.readers[db].enable_shared(0)
        for sid, src in opened.items():
            got, pos = await read_all(src, START)
            assert got == expected[sid]
            assert pos.cursor == expected[sid][-1]["id"] and pos.check and ";" not in pos.check
        await harness.close()


async def test_reread_after_a_position_adds_nothing(tmp_path: Path) -> None:
    """A fresh harness (a restart) reading after a mirrored position returns only rows after it."""
    sid = "20260501_080000_aaaaaa"
    db, expected = make_db(tmp_path, [sid, "20260501_090000_other0"], 20)
    harness = Hermes()
    src = sources(harness, await harness.discover([tmp_path / ".hermes"]))[sid]
    _, pos = await read_all(src, START)
    await harness.close()

    conn = connect(db)
    add_rows(conn, [sid, "20260501_090000_other0"], 6, expected, seed=9)
    conn.close()
    again = Hermes()
    src = sources(again, await again.discover([tmp_path / ".hermes"]))[sid]
    again.readers[db].enable_shared(0)  # the shared read starts below the position: still nothing twice
    got, end = await read_all(src, pos)
    assert got == expected[sid][-3:]
    assert await src.read(end, 4096) == Records(end, end, b"", 0)
    await again.close()


async def test_replaced_database_is_a_discontinuity(tmp_path: Path) -> None:
    """A new state.db at the same path (same session id, even more rows) starts a new generation."""
    sid = "20260501_080000_aaaaaa"
    db, _ = make_db(tmp_path, [sid], 5)
    harness = Hermes()
    roots = [tmp_path / ".hermes"]
    src = sources(harness, await harness.discover(roots))[sid]
    _, pos = await read_all(src, START)

    fresh, expected = make_db(tmp_path / "new", [sid], 9, seed=5)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{fresh}{suffix}", f"{db}{suffix}")
    await harness.discover(roots)
    assert isinstance(await src.read(pos, 4096), Discontinuity)
    got, _ = await read_all(src, Position(pos.generation + 1))
    assert got == expected[sid]
    await harness.close()


async def test_unknown_schema_is_refused_by_name_and_never_crashes(tmp_path: Path) -> None:
    """A state.db without hermes' columns and a profile file that is no database are listed as refused."""
    home = tmp_path / ".hermes"
    home.mkdir()
    import sqlite3

    conn = sqlite3.connect(home / "state.db")
    conn.executescript(
        "CREATE TABLE sessions (id TEXT PRIMARY KEY); CREATE TABLE messages (id INTEGER, body TEXT);"
    )
    conn.close()
    (home / "profiles" / "work").mkdir(parents=True)
    (home / "profiles" / "work" / "state.db").write_bytes(b"this is not sqlite" * 100)
    harness = Hermes()
    found = await harness.discover([home])
    assert not found.sessions
    assert {r.path for r in found.refused} == {home / "state.db", home / "profiles" / "work" / "state.db"}
    assert all(isinstance(r, UnknownSource) for r in found.refused)
    assert "session_id" in str(next(r for r in found.refused if r.path == home / "state.db"))

    # a database followed and then replaced by one of an unknown shape: UnknownFormat from read
    db, _ = make_db(tmp_path / "ok", ["s1"], 3)
    ok = Hermes()
    src = sources(ok, await ok.discover([db.parent]))["s1"]
    os.replace(home / "state.db", db)
    with pytest.raises(UnknownFormat, match="session_id"):
        await src.read(START, 4096)
    assert isinstance((await ok.discover([db.parent])).refused[0], UnknownSource)
    await harness.close()
    await ok.close()


async def test_profiles_unsafe_ids_and_the_same_discovery_while_unchanged(tmp_path: Path) -> None:
    home = tmp_path / ".hermes"
    make_db(tmp_path, ["default1"], 1)
    profile_db = home / "profiles" / "work" / "state.db"
    create_db(profile_db)
    conn = connect(profile_db)
    add_session(conn, "p1")
    add_session(conn, "bad/id")
    conn.close()
    (home / "profiles" / ".deleted").mkdir()
    harness = Hermes()
    first = await harness.discover([home])
    assert sorted(r.session_id for r in first.sessions) == ["default1", "work__p1"]
    assert [r.session_id for r in first.refused if isinstance(r, UnsafeSessionId)] == ["work__bad/id"]
    assert await harness.discover([home]) is first
    assert harness.discover_blocking([home]).sessions == first.sessions
    conn = connect(profile_db)
    add_session(conn, "p2")
    conn.close()
    assert "work__p2" in {r.session_id for r in (await harness.discover([home])).sessions}
    await harness.close()


async def test_describe_probe_and_settled_at(tmp_path: Path) -> None:
    sid = "20260501_080000_aaaaaa"
    db, expected = make_db(tmp_path, [sid], 4)
    harness = Hermes()
    src = sources(harness, await harness.discover([db.parent]))[sid]
    info = src.describe([])
    assert (info.model, info.title, info.cwd, info.git_branch) == (
        "hermes-4-405b",
        f"title of {sid}",
        "/home/dev/proj",
        "main",
    )
    assert info.started_at == "2026-09-21T14:13:20.000Z" and info.ended_at is None
    assert info.extra["source"] == "cli"
    assert src.settled_at(START) is None  # rows are there to read
    _, pos = await read_all(src, START)
    settled = src.settled_at(pos)
    assert settled is not None and settled.mtime == pytest.approx(expected[sid][-1]["timestamp"])
    harness.watching = True  # what probe() says with watch running must match the parked token
    assert src.probe() == settled
    conn = connect(db)
    conn.execute("UPDATE sessions SET ended_at = 1790000100.5 WHERE id = ?", (sid,))
    delete_session(conn, sid)
    conn.close()
    await harness.discover([db.parent])
    assert src.probe() is None and await src.read(pos, 4096) is None
    await harness.close()


async def test_our_reads_leave_the_database_bytes_unchanged(tmp_path: Path) -> None:
    """Discovery, shared and per-session reads and closing change neither state.db nor its -wal."""
    sessions = ["a1", "b2"]
    db, expected = make_db(tmp_path, sessions, 10)
    writer = connect(db)  # the agent keeps its connection open (its close would checkpoint)
    add_rows(writer, sessions, 10, expected, seed=3)
    wal = Path(f"{db}-wal")
    before = (sha(db), sha(wal))
    assert before[1] is not None
    harness = Hermes()
    opened = sources(harness, await harness.discover([db.parent]))
    hooks = HarnessHooks(Cursors(), lambda sid: None)
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(harness.watch, [db.parent], hooks, stopping)
        await anyio.sleep(0.5)
        for sid, src in opened.items():
            got, _ = await read_all(src, START)
            assert got == expected[sid]
        stopping.set()
    await harness.close()
    assert (sha(db), sha(wal)) == before
    writer.close()


async def test_shared_reader_wakes_sessions_and_saves_the_global_durable_cursor(tmp_path: Path) -> None:
    """One watch: new rows wake their sessions; the saved cursor is what every session made durable."""
    sessions = ["s1", "s2", "s3"]
    db, expected = make_db(tmp_path, sessions, 9)
    harness = Hermes()
    opened = sources(harness, await harness.discover([db.parent]))
    woken: list[str] = []
    cursors = Cursors()
    stopping = anyio.Event()
    positions = dict.fromkeys(sessions, START)
    async with anyio.create_task_group() as tg:
        tg.start_soon(harness.watch, [db.parent], HarnessHooks(cursors, woken.append), stopping)
        await anyio.sleep(0.4)
        woken.clear()  # only the new rows' wake-ups count
        conn = connect(db)
        add_rows(conn, sessions, 6, expected, seed=4)  # one commit per row: wakes may come between
        conn.close()
        await until(lambda: {"s1", "s2", "s3"} <= set(woken), 5)
        with anyio.fail_after(5):
            for sid in ("s1", "s2"):  # s3 is not read: the global cursor must stop below its first row
                while positions[sid].cursor < expected[sid][-1]["id"]:
                    _, positions[sid] = await read_all(opened[sid], positions[sid])
                    await anyio.sleep(0.05)
        await anyio.sleep(1.5)
        assert int(cursors.values[str(db)]) == expected["s3"][0]["id"] - 1
        _, positions["s3"] = await read_all(opened["s3"], START)
        await until(lambda: cursors.values[str(db)] == str(expected["s3"][-1]["id"]), 5)
        stopping.set()
    await harness.close()

    # a restart from the saved cursor: positions below it still get their rows, once
    conn = connect(db)
    add_rows(conn, sessions, 3, expected, seed=8)
    conn.close()
    again = Hermes()
    opened = sources(again, await again.discover([db.parent]))
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            again.watch, [db.parent], HarnessHooks(Cursors(cursors.values), lambda s: None), stopping
        )
        await anyio.sleep(0.4)
        got, _ = await read_all(opened["s1"], START)
        assert got == expected["s1"]
        got, _ = await read_all(opened["s2"], positions["s2"])
        assert got == expected["s2"][-1:]
        stopping.set()
    await again.close()


async def test_a_small_buffer_cap_still_delivers_every_row(tmp_path: Path) -> None:
    """Read-ahead stops at the cap; sessions nobody reads are evicted; the others get everything."""
    sessions = [f"s{i}" for i in range(5)]
    db, expected = make_db(tmp_path, sessions, 500)
    harness = Hermes()
    opened = sources(harness, await harness.discover([db.parent]))
    reader = harness.readers[db]
    reader.buffer_cap = 8000
    reader.enable_shared(0)
    st = reader.stat(0)
    assert st is not None
    reader.refresh(st)
    assert reader.more and reader.buffered < 8000 + 5 * 2000
    for sid in sessions[:3]:
        got, _ = await read_all(opened[sid], START, max_bytes=3000)
        assert got == expected[sid]
    await harness.close()


def spawn_writer(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(WRITER), "--spec", json.dumps(spec)])


def logged(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line)["row"] for line in log.read_text().splitlines() if line.startswith("{")]


async def test_a_locked_database_delays_but_loses_nothing(tmp_path: Path) -> None:
    """A writer process holding the database exclusively: reads wait (nothing, no error), then catch up.

    Another writer process queues behind the lock; every row of both arrives once, in order.
    """
    sid = "s1"
    db, expected = make_db(tmp_path, [sid], 3)
    harness = Hermes()
    roots = [db.parent]
    src = sources(harness, await harness.discover(roots))[sid]
    got, pos = await read_all(src, START)
    assert got == expected[sid]
    harness.readers[db].close()  # idle: the watch closes it (an open WAL connection blocks exclusive mode)
    lock_log, write_log = tmp_path / "lock.log", tmp_path / "rows.log"
    holder = spawn_writer(
        {"db": str(db), "log": str(lock_log), "sessions": [sid], "rows": 4, "hold_lock_s": 3}
    )
    await until(lambda: "locked" in (lock_log.read_text() if lock_log.exists() else ""), 10)
    writer = spawn_writer(
        {"db": str(db), "log": str(write_log), "sessions": [sid], "rows": 5, "rate": 50, "seed": 7}
    )
    probe_before = src.probe()
    during = await src.read(pos, 4096)
    assert isinstance(during, Records) and during.empty
    assert src.probe() != probe_before  # the follower is told to read again
    assert (await harness.discover(roots)).sessions  # discovery keeps what it knew
    assert holder.wait(10) == 0 and writer.wait(30) == 0
    got, _ = await read_all(src, pos)
    assert got == logged(lock_log) + logged(write_log) and len(got) == 9
    await harness.close()


# ---------- end to end through the real daemon ----------


def hermes_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    return daemon_env(
        tmp_path,
        f"file://{tmp_path / 'bucket'}",
        {"HERMES_HOME": str(home / ".hermes"), "TRACEMIRROR_HARNESSES": "hermes"},
    )


def copy_of(env: dict[str, str], session_id: str) -> dict[int, list[dict]]:
    """The bucket copy of one session: each generation's lines parsed."""
    try:
        copy = read_back(env["TRACEMIRROR_BUCKET"], SessionKey("hermes", session_id))
    except Exception:
        return {}
    return {g: [json.loads(line) for line in data.splitlines()] for g, data in copy.generations.items()}


def by_session(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["session_id"], []).append(row)
    return out


def test_daemon_kill9_repeatedly_while_a_writer_process_inserts_every_row_exactly_once(
    tmp_path: Path,
) -> None:
    """A separate writer inserts into 5 sessions for 7 s while the daemon is killed -9 three times."""
    env = hermes_env(tmp_path)
    db = Path(env["HERMES_HOME"]) / "state.db"
    create_db(db)
    sessions = [f"20260501_0800{i:02d}_abc{i:03d}" for i in range(5)]
    log = tmp_path / "writer.log"
    writer = spawn_writer(
        {"db": str(db), "log": str(log), "sessions": sessions, "rows": 700, "rate": 100, "batch": 2}
    )
    daemon_log = tmp_path / "daemon.log"
    try:
        for _ in range(3):
            daemon = Daemon(env, daemon_log).start()
            time.sleep(1.2 + random.random())
            daemon.kill9()
        assert writer.wait(30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    expected = by_session(logged(log))
    assert sorted(expected) == sessions and sum(map(len, expected.values())) == 700
    with Daemon(env, daemon_log) as daemon:
        wait_for(lambda: daemon.log().count('"harness started"') == 4, 30, "the last start")
        wait_for(
            lambda: all(copy_of(env, sid) == {0: rows} for sid, rows in expected.items()),
            20,
            "every row of every session once, in rowid order",
        )
        assert daemon.stop() == 0, daemon.log()


def test_daemon_replaced_database_starts_a_new_generation(tmp_path: Path) -> None:
    env = hermes_env(tmp_path)
    db = Path(env["HERMES_HOME"]) / "state.db"
    create_db(db)
    sid = "20260501_080000_aaaaaa"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    spawn_writer({"db": str(db), "log": str(first_log), "sessions": [sid], "rows": 6, "rate": 1000}).wait(30)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: copy_of(env, sid) == {0: logged(first_log)}, 15, "generation 0")
        fresh = tmp_path / "fresh" / "state.db"
        create_db(fresh)
        spawn_writer(
            {"db": str(fresh), "log": str(second_log), "sessions": [sid], "rows": 9, "rate": 1000, "seed": 3}
        ).wait(30)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{fresh}{suffix}", f"{db}{suffix}")
        wait_for(
            lambda: copy_of(env, sid) == {0: logged(first_log), 1: logged(second_log)}, 15, "generation 1"
        )
        assert daemon.stop() == 0, daemon.log()


def test_once_mirrors_every_session_of_every_profile(tmp_path: Path) -> None:
    env = hermes_env(tmp_path)
    home = Path(env["HERMES_HOME"])
    logs = []
    work = home / "profiles" / "work" / "state.db"
    for db, sessions in ((home / "state.db", ["d1", "d2"]), (work, ["w1"])):
        create_db(db)
        log = tmp_path / f"{db.parent.name}.log"
        spec = {"db": str(db), "log": str(log), "sessions": sessions, "rows": 30, "rate": 1000}
        assert spawn_writer(spec).wait(30) == 0
        logs.append((db, log))
    once = [sys.executable, "-m", "tracemirrord", "--once"]
    done = subprocess.run(once, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    for db, log in logs:
        prefix = "work__" if "profiles" in str(db) else ""
        for sid, rows in by_session(logged(log)).items():
            assert copy_of(env, prefix + sid) == {0: rows}


async def test_watch_runs_no_query_while_nothing_changed(tmp_path: Path) -> None:
    """An idle database costs stats only: no statement reaches SQLite until a row is inserted."""
    db, expected = make_db(tmp_path, ["s1"], 3)
    harness = Hermes()
    src = sources(harness, await harness.discover([db.parent]))["s1"]
    woken: list[str] = []
    stopping = anyio.Event()
    statements: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(harness.watch, [db.parent], HarnessHooks(Cursors(), woken.append), stopping)
        await anyio.sleep(0.5)
        got, pos = await read_all(src, START)
        assert got == expected["s1"]
        reader = harness.readers[db]
        assert reader._conn is not None
        for path in (db, db.with_name(db.name + "-wal")):  # last written a minute ago: idle
            os.utime(path, (time.time() - 60, time.time() - 60))
        await anyio.sleep(0.5)  # the watch looks once more at the changed stat, then rests
        reader._conn.set_trace_callback(statements.append)
        await anyio.sleep(1.5)
        assert statements == []
        woken.clear()
        conn = connect(db)
        add_rows(conn, ["s1"], 1, expected, seed=5)
        conn.close()
        await until(lambda: "s1" in woken, 3)
        assert any("FROM messages WHERE id >" in s for s in statements), statements
        got, _ = await read_all(src, pos)
        assert got == expected["s1"][-1:]
        stopping.set()
    await harness.close()


def test_daemon_puts_the_agents_own_session_fields_into_meta_json(tmp_path: Path) -> None:
    """Title and end set on the sessions row after the rows were mirrored reach meta.json, redacted."""
    token = "ghp_" + "Qw3Er5Ty7Ui9Op1As3Df5Gh7Jk9Lz1Xc3Vb5N"  # a GitHub token's shape; not a real one
    env = hermes_env(tmp_path)
    db = Path(env["HERMES_HOME"]) / "state.db"
    create_db(db)
    sid = "20260501_080000_cccccc"
    log = tmp_path / "rows.log"
    spawn_writer({"db": str(db), "log": str(log), "sessions": [sid], "rows": 4, "rate": 1000}).wait(30)
    meta_path = tmp_path / "bucket" / "default" / "sessions" / "hermes" / sid / "meta.json"

    def meta() -> dict[str, Any]:
        return json.loads(meta_path.read_bytes()) if meta_path.exists() else {}

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: copy_of(env, sid) == {0: logged(log)}, 15, "the rows")
        wait_for(lambda: meta().get("cursor") == logged(log)[-1]["id"], 15, "meta.json")
        assert meta()["title"] is None and meta()["ended_at"] is None
        conn = connect(db)
        conn.execute(
            "UPDATE sessions SET ended_at = ?, title = ? WHERE id = ?",
            (1_790_000_500.0, f"rotate {token} today", sid),
        )
        conn.close()
        wait_for(lambda: meta().get("ended_at") == "2026-09-21T14:21:40.000Z", 20, "ended_at in meta.json")
        assert daemon.stop() == 0, daemon.log()
    assert token.encode() not in meta_path.read_bytes()
    doc = meta()
    assert doc["title"] == "rotate [REDACTED:github-token] today"
    assert (doc["model"], doc["cwd"], doc["git_branch"]) == ("hermes-4-405b", "/home/dev/proj", "main")
    assert doc["source_info"]["source"] == "cli"
    assert doc["cursor_unit"] == "rows"
    assert copy_of(env, sid) == {0: logged(log)}, "no row twice, none lost"


async def test_a_read_that_does_the_shared_read_wakes_the_other_sessions(tmp_path: Path) -> None:
    """Whoever reads new rows for everyone (the watch, or a follower's own read) wakes their sessions:
    while the watch runs, followers poll only as a fallback, so a missed wake-up is a 5 s lag."""
    db, expected = make_db(tmp_path, ["s1", "s2"], 4)
    harness = Hermes()
    opened = sources(harness, await harness.discover([db.parent]))
    woken: list[str] = []
    hooks = HarnessHooks(Cursors(), woken.append)
    harness.hooks = hooks
    await harness._start_shared(harness.readers[db], hooks)  # the shared read on, the watch not running
    _, pos = await read_all(opened["s1"], START)
    conn = connect(db)
    add_rows(conn, ["s1", "s2"], 4, expected, seed=9)
    conn.close()
    woken.clear()
    got = await opened["s1"].read(pos, 1 << 20)  # this read does the shared read
    assert isinstance(got, Records) and [json.loads(x) for x in got.data.splitlines()] == expected["s1"][-2:]
    assert woken == ["s2"]
    await harness.close()


async def test_an_idle_database_is_watched_at_the_idle_pace_after_our_first_read(tmp_path: Path) -> None:
    """hermes removes its ``-wal`` when its last connection closes; our read-only connection
    creates an empty one (mtime: now). That file holds no rows: the database, last written two
    hours ago, is watched once a second from the start, not every 0.1 s for five minutes."""
    db, _ = make_db(tmp_path, ["s1", "s2"], 6)
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists()
    then = time.time() - 7200
    os.utime(db, (then, then))
    harness = Hermes()
    src = sources(harness, await harness.discover([db.parent]))["s1"]
    await read_all(src, START)
    assert wal.exists() and wal.stat().st_size == 0 and wal.stat().st_mtime > time.time() - 60
    paces: list[float] = []
    stopping = anyio.Event()

    async def pause(seconds: float, stop: anyio.Event) -> None:
        paces.append(seconds)
        if len(paces) >= 5:
            stop.set()
        await anyio.sleep(0.01)

    with anyio.fail_after(10):
        await harness.watch([db.parent], HarnessHooks(Cursors(), lambda _: None, pause=pause), stopping)
    assert paces == [1.0] * 5
    conn = connect(db)  # a row written now (kept in the WAL while this connection is open) counts
    try:
        add_rows(conn, ["s1"], 1, {"s1": []}, seed=7)
        assert wal.stat().st_size > 0
        paces.clear()
        stopping = anyio.Event()
        with anyio.fail_after(10):
            await harness.watch([db.parent], HarnessHooks(Cursors(), lambda _: None, pause=pause), stopping)
        assert paces[-1] == 0.1
    finally:
        conn.close()
    await harness.close()


async def test_an_idle_database_under_notifications_is_not_scanned_every_tick(tmp_path: Path) -> None:
    """With notifications, a scan tick with nothing reported below the roots since the last scan
    is skipped (it would list the same sessions from the same stat); a session added later is
    still followed within a second, woken through the database watch."""
    from mirror_context import local_context

    from tracemirrord.redact import Redactor
    from tracemirrord.supervisor import HarnessTask

    db, _ = make_db(tmp_path / "home", ["s1", "s2"], 6)
    then = time.time() - 7200
    os.utime(db, (then, then))
    harness = Hermes()
    async with local_context(
        tmp_path,
        redactor=Redactor(enabled=False),
        flush_interval_s=0.2,
        part_max_bytes=1 << 20,
        max_line_bytes=MAX_LINE,
        upload_slots=2,
    ) as ctx:
        task = HarnessTask(harness, [db.parent], ctx, scan_interval_s=0.05)
        scans = 0
        discover = harness.discover

        async def counted(roots: list[Path]) -> Any:
            nonlocal scans
            scans += 1
            return await discover(roots)

        harness.discover = counted  # type: ignore[method-assign]
        stopping = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(task.run, stopping)
                await until(lambda: set(task.followers) == {"s1", "s2"}, 10)
                assert task.watcher is not None
                await anyio.sleep(1.5)  # the first reads (their empty -wal and -shm) are notified once
                scans = 0
                await anyio.sleep(1.0)  # twenty scan ticks
                assert scans <= 1, f"{scans} scans of an idle database in 1 s"
                conn = connect(db)
                add_session(conn, "s3")
                insert(conn, message("s3", 0, random.Random(3)))
                conn.close()
                added = time.monotonic()
                await until(lambda: "s3" in task.followers, 10)
                assert time.monotonic() - added < 1.0
                stopping.set()
        finally:
            await harness.close()


async def test_an_unchanged_database_is_discovered_again_without_a_worker_thread(tmp_path: Path) -> None:
    """A scan tick over unchanged databases (polling: every scan interval) is a few stats in the
    event loop, no worker-thread scan; a new session, a new profile and a removed database are each
    found by the next discovery."""
    home = tmp_path / ".hermes"
    db, _ = make_db(tmp_path, ["d1"], 2)
    (home / "profiles").mkdir()
    then = time.time() - 7200
    for path in (db, home / "profiles"):
        os.utime(path, (then, then))
    harness = Hermes()
    scans = 0
    scan = harness.scan

    def counted(roots: list[Path]) -> Any:
        nonlocal scans
        scans += 1
        return scan(roots)

    harness.scan = counted  # type: ignore[method-assign]

    async def ids() -> list[str]:
        return sorted(r.session_id for r in (await harness.discover([home])).sessions)

    first = await harness.discover([home])
    # the listing's connection made the empty -wal and -shm: one more scan sees that stat
    assert await harness.discover([home]) is first
    scans = 0
    for _ in range(5):
        assert await harness.discover([home]) is first
    assert scans == 0
    conn = connect(db)
    add_session(conn, "d2")
    conn.close()
    assert await ids() == ["d1", "d2"]
    profile_db = home / "profiles" / "work" / "state.db"
    create_db(profile_db)
    conn = connect(profile_db)
    add_session(conn, "p1")
    conn.close()
    assert await ids() == ["d1", "d2", "work__p1"]
    profile_db.unlink()
    assert await ids() == ["d1", "d2"]
    await harness.close()


def main_thread_wakeups(pid: int) -> int:
    """How often the process's main thread (the event loop) has blocked and been woken so far."""
    for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify and /proc are Linux only")
def test_an_idle_daemon_wakes_rarely(tmp_path: Path) -> None:
    """One idle database, its sessions mirrored and parked, notifications on, not under systemd:
    the event loop wakes for the scan tick (2 s) and the database watch's fallback look (5 s) and
    little else. It woke 2.3 times a second before: a worker-thread scan per tick (two wake-ups)
    and a systemd-notify timer with nobody to notify (bench_idle.py: 0.05% -> 0.03% of a core)."""
    env = hermes_env(tmp_path)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.update(TRACEMIRROR_SCAN_INTERVAL="2s", TRACEMIRROR_LOG_LEVEL="info")
    db = Path(env["HERMES_HOME"]) / "state.db"
    create_db(db)
    then = time.time() - 7200  # every row and the file last written two hours ago: parked at once
    conn = connect(db)
    rng = random.Random(11)
    for sid in ("s1", "s2"):
        add_session(conn, sid, started_at=then - 100)
        for i in range(3):
            insert(conn, {**message(sid, i, rng), "timestamp": then + i})
    conn.close()
    os.utime(db, (then, then))

    def parked() -> bool:
        harnesses = status_json(env).get("harnesses", [])
        return [(h["sessions"], h["parked"]) for h in harnesses] == [(2, 2)]

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        assert daemon.proc is not None
        wait_for(parked, 30, "both sessions mirrored and parked")
        time.sleep(11)  # the worker threads of the first mirror retire (anyio: after 10 s idle)
        before = main_thread_wakeups(daemon.proc.pid)
        time.sleep(10)
        woken = main_thread_wakeups(daemon.proc.pid) - before
        # about 8 (a 2 s scan tick, a 5 s fallback look); room for a heartbeat or a rescan
        assert woken <= 16, f"the idle event loop woke {woken} times in 10 s"
        assert daemon.stop() == 0
