"""opencode sessions for the harness contract suite, written as opencode v1.2+ writes its database.

The schema is opencode's (``packages/opencode/src/session/session.sql.ts``: ``session``, ``message``,
``part``, ``session_message``), WAL mode, at ``$XDG_DATA_HOME/opencode/opencode.db``.
``append(n)`` inserts n NEW rows (a user message, then an assistant message followed by its
parts), never updating one in place, with
``time_updated`` strictly increasing, so the copy's expected lines are just every row once, in
``(time_updated, id)`` order. ``expected()`` reads the rows back with plain sqlite3 and shapes each
as the line docs/harnesses/opencode.md specifies; ``remove()`` deletes the session as opencode does
(the session row, its messages and parts).

``make_db``, ``SCHEMA`` and the insert helpers are shared by tests/test_opencode.py and
tests/opencode_writer.py.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any

WORDS = ("read", "the", "file", "fix", "test", "bug", "run", "pytest", "ok", "deploy")
BASE_MS = 1_780_000_000_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS project (id text PRIMARY KEY, worktree text NOT NULL, vcs text,
  time_created integer NOT NULL, time_updated integer NOT NULL);
CREATE TABLE IF NOT EXISTS session (id text PRIMARY KEY, project_id text NOT NULL REFERENCES project(id),
  workspace_id text, parent_id text, slug text NOT NULL, directory text NOT NULL, path text,
  title text NOT NULL, version text NOT NULL, share_url text, agent text, model text,
  cost real DEFAULT 0 NOT NULL, time_created integer NOT NULL, time_updated integer NOT NULL,
  time_compacting integer, time_archived integer);
CREATE TABLE IF NOT EXISTS message (id text PRIMARY KEY, session_id text NOT NULL REFERENCES session(id),
  time_created integer NOT NULL, time_updated integer NOT NULL, data text NOT NULL);
CREATE INDEX IF NOT EXISTS message_session_time_created_id_idx ON message (session_id, time_created, id);
CREATE TABLE IF NOT EXISTS part (id text PRIMARY KEY, message_id text NOT NULL REFERENCES message(id),
  session_id text NOT NULL, time_created integer NOT NULL, time_updated integer NOT NULL, data text NOT NULL);
CREATE INDEX IF NOT EXISTS part_message_id_id_idx ON part (message_id, id);
CREATE INDEX IF NOT EXISTS part_session_idx ON part (session_id);
CREATE TABLE IF NOT EXISTS session_message (id text PRIMARY KEY, session_id text NOT NULL,
  type text NOT NULL, time_created integer NOT NULL, time_updated integer NOT NULL, data text NOT NULL);
CREATE INDEX IF NOT EXISTS session_message_session_idx ON session_message (session_id);
"""


def connect(path: Path) -> sqlite3.Connection:
    """A writer connection as opencode opens it (WAL, busy timeout, autocommit)."""
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    return db


def make_db(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = connect(path)
    db.executescript(SCHEMA)
    db.execute(
        "INSERT OR IGNORE INTO project VALUES ('prj_1', '/home/dev/proj', 'git', ?, ?)", (BASE_MS, BASE_MS)
    )
    return db


def add_session(db: sqlite3.Connection, sid: str, created: int = BASE_MS, title: str = "Fix the bug") -> None:
    db.execute(
        "INSERT INTO session (id, project_id, slug, directory, title, version, time_created, time_updated)"
        " VALUES (?, 'prj_1', 'brave-fox', '/home/dev/proj', ?, '1.2.3', ?, ?)",
        (sid, title, created, created),
    )


def put_message(db: sqlite3.Connection, mid: str, sid: str, t: int, data: dict[str, Any]) -> None:
    db.execute(
        "INSERT INTO message VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
        " time_updated = excluded.time_updated, data = excluded.data",
        (mid, sid, t, t, json.dumps(data)),
    )


def put_part(db: sqlite3.Connection, pid: str, mid: str, sid: str, t: int, data: dict[str, Any]) -> None:
    db.execute(
        "INSERT INTO part VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
        " time_updated = excluded.time_updated, data = excluded.data",
        (pid, mid, sid, t, t, json.dumps(data)),
    )


def expected_rows(path: Path, sid: str) -> list[dict[str, Any]]:
    """Every row of the session as its line (the current version of each), in (time_updated, kind, id)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT 'm', id, NULL, time_created, time_updated, data FROM message WHERE session_id = ?"
            " UNION ALL SELECT 'p', id, message_id, time_created, time_updated, data FROM part"
            " WHERE session_id = ?",
            (sid, sid),
        ).fetchall()
    finally:
        db.close()
    rows.sort(key=lambda r: (r[4], r[0], r[1]))
    out = []
    for kind, rid, mid, tc, tu, data in rows:
        doc: dict[str, Any] = {"type": "message" if kind == "m" else "part", "id": rid, "session_id": sid}
        if kind == "p":
            doc["message_id"] = mid
        doc.update(time_created=tc, time_updated=tu, data=json.loads(data))
        out.append(doc)
    return out


class OpencodeSession:
    harness = "opencode"

    def __init__(self, db_path: Path, session_id: str, seed: int) -> None:
        self.db_path = db_path
        self.session_id = session_id
        self.seed = seed

    def append(self, n: int) -> None:
        db = connect(self.db_path)
        try:
            count, high = db.execute(
                "SELECT COUNT(*), MAX(t) FROM (SELECT time_updated AS t FROM message WHERE session_id = ?"
                " UNION ALL SELECT time_updated FROM part WHERE session_id = ?)",
                (self.session_id, self.session_id),
            ).fetchone()
            t = max(high or 0, BASE_MS + (zlib.crc32(self.session_id.encode()) % 1000) * 1_000_000)
            rng = random.Random(self.seed * 1_000_003 + count)
            mid = None
            for i in range(count, count + n):
                t += 1
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
                if i % 4 == 0 or mid is None:
                    mid = f"msg_{self.session_id[4:]}{i:06d}"
                    role = "user" if i % 8 == 0 else "assistant"
                    info = {"role": role, "time": {"created": t}, "modelID": "claude-sonnet-4"}
                    put_message(db, mid, self.session_id, t, info)
                else:
                    part = {"type": "text", "text": text, "time": {"start": t}}
                    put_part(db, f"prt_{self.session_id[4:]}{i:06d}", mid, self.session_id, t, part)
        finally:
            db.close()

    def expected(self) -> list[Any]:
        return expected_rows(self.db_path, self.session_id)

    def remove(self) -> None:
        db = connect(self.db_path)
        try:
            for table in ("part", "message"):
                db.execute(f"DELETE FROM {table} WHERE session_id = ?", (self.session_id,))
            db.execute("DELETE FROM session WHERE id = ?", (self.session_id,))
        finally:
            db.close()


class OpencodeFixture:
    harness = "opencode"

    def db_path(self, home: Path) -> Path:
        return home / ".local" / "share" / "opencode" / "opencode.db"

    def env(self, home: Path) -> dict[str, str]:
        return {"XDG_DATA_HOME": str(home / ".local" / "share")}

    def create(self, home: Path, rng: random.Random) -> OpencodeSession:
        sid = "ses_" + "".join(rng.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(22))
        path = self.db_path(home)
        db = make_db(path)
        try:
            add_session(db, sid)
        finally:
            db.close()
        session = OpencodeSession(path, sid, rng.randrange(1 << 30))
        session.append(1)
        return session


FIXTURE = OpencodeFixture()


class OpencodeStoreSession:
    """A session in opencode's JSON store (before v1.2): one file per record, each written once here
    through a temp file and a rename, dated one millisecond after the previous one so that the
    store's order (mtime, kind, id) is the order written. Each record's expected line is the shape
    docs/harnesses/opencode.md gives, built from what was written."""

    harness = "opencode"

    def __init__(self, storage: Path, session_id: str, seed: int) -> None:
        self.storage = storage
        self.session_id = session_id
        self.seed = seed
        self.lines: list[dict[str, Any]] = []
        self.files: list[Path] = []
        self._t_ns = 0

    def _write(self, path: Path, doc: dict[str, Any]) -> int:
        """Write ``doc`` at ``path`` as opencode does (temp file, rename), dated; its mtime in ns."""
        self._t_ns = max(self._t_ns + 1_000_000, time.time_ns())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        os.utime(tmp, ns=(self._t_ns, self._t_ns))  # before the rename: the file appears dated
        os.replace(tmp, path)
        self.files.append(path)
        return self._t_ns

    def append(self, n: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + len(self.lines))
        mid = None
        for i in range(len(self.lines), len(self.lines) + n):
            created = BASE_MS + i
            if i % 4 == 0 or mid is None:
                mid = f"msg_{self.session_id[4:]}{i:06d}"
                doc = {
                    "id": mid,
                    "sessionID": self.session_id,
                    "role": "assistant",
                    "time": {"created": created},
                }
                t = self._write(self.storage / "message" / self.session_id / f"{mid}.json", doc)
                line = {"type": "message", "id": mid, "session_id": self.session_id}
            else:
                pid = f"prt_{self.session_id[4:]}{i:06d}"
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
                doc = {
                    "id": pid,
                    "sessionID": self.session_id,
                    "messageID": mid,
                    "type": "text",
                    "text": text,
                    "time": {"start": created},
                }
                t = self._write(self.storage / "part" / mid / f"{pid}.json", doc)
                line = {"type": "part", "id": pid, "session_id": self.session_id, "message_id": mid}
            self.lines.append({**line, "time_created": created, "time_updated": t // 1_000_000, "data": doc})

    def expected(self) -> list[Any]:
        return list(self.lines)

    def remove(self) -> None:
        for path in self.files:
            path.unlink(missing_ok=True)


class OpencodeStoreFixture:
    harness = "opencode"

    def env(self, home: Path) -> dict[str, str]:
        return {"XDG_DATA_HOME": str(home / ".local" / "share")}

    def create(self, home: Path, rng: random.Random) -> OpencodeStoreSession:
        sid = "ses_" + "".join(rng.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(22))
        storage = home / ".local" / "share" / "opencode" / "storage"
        session = OpencodeStoreSession(storage, sid, rng.randrange(1 << 30))
        info = {
            "id": sid,
            "projectID": "prj1",
            "directory": "/home/dev/proj",
            "title": "Fix the bug",
            "version": "0.15.0",
            "time": {"created": BASE_MS, "updated": BASE_MS},
        }
        session._write(storage / "session" / "prj1" / f"{sid}.json", info)
        session.append(1)
        return session


# Other on-disk formats of this harness, run through the contract suite as well.
VARIANTS = {"json-store": OpencodeStoreFixture()}
