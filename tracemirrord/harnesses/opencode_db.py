"""opencode's SQLite store (from about v1.2): one database, many sessions, rows updated in place.

Confirmed against anomalyco/opencode ``packages/opencode/src/session/session.sql.ts`` (commit 063e830)
and ``src/storage/schema.sql.ts``: tables ``session(id, directory, title, version, time_created,
time_updated, ...)``, ``message(id, session_id, time_created, time_updated, data JSON)``,
``part(id, message_id, session_id, time_created, time_updated, data JSON)`` and, in recent versions,
``session_message(id, session_id, type, time_created, time_updated, data JSON)``. ``time_updated``
is ``Date.now()`` (milliseconds) set on every update; a streaming reply updates its part rows in
place many times. ``src/storage/db.ts``: the database is ``opencode.db`` in the data dir
(``opencode-<channel>.db`` for other channels, ``OPENCODE_DB`` overrides it: absolute, or relative
to the data dir), WAL mode.

A session is followed by ``(time_updated, kind, id)`` over its message, part and session_message
rows together; each new version of a row is appended as one JSON line (opencode_versions.py).
Everything here opens the database read-only (sqlite_ro) in autocommit mode: each statement's read
transaction ends with it, so nothing is held while idle and opencode's WAL checkpoints proceed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio.to_thread

from tracemirrord.frame import oversize_placeholder
from tracemirrord.harnesses.opencode_versions import (
    Mark,
    Seen,
    Version,
    advance,
    content_sig,
    is_new,
    prune,
)
from tracemirrord.harnesses.safeopen import check_below
from tracemirrord.harnesses.sqlite_ro import DbStat, open_readonly_blocking, stat_db, stat_settled
from tracemirrord.source import (
    CursorUnit,
    Discontinuity,
    Position,
    Probe,
    Records,
    SessionInfo,
    UnknownFormat,
)

REQUIRED = {
    "session": {"id", "directory", "title", "version", "time_created"},
    "message": {"id", "session_id", "time_created", "time_updated", "data"},
    "part": {"id", "message_id", "session_id", "time_created", "time_updated", "data"},
}
SESSION_MESSAGE = {"id", "session_id", "type", "time_created", "time_updated", "data"}

LOOKBACK_MS = 2000  # how far below the mark a running daemon looks again (late commits, ms ties)
RECENT_MS = 10_000  # ... but only at rows written this recently (wall clock): bounded work
PAGE_ROWS = 500
TIE_WINDOW_MS = 2000  # an unexplained change makes sessions written this recently read again
KINDS = {"m": "message", "p": "part", "s": "session_message"}


class OpencodeDb:
    """One opencode database, shared by the harness's sources and its watch.

    Holds one read-only connection (reopened when the file is replaced; used under a lock from
    worker threads), what its schema lacks, its session list, and the change index the watch keeps
    (session id -> (newest time_updated, rows counted, bumps)) so that followers need not query to poll.
    """

    def __init__(self, path: Path, root: Path | None = None) -> None:
        self.path = path
        self.root = root  # the root it was found in: never reached through a symlink below it
        self.refused = False  # the watch found its path going through a symlink (woke its sessions)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._ino: int | None = None
        self._schema: tuple[str | None, bool] | None = None  # (problem, has session_message)
        self.index: dict[str, tuple[int, int, int]] = {}
        self.index_stat: DbStat | None = None
        self.index_high = 0
        self.watching = False
        self.sessions_stat: DbStat | None = None
        self.sessions: list[str] = []
        self.session_set: frozenset[str] = frozenset()

    def ident(self, st: DbStat) -> str:
        return f"{st.ino:x}"

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[Any]:
        """Run one statement to completion (its read transaction ends with it)."""
        with self._lock:
            conn = self._connect()
            return conn.execute(sql, params).fetchall()

    def _connect(self) -> sqlite3.Connection:
        if self.root is not None:  # every time: a moved database keeps its inode (and our connection)
            check_below(self.root, self.path)
        st = stat_db(self.path)
        if st is None:
            self._close()
            raise FileNotFoundError(self.path)
        if self._conn is None or self._ino != st.ino:
            self._close()
            self._conn = open_readonly_blocking(self.path)
            self._ino = st.ino
            self._schema = None
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._schema = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def schema(self) -> tuple[str | None, bool]:
        """(what this version does not understand, or None; whether session_message is there)."""
        with self._lock:
            try:
                conn = self._connect()
                if self._schema is None:
                    self._schema = _check_schema(conn)
            except sqlite3.DatabaseError as exc:
                return f"not a readable SQLite database ({exc})", False
            return self._schema

    def session_ids(self) -> list[str]:
        """Every session id in the database (cached while the database is unchanged)."""
        st = stat_db(self.path)
        if st is not None and st == self.sessions_stat:
            return self.sessions
        rows = self.query("SELECT id FROM session ORDER BY id")
        self.sessions = [str(r[0]) for r in rows if isinstance(r[0], str)]
        self.session_set = frozenset(self.sessions)
        self.sessions_stat = st
        return self.sessions

    def refresh_index(self) -> list[str]:
        """Re-count rows per session after the database changed; the sessions whose token changed.

        One aggregate over the row tables (a scan: there is no index on ``time_updated``). A change
        that moves no session's (newest time_updated, row count), such as a second write of a row
        in the same millisecond or an update of the session row only, bumps the tokens of the
        sessions written in the last TIE_WINDOW_MS, so that they read again.
        """
        st = stat_db(self.path)
        if st is None or (self.index_stat is not None and st == self.index_stat and stat_settled(st)):
            return []
        problem, has_sm = self.schema()
        if problem is not None:
            return []
        tables = ["message", "part", *(["session_message"] if has_sm else [])]
        sql = " UNION ALL ".join(
            f"SELECT session_id, MAX(time_updated), COUNT(*) FROM {t} GROUP BY session_id" for t in tables
        )
        merged: dict[str, tuple[int, int]] = {}
        for sid, high, count in self.query(sql):
            if not isinstance(sid, str) or not isinstance(high, int):
                continue
            old = merged.get(sid, (high, 0))
            merged[sid] = (max(old[0], high), old[1] + count)
        if self.index_stat is None or st.ino != self.index_stat.ino:
            self.index = {}
        changed = []
        for sid, (high, count) in merged.items():
            old_token = self.index.get(sid)
            if old_token is None or old_token[:2] != (high, count):
                self.index[sid] = (high, count, 0)
                changed.append(sid)
            self.index_high = max(self.index_high, high)
        if not changed:
            for sid, (high, count, bump) in list(self.index.items()):
                if high >= self.index_high - TIE_WINDOW_MS:
                    self.index[sid] = (high, count, bump + 1)
                    changed.append(sid)
        self.index_stat = st
        return changed


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})").fetchall()}


def _check_schema(conn: sqlite3.Connection) -> tuple[str | None, bool]:
    tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return None, False  # a database opencode has just created: no sessions yet
    missing = []
    for table, needed in REQUIRED.items():
        lacking = needed - _columns(conn, table)
        if lacking:
            missing.append(f"{table}({', '.join(sorted(lacking))})")
    if missing:
        return "unknown opencode database schema: missing " + "; ".join(missing), False
    return None, SESSION_MESSAGE <= _columns(conn, "session_message")


def _rows_sql(has_session_message: bool) -> str:
    arms = [
        "SELECT 'm' AS k, id, NULL AS x, time_created AS tc, time_updated AS tu, data"
        " FROM message WHERE session_id = :sid AND time_updated >= :lo",
        "SELECT 'p', id, message_id, time_created, time_updated, data"
        " FROM part WHERE session_id = :sid AND time_updated >= :lo",
    ]
    if has_session_message:
        arms.append(
            "SELECT 's', id, type, time_created, time_updated, data"
            " FROM session_message WHERE session_id = :sid AND time_updated >= :lo"
        )
    return (
        "SELECT k, id, x, tc, tu, data FROM (" + " UNION ALL ".join(arms) + ")"
        " WHERE (tu, k, id) > (:t, :k, :id) ORDER BY tu, k, id LIMIT :n"
    )


def _line(kind: str, row_id: str, extra: Any, tc: Any, tu: int, data: Any, sid: str) -> bytes:
    """One appended row version, as a JSON line."""
    raw = data if isinstance(data, str) else bytes(data or b"").decode("utf-8", "replace")
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw  # kept as text: never dropped
    doc: dict[str, Any] = {"type": KINDS[kind], "id": row_id, "session_id": sid}
    if kind == "p":
        doc["message_id"] = extra
    elif kind == "s":
        doc["session_message_type"] = extra
    doc.update(time_created=tc, time_updated=tu, data=parsed)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def iso_ms(ms: Any) -> str | None:
    """Milliseconds since the epoch as ISO 8601 UTC (None when not a number)."""
    if not isinstance(ms, int | float) or isinstance(ms, bool):
        return None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000))
    return f"{stamp}.{int(ms) % 1000:03d}Z"


def describe_lines(lines: list[bytes], info: dict[str, Any]) -> SessionInfo:
    """SessionInfo from the session's own record (``info``) and its first message lines."""
    model = None
    first_created = None
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, dict) or doc.get("type") != "message":
            continue
        created = (data.get("time") or {}).get("created") if isinstance(data.get("time"), dict) else None
        first_created = first_created or created
        if model is None:
            nested = data.get("model") if isinstance(data.get("model"), dict) else {}
            mid = data.get("modelID") or nested.get("modelID")
            pid = data.get("providerID") or nested.get("providerID")
            if isinstance(mid, str):
                model = f"{pid}/{mid}" if isinstance(pid, str) else mid
    started = iso_ms(info.get("time_created")) or iso_ms(first_created)
    text = {k: v if isinstance(v := info.get(k), str) else None for k in ("directory", "title", "version")}
    return SessionInfo(
        cwd=text["directory"] or None,
        started_at=started,
        model=model,
        title=text["title"] or None,
        agent_version=text["version"] or None,
    )


class OpencodeDbSource:
    """One session of an opencode database as a ``source.Source`` (unit: row versions appended)."""

    unit: CursorUnit = "records"

    def __init__(self, db: OpencodeDb, session_id: str, *, max_line_bytes: int) -> None:
        self.db = db
        self.session_id = session_id
        self.max_line_bytes = max_line_bytes
        self._states: dict[Position, dict[str, tuple[int, str]]] = {}
        self._last_t: int | None = None
        self._pending = 0
        self._info: dict[str, Any] | None = None

    @property
    def location(self) -> str:
        return f"{self.db.path}#{self.session_id}"

    def probe(self) -> Probe | None:
        st = stat_db(self.db.path)
        if st is None:
            return None
        if self.db.sessions_stat is not None and self.session_id not in self.db.session_set:
            return None  # the last discovery no longer found the session row: deleted
        if self.db.watching and self.db.index_stat is not None:
            token = self.db.index.get(self.session_id)
            mtime = token[0] / 1000 if token else st.mtime
            return Probe(("w", st.ino, token), mtime)
        mtime = self._last_t / 1000 if self._last_t is not None else st.mtime
        return Probe(("s", st), mtime)

    def settled_at(self, position: Position) -> Probe | None:
        return None  # one indexed read per session at start-up tells; not worth a second path

    async def read(self, after: Position, max_bytes: int) -> Records | Discontinuity | None:
        return await anyio.to_thread.run_sync(self._read, after, max_bytes)

    def _read(self, after: Position, max_bytes: int) -> Records | Discontinuity | None:
        st = stat_db(self.db.path)
        if st is None:
            return None
        ident = self.db.ident(st)
        mark: Mark | None = None
        if after.cursor or after.check is not None:
            mark = Mark.decode(after.check or "")
            if mark is None:
                return Discontinuity(f"position {after.check!r} is not an opencode database position")
            if mark.ident != ident:
                return Discontinuity("the opencode database was replaced (its identity changed)")
        problem, has_sm = self.db.schema()
        if problem is not None:
            raise UnknownFormat(f"{self.db.path}: {problem}")
        try:
            return self._read_rows(after, max_bytes, mark, ident, has_sm)
        except sqlite3.OperationalError as exc:
            if "no such" in str(exc):
                raise UnknownFormat(f"{self.db.path}: {exc}") from exc
            raise

    def _read_rows(
        self, after: Position, max_bytes: int, mark: Mark | None, ident: str, has_sm: bool
    ) -> Records | None:
        now_ms = int(time.time() * 1000)
        seen: Seen = self._states.get(after, {})
        if mark is not None:
            seen = prune(seen, max(mark.t - LOOKBACK_MS, now_ms - RECENT_MS))
        lo = min([mark.t, *(t for t, _ in seen.values())]) if mark is not None else -(2**62)
        sql = _rows_sql(has_sm)
        out: list[bytes] = []
        emitted: list[tuple[Version, str]] = []
        size = source_bytes = dropped = 0
        key = (lo - 1, "", "")
        full = False
        while not full:
            params = {"sid": self.session_id, "lo": lo, "t": key[0], "k": key[1], "id": key[2]}
            rows = self.db.query(sql, {**params, "n": PAGE_ROWS})
            for kind, row_id, extra, tc, tu, data in rows:
                key = (tu, kind, row_id)
                if not isinstance(tu, int) or not isinstance(row_id, str) or kind not in KINDS:
                    continue
                raw = data.encode() if isinstance(data, str) else bytes(data or b"")
                v = Version(tu, kind + row_id, content_sig(raw))
                if not is_new(v, mark, seen, lambda v: v.sig):
                    continue
                line = _line(kind, row_id, extra, tc, tu, data, self.session_id)
                if len(line) > self.max_line_bytes:
                    line = oversize_placeholder(len(line), hashlib.sha256(line).hexdigest())
                    dropped += 1
                if out and size + len(line) > max_bytes:
                    full = True
                    break
                out.append(line)
                emitted.append((v, v.sig))
                size += len(line)
                source_bytes += len(raw)
            if len(rows) < PAGE_ROWS:
                break
        self._pending = 1 if full else 0
        if self._info is None:
            self._load_info()
        if not out:
            if self._info is None:
                return None  # the session row is gone, and nothing new
            return Records(after, after, b"", 0)
        new_mark, new_seen = advance(mark, seen, emitted, ident)
        assert new_mark is not None
        end = Position(after.generation, after.cursor + len(out), new_mark.encode())
        self._last_t = max(self._last_t or 0, new_mark.t)
        self._states[end] = new_seen
        if len(self._states) > 64:
            for old in sorted(self._states, key=lambda p: (p.generation, p.cursor))[:-32]:
                del self._states[old]
        return Records(after, end, b"".join(out), source_bytes, dropped)

    def _load_info(self) -> None:
        rows = self.db.query(
            "SELECT directory, title, version, time_created FROM session WHERE id = ?", (self.session_id,)
        )
        if rows:
            directory, title, version, created = rows[0]
            self._info = {"directory": directory, "title": title, "version": version, "time_created": created}

    def behind(self, position: Position) -> int:
        token = self.db.index.get(self.session_id) if self.db.watching else None
        mark = Mark.decode(position.check) if position.check else None
        newer = token is not None and (mark is None or token[0] > mark.t)
        return max(self._pending, 1 if newer else 0)

    def describe(self, lines: list[bytes]) -> SessionInfo:
        return describe_lines(lines, self._info or {})

    def committed(self, position: Position) -> None:
        done = (position.generation, position.cursor)
        for old in [p for p in self._states if (p.generation, p.cursor) < done]:
            del self._states[old]
