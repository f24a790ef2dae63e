"""opencode: its SQLite database (rows updated in place) and its older JSON store, on real files.

Unit tests drive the harness and its sources directly; the daemon tests (at the end) run
``tracemirrord`` as a subprocess with a separate writer process (tests/opencode_writer.py)
updating rows in place while it mirrors.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from daemon import Daemon, daemon_env, read_back, wait_for
from fixture_opencode import BASE_MS, add_session, connect, make_db, put_message, put_part

from tracemirrord.harnesses.base import HarnessHooks, UnknownSource, UnsafeSessionId
from tracemirrord.harnesses.opencode import Opencode
from tracemirrord.model import SessionKey
from tracemirrord.source import START, Discontinuity, Position, Records, UnknownFormat

SID = "ses_0001aaaaaaaaaaaaaaaaaaaa"
BIG = 1 << 20


def lines_of(rec: Records | Discontinuity | None) -> list[dict[str, Any]]:
    assert isinstance(rec, Records), rec
    return [json.loads(x) for x in rec.data.splitlines()]


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data" / "opencode"


@pytest.fixture
def db(root: Path) -> sqlite3.Connection:
    conn = make_db(root / "opencode.db")
    add_session(conn, SID)
    yield conn
    conn.close()


def open_db_source(root: Path, sid: str = SID):
    harness = Opencode()
    disc = harness.discover_blocking([root])
    ref = next(r for r in disc.sessions if r.session_id == sid)
    return harness, harness.open_source(ref, max_line_bytes=BIG)


async def read_all(source, after: Position, max_bytes: int = BIG) -> tuple[list[dict], Position]:
    out: list[dict] = []
    while True:
        rec = await source.read(after, max_bytes)
        assert isinstance(rec, Records), rec
        if rec.empty:
            return out, after
        out += lines_of(rec)
        after = rec.end


async def until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.05)


# --- SQLite source ---


@pytest.mark.anyio
async def test_db_row_versions_each_appended_once_in_order(root: Path, db: sqlite3.Connection) -> None:
    """Every version a read sees is appended once; a fresh source resuming from a position adds nothing."""
    put_message(db, "msg_1", SID, BASE_MS + 1, {"role": "user", "time": {"created": BASE_MS + 1}})
    put_part(db, "prt_1", "msg_1", SID, BASE_MS + 2, {"type": "text", "text": "v0"})
    _, source = open_db_source(root)
    first, pos = await read_all(source, START)
    assert [(x["type"], x["id"], x["data"].get("text")) for x in first] == [
        ("message", "msg_1", None),
        ("part", "prt_1", "v0"),
    ]
    assert first[1] == {
        "type": "part",
        "id": "prt_1",
        "session_id": SID,
        "message_id": "msg_1",
        "time_created": BASE_MS + 2,
        "time_updated": BASE_MS + 2,
        "data": {"type": "text", "text": "v0"},
    }
    assert pos.cursor == 2 and pos.check is not None and ";" not in pos.check and len(pos.check) < 100
    seen = []
    for i in range(1, 6):
        put_part(db, "prt_1", "msg_1", SID, BASE_MS + 2 + i, {"type": "text", "text": f"v{i}"})
        got, pos = await read_all(source, pos)
        seen += [x["data"]["text"] for x in got]
    assert seen == ["v1", "v2", "v3", "v4", "v5"]
    assert pos.cursor == 7
    _, fresh = open_db_source(root)
    assert (await fresh.read(pos, BIG)).empty  # re-read from the bucket's position: nothing again
    mid_pos = None
    rec = await fresh.read(START, 1)  # one record per read: the same sequence
    items = lines_of(rec)
    mid_pos = rec.end
    rest, _ = await read_all(fresh, mid_pos, 1)
    assert [x["data"].get("text") for x in items + rest] == [None, "v5"]


@pytest.mark.anyio
async def test_db_same_millisecond_rewrites(root: Path, db: sqlite3.Connection) -> None:
    """Two writes of a row in one millisecond: the marked row is caught even from the bucket; others
    only while the daemon runs (the documented tie limit)."""
    t = now_ms()
    put_message(db, "msg_1", SID, t, {"role": "assistant"})
    put_part(db, "prt_1", "msg_1", SID, t + 1, {"type": "text", "text": "a"})
    put_part(db, "prt_2", "msg_1", SID, t + 2, {"type": "text", "text": "b"})
    _, source = open_db_source(root)
    _, pos = await read_all(source, START)
    put_part(db, "prt_2", "msg_1", SID, t + 2, {"type": "text", "text": "b2"})  # the marked row, same ms
    _, fresh = open_db_source(root)
    assert [x["data"]["text"] for x in (await read_all(fresh, pos))[0]] == ["b2"]
    got, pos = await read_all(source, pos)
    assert [x["data"]["text"] for x in got] == ["b2"]
    put_part(db, "prt_1", "msg_1", SID, t + 1, {"type": "text", "text": "a2"})  # below the mark, same ms
    got, pos2 = await read_all(source, pos)
    assert [x["data"]["text"] for x in got] == ["a2"]
    assert pos2.cursor == pos.cursor + 1
    _, fresh = open_db_source(root)
    assert (await fresh.read(pos, BIG)).empty  # the limit: unseen from the bucket's position alone
    assert (await source.read(pos2, BIG)).empty


@pytest.mark.anyio
async def test_db_late_commit_with_older_timestamp(root: Path, db: sqlite3.Connection) -> None:
    t = now_ms()
    put_message(db, "msg_1", SID, t, {"role": "assistant"})
    put_part(db, "prt_2", "msg_1", SID, t + 50, {"type": "text", "text": "later"})
    _, source = open_db_source(root)
    _, pos = await read_all(source, START)
    put_part(db, "prt_1", "msg_1", SID, t + 10, {"type": "text", "text": "committed late"})
    got, _ = await read_all(source, pos)
    assert got == []  # a row never seen and below the mark: not known to be new (documented)
    put_part(db, "prt_2", "msg_1", SID, t + 40, {"type": "text", "text": "rewound"})  # seen row, older t
    got, _ = await read_all(source, pos)
    assert [x["data"]["text"] for x in got] == ["rewound"]


@pytest.mark.anyio
async def test_db_replaced_is_a_discontinuity_and_gone_is_none(root: Path, db: sqlite3.Connection) -> None:
    put_message(db, "msg_1", SID, BASE_MS, {"role": "user"})
    harness, source = open_db_source(root)
    _, pos = await read_all(source, START)
    db.close()
    path = root / "opencode.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)  # noqa: ASYNC240
    conn = make_db(path)
    add_session(conn, SID)
    put_message(conn, "msg_1", SID, BASE_MS, {"role": "user"})
    conn.close()
    assert isinstance(await source.read(pos, BIG), Discontinuity)
    assert isinstance(await source.read(Position(0, 3, "garbage"), BIG), Discontinuity)
    assert len(lines_of(await source.read(Position(1), BIG))) == 1
    path.unlink()
    assert source.probe() is None and await source.read(pos, BIG) is None
    await harness.close()


@pytest.mark.anyio
async def test_db_describe_and_session_message(root: Path, db: sqlite3.Connection) -> None:
    put_message(
        db, "msg_1", SID, BASE_MS + 5, {"role": "user", "model": {"providerID": "anthropic", "modelID": "m1"}}
    )
    db.execute(
        "INSERT INTO session_message VALUES ('sm_1', ?, 'compaction', ?, ?, '{\"n\": 1}')",
        (SID, BASE_MS, BASE_MS),
    )
    _, source = open_db_source(root)
    rec = await source.read(START, BIG)
    got = lines_of(rec)
    assert [x["type"] for x in got] == ["session_message", "message"]
    assert got[0]["session_message_type"] == "compaction"
    info = source.describe(rec.data.splitlines())
    assert info.cwd == "/home/dev/proj" and info.title == "Fix the bug" and info.agent_version == "1.2.3"
    assert info.model == "anthropic/m1"
    assert info.started_at == time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(BASE_MS / 1000))


@pytest.mark.anyio
async def test_db_watch_wakes_changed_sessions_and_probe_follows_it(
    root: Path, db: sqlite3.Connection
) -> None:
    other = "ses_0002bbbbbbbbbbbbbbbbbbbb"
    add_session(db, other)
    put_message(db, "msg_1", SID, BASE_MS, {"role": "user"})
    put_message(db, "msg_2", other, BASE_MS, {"role": "user"})
    harness = Opencode()
    disc = await harness.discover([root])
    source = harness.open_source(next(r for r in disc.sessions if r.session_id == SID), max_line_bytes=BIG)
    woken: list[str] = []
    stopping = anyio.Event()

    class Cursors:
        async def load(self, source: str) -> str | None:
            return None

        async def save(self, source: str, value: str) -> None:
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(harness.watch, [root], HarnessHooks(Cursors(), woken.append), stopping)
        await until(lambda: source.probe().token[0] == "w")
        before = source.probe()
        put_part(db, "prt_9", "msg_2", other, BASE_MS + 9, {"type": "text", "text": "x"})
        await until(lambda: other in woken)
        assert SID not in woken and source.probe() == before  # an unchanged session is not disturbed
        put_part(db, "prt_1", "msg_1", SID, BASE_MS + 10, {"type": "text", "text": "y"})
        await until(lambda: SID in woken)
        assert source.probe() != before and source.probe().mtime == (BASE_MS + 10) / 1000
        stopping.set()
    assert source.probe().token[0] == "s"
    await harness.close()


# --- discovery ---


def write_json(path: Path, doc: Any) -> None:
    """As opencode's Storage.write: pretty-printed, temp file and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".oc-{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)


def store_session(root: Path, sid: str, project: str = "prj_1") -> Path:
    path = root / "storage" / "session" / project / f"{sid}.json"
    write_json(
        path,
        {
            "id": sid,
            "projectID": project,
            "directory": "/home/dev/old",
            "title": "Old one",
            "version": "0.9.1",
            "time": {"created": BASE_MS, "updated": BASE_MS},
        },
    )
    return path


def test_discover_both_stores_once_unknown_schema_and_same_object(root: Path, db: sqlite3.Connection) -> None:
    store_session(root, SID)  # migrated: also in the database
    old = "ses_0003cccccccccccccccccccc"
    store_session(root, old)
    store_session(root, "weird")
    broken = root / "opencode-dev.db"
    conn = sqlite3.connect(broken)
    conn.execute("CREATE TABLE session (id text)")
    conn.execute("CREATE TABLE message (id text)")
    conn.close()
    (root / "opencode-junk.db").write_bytes(b"not a database at all" * 100)
    harness = Opencode()
    disc = harness.discover_blocking([root])
    refs = {r.session_id: r.path for r in disc.sessions}
    assert refs == {SID: root / "opencode.db", old: root / "storage" / "session" / "prj_1" / f"{old}.json"}
    reasons = {r.path.name: str(r) for r in disc.refused}
    assert isinstance(next(r for r in disc.refused if r.path == broken), UnknownSource)
    assert "missing" in reasons["opencode-dev.db"] and "part(" in reasons["opencode-dev.db"]
    assert "opencode-junk.db" in reasons and "weird.json" in reasons
    again = Opencode()
    first = again._discover([root])
    assert again._discover([root]) is first  # nothing changed: the same object
    put_message(db, "msg_1", SID, BASE_MS, {"role": "user"})
    assert again._discover([root]) is first  # a new row, same sessions: still the same object
    add_session(db, "ses_bad/../x")
    third = again._discover([root])
    assert third is not first and any(isinstance(r, UnsafeSessionId) for r in third.refused)


def test_default_roots() -> None:
    h = Opencode()
    home = Path("/home/u")
    assert h.default_roots({}, home) == [home / ".local/share/opencode"]
    env = {"XDG_DATA_HOME": "/x", "OPENCODE_DB": "other.db"}
    assert h.default_roots(env, home) == [Path("/x/opencode"), Path("/x/opencode/other.db")]
    assert h.default_roots({"OPENCODE_DB": "/db/o.db"}, home)[1] == Path("/db/o.db")
    assert h.default_roots({"OPENCODE_DB": ":memory:"}, home) == [home / ".local/share/opencode"]


# --- JSON store ---


@pytest.mark.anyio
async def test_json_store_growth_rewrite_half_written_and_resume(root: Path) -> None:
    sid = "ses_0004dddddddddddddddddddd"
    session_file = store_session(root, sid)
    storage = root / "storage"
    write_json(
        storage / "message" / sid / "msg_1.json",
        {"id": "msg_1", "sessionID": sid, "role": "user", "time": {"created": BASE_MS}},
    )
    harness = Opencode()
    disc = harness.discover_blocking([root])
    assert [r.session_id for r in disc.sessions] == [sid]
    source = harness.open_source(disc.sessions[0], max_line_bytes=BIG)
    got, pos = await read_all(source, START)
    assert [(x["type"], x["id"]) for x in got] == [("message", "msg_1")]
    assert got[0]["data"]["role"] == "user" and got[0]["time_created"] == BASE_MS
    part = storage / "part" / "msg_1" / "prt_1.json"
    write_json(part, {"id": "prt_1", "messageID": "msg_1", "sessionID": sid, "type": "text", "text": "he"})
    got, pos = await read_all(source, pos)
    assert [(x["type"], x["id"], x["message_id"], x["data"]["text"]) for x in got] == [
        ("part", "prt_1", "msg_1", "he")
    ]
    time.sleep(0.01)  # noqa: ASYNC251
    write_json(part, {"id": "prt_1", "messageID": "msg_1", "sessionID": sid, "type": "text", "text": "hello"})
    got, pos = await read_all(source, pos)
    assert [x["data"]["text"] for x in got] == ["hello"]
    half = storage / "part" / "msg_1" / "prt_2.json"
    half.write_text('{\n  "id": "prt_2",\n  "text": "hal')  # an in-place write caught midway
    assert (await source.read(pos, BIG)).empty
    half.write_text(json.dumps({"id": "prt_2", "text": "half done"}, indent=2))
    got, pos = await read_all(source, pos)
    assert [x["data"]["text"] for x in got] == ["half done"]
    assert pos.cursor == 4
    fresh = Opencode().open_source(disc.sessions[0], max_line_bytes=BIG)
    assert (await fresh.read(pos, BIG)).empty
    every, _ = await read_all(fresh, START, 1)
    assert [x["id"] for x in every] == ["msg_1", "prt_1", "prt_2"]
    info = source.describe([])
    assert (info.cwd, info.title, info.agent_version) == ("/home/dev/old", "Old one", "0.9.1")
    assert isinstance(await fresh.read(Position(0, 1, "abc.1.x.y"), BIG), Discontinuity)
    old = time.time() - 3600
    half.write_text("{ broken")
    os.utime(half, (old, old))
    with pytest.raises(UnknownFormat, match="prt_2"):
        await read_all(Opencode().open_source(disc.sessions[0], max_line_bytes=BIG), START)
    assert session_file.exists()


# --- end to end: the real daemon, a separate writer process ---


def opencode_root(env: dict[str, str]) -> Path:
    return Path(env["XDG_DATA_HOME"]) / "opencode"


def copy_of(env: dict[str, str], sid: str) -> dict[int, list[dict[str, Any]]]:
    try:
        gens = read_back(env["TRACEMIRROR_BUCKET"], SessionKey("opencode", sid)).generations
    except Exception:
        return {}
    return {g: [json.loads(x) for x in data.splitlines()] for g, data in gens.items()}


def run_once(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    once = [sys.executable, "-m", "tracemirrord", "--once"]
    return subprocess.run(once, env=env, capture_output=True, timeout=60)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}", {"TRACEMIRROR_HARNESSES": "opencode"})


def test_daemon_follows_rows_updated_in_place(env: dict[str, str], tmp_path: Path) -> None:
    """A writer process updates part rows in place many times while the daemon runs: every version
    the daemon appended appears once, in the order written, and the last version of every id is
    the final row."""
    root = opencode_root(env)
    sids = ["ses_0010aaaaaaaaaaaaaaaaaaaa", "ses_0011bbbbbbbbbbbbbbbbbbbb"]
    conn = make_db(root / "opencode.db")
    initial: list[dict[str, Any]] = []
    for sid in sids:
        add_session(conn, sid)
        first = {"id": f"msg_{sid[4:8]}", "session_id": sid, "t": now_ms(), "data": {"role": "user"}}
        put_message(conn, first["id"], sid, first["t"], first["data"])
        initial.append(first)
    conn.close()
    log_path = tmp_path / "writes.jsonl"
    spec = {
        "db": str(root / "opencode.db"),
        "sessions": sids,
        "messages": 6,
        "updates": 25,
        "rate": 200,
        "log": str(log_path),
    }
    writer_script = Path(__file__).with_name("opencode_writer.py")
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: all(copy_of(env, sid) for sid in sids), 20, "the daemon to follow the sessions")
        writer = subprocess.Popen([sys.executable, str(writer_script), json.dumps(spec)])
        assert writer.wait(60) == 0
        writes = [json.loads(x) for x in log_path.read_text().splitlines()]
        final: dict[str, dict[str, Any]] = {}
        for w in initial + writes:
            final[w["id"]] = w

        def caught_up() -> bool:
            for sid in sids:
                copy = copy_of(env, sid).get(0, [])
                last = {x["id"]: x for x in copy}
                want = {i: w for i, w in final.items() if w["session_id"] == sid}
                if set(last) != set(want):
                    return False
                if any(
                    (last[i]["time_updated"], last[i]["data"]) != (w["t"], w["data"]) for i, w in want.items()
                ):
                    return False
            return True

        wait_for(caught_up, 20, "the final version of every row in the copy")
        assert daemon.stop() == 0, daemon.log()
    versions = {(w["id"], w["t"], json.dumps(w["data"], sort_keys=True)): w["seq"] for w in writes}
    total = 0
    for sid in sids:
        copies = copy_of(env, sid)
        assert list(copies) == [0]
        copy = copies[0]
        seqs: dict[str, list[int]] = {}
        for x in copy:
            assert x["session_id"] == sid and x["type"] in ("message", "part")
            if x["id"] == f"msg_{sid[4:8]}":
                continue  # the first row, written before the writer started
            key = (x["id"], x["time_updated"], json.dumps(x["data"], sort_keys=True))
            assert key in versions, f"a version the writer never wrote: {x}"
            seqs.setdefault(x["id"], []).append(versions[key])
        for row_id, order in seqs.items():
            assert order == sorted(set(order)), f"{row_id}: versions repeated or out of order: {order}"
        total += len(copy)
    # the daemon saw the rows stream: far more versions than rows (24 rows), never more than written
    assert 24 < total <= len(writes)


def test_once_mirrors_db_and_json_store_each_session_once(env: dict[str, str]) -> None:
    """--once: database rows once each (current version); a session in both stores from the
    database only; a JSON-store-only session from its files; an unknown database reported."""
    root = opencode_root(env)
    conn = make_db(root / "opencode.db")
    add_session(conn, SID)
    put_message(conn, "msg_1", SID, BASE_MS + 1, {"role": "user", "time": {"created": BASE_MS + 1}})
    for i in range(3):
        put_part(conn, "prt_1", "msg_1", SID, BASE_MS + 2 + i, {"type": "text", "text": f"v{i}"})
    conn.close()
    store_session(root, SID)  # migrated copy left in storage/
    write_json(root / "storage" / "message" / SID / "msg_old.json", {"id": "msg_old", "role": "user"})
    old = "ses_0003cccccccccccccccccccc"
    store_session(root, old)
    write_json(root / "storage" / "message" / old / "msg_7.json", {"id": "msg_7", "role": "user"})
    write_json(
        root / "storage" / "part" / "msg_7" / "prt_7.json", {"id": "prt_7", "type": "text", "text": "hi"}
    )
    bad = sqlite3.connect(root / "opencode-dev.db")
    bad.execute("CREATE TABLE session (id text)")
    bad.close()
    result = run_once(env)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert "opencode-dev.db" in result.stderr.decode()
    from fixture_opencode import expected_rows

    before = expected_rows(root / "opencode.db", SID)
    assert copy_of(env, SID) == {0: before}
    got = copy_of(env, old)[0]
    assert [(x["type"], x["id"], x["data"].get("text")) for x in got] == [
        ("message", "msg_7", None),
        ("part", "prt_7", "hi"),
    ]
    meta = json.loads(
        (Path(env["TRACEMIRROR_BUCKET"][7:]) / "default/sessions/opencode" / SID / "meta.json").read_text()
    )
    assert meta["cwd"] == "/home/dev/proj"
    conn = connect(root / "opencode.db")
    put_part(conn, "prt_1", "msg_1", SID, BASE_MS + 9, {"type": "text", "text": "v9"})
    conn.close()
    assert run_once(env).returncode == 0
    again = copy_of(env, SID)[0]
    assert again == [*before, expected_rows(root / "opencode.db", SID)[-1]]
    assert again[-1]["data"]["text"] == "v9"
