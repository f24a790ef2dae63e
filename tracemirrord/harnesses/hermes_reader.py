"""One shared reader per hermes ``state.db``: one rowid query for every session, split by session.

Hermes appends every message of every session to one ``messages`` table whose ``id`` is an
AUTOINCREMENT rowid, assigned under SQLite's single-writer lock: once id N is visible, no smaller
id can appear later. So one query ``WHERE id > ? ORDER BY id LIMIT n`` serves all sessions; its
rows go into per-session buffers (only for sessions that are being followed) until the writer
says they are durable (``commit``). Read-ahead stops while the buffers hold more than
``BUFFER_CAP`` bytes; buffers of sessions nobody reads are evicted under that pressure.

The shared read is only a cost saving, never what correctness rests on: a session whose position
is below what its buffer covers (a fresh session, a restart from an older shared cursor, an
evicted buffer) reads the gap with one indexed per-session query. That is also how everything is
read while no ``watch`` runs (``--once``).

Every query runs in autocommit on one read-only connection (sqlite_ro): its implicit read
transaction ends with the statement, so no read transaction is held while idle and the agent's
WAL checkpoints are never blocked; we never write and never checkpoint. Everything here blocks;
callers run it in a worker thread (``threading.Lock`` guards the connection).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracemirrord.frame import oversize_placeholder
from tracemirrord.harnesses import sqlite_ro
from tracemirrord.harnesses.safeopen import check_below
from tracemirrord.model import short_hash

JSON_PREFIX = "\x00json:"  # hermes_state_messages._encode_content: list/dict content, JSON-encoded
BUFFER_CAP = 32 * 2**20  # bytes of rows held for all sessions of one database before read-ahead stops
FETCH_ROWS = 1000  # rows per shared query
DIRECT_ROWS = 256  # rows per per-session query
EVICT_IDLE_S = 30.0  # a buffer not read for this long may be evicted when over the cap
READ_BUSY_TIMEOUT_MS = 1000  # a locked database delays a read by at most this, then it is retried

# What we need to understand a hermes database (hermes_state_common.SCHEMA_SQL, schema v30).
REQUIRED_MESSAGE_COLUMNS = frozenset({"id", "session_id", "role", "content", "timestamp"})
REQUIRED_SESSION_COLUMNS = frozenset({"id"})
SESSION_INFO_COLUMNS = ("source", "model", "started_at", "ended_at", "title", "cwd", "git_branch")


class SchemaUnknown(Exception):
    """The database lacks the tables or columns we follow (the message names what)."""


def encode_row(columns: tuple[str, ...], row: tuple[Any, ...]) -> bytes:
    """One message row as one JSON line: every column by name, ``\\x00json:`` content decoded."""
    doc: dict[str, Any] = {}
    for name, value in zip(columns, row, strict=True):
        if isinstance(value, str):
            if name == "content" and value.startswith(JSON_PREFIX):
                try:
                    value = json.loads(value[len(JSON_PREFIX) :])
                except ValueError:
                    pass  # hermes itself falls back to the raw string
        elif isinstance(value, bytes):
            value = {"$base64": base64.b64encode(value).decode("ascii")}  # a BLOB (display_identity)
        elif isinstance(value, float) and not math.isfinite(value):
            value = repr(value)
        doc[name] = value
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _decode_text(raw: bytes) -> str:
    """TEXT columns: UTF-8; invalid bytes become U+FFFD instead of failing the whole query."""
    return raw.decode("utf-8", "replace")


def check_value(ino: int, first_id: int, first_ts: Any) -> str:
    """A session's identity in its database: the file's inode and the session's first row."""
    return "h1." + short_hash(f"{ino}:{first_id}:{first_ts!r}".encode())


@dataclass(slots=True)
class SessionRows:
    """What the shared reader keeps for one followed session."""

    rows: deque[tuple[int, bytes]] = field(default_factory=deque)  # fetched, not yet durable
    covered_from: int = 0  # ``rows`` holds every row of the session with covered_from < id <= next_id
    durable: int = 0  # every row of the session up to here is in the bucket
    evicted_above: int = 0  # rows up to here were fetched and dropped before they were durable
    last_read: float = 0.0
    read_once: bool = False


@dataclass(frozen=True, slots=True)
class SessionMeta:
    """A ``sessions`` row: what describe() reports."""

    raw_id: str
    info: dict[str, Any]


class DbReader:
    """The shared reader of one database; owned by the Hermes harness instance."""

    def __init__(
        self, path: Path, prefix: str, *, buffer_cap: int = BUFFER_CAP, root: Path | None = None
    ) -> None:
        self.path = path
        self.root = root  # the harness root it was found below: never reached through a symlink
        self.prefix = prefix  # "" for the default profile, "<profile>__" for others
        self.buffer_cap = buffer_cap
        self.lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.ino = 0
        self.columns: tuple[str, ...] = ()
        self.shared = False  # shared read enabled (set by watch once the shared cursor is loaded)
        self.start_id = 0
        self.next_id = 0  # every row with id <= next_id has been fetched by the shared read
        self.more = False  # the last shared read stopped at the cap, not at the end
        self.buffered = 0
        self.sessions: dict[str, SessionRows] = {}  # followed sessions, by raw id
        self.max_id: dict[str, int] = {}  # highest row id known per raw session id
        self.last_ts: dict[str, float] = {}  # newest row timestamp per raw session id
        self.first_row: dict[str, tuple[int, Any]] = {}
        self.meta: dict[str, SessionMeta] = {}
        self.listed_stat: sqlite_ro.DbStat | None = None  # stat when the sessions were last listed
        self.refreshed_stat: sqlite_ro.DbStat | None = None  # stat before the last shared read
        self.polled_stat: sqlite_ro.DbStat | None = None
        self.polled_at = 0.0
        self.seq = 0
        self.resets = 0  # bumped when the database was replaced or recreated
        self.max_known = False
        self.session_columns: list[str] = []
        self.used_at = 0.0
        self.commit_count = 0  # how many commits were reported (the watch saves after a change)
        self._commits: deque[tuple[str, int, str | None]] = (
            deque()
        )  # from the event loop, applied under the lock

    # ---------- connection and identity ----------

    def _connect(self, st: sqlite_ro.DbStat) -> sqlite3.Connection:
        """The connection to the file now at ``path``; a new inode resets everything (replaced db)."""
        self.used_at = time.monotonic()
        if self.root is not None:  # every time: a moved database keeps its inode (and our connection)
            check_below(self.root, self.path)  # PathEscape: a profile dir swapped for a symlink
        if self._conn is not None and st.ino == self.ino:
            return self._conn
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.ino and st.ino != self.ino:
            self._reset()
        conn = sqlite_ro.open_readonly_blocking(self.path, busy_timeout_ms=READ_BUSY_TIMEOUT_MS)
        conn.text_factory = _decode_text
        try:
            self._check_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._conn, self.ino = conn, st.ino
        return conn

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        messages = {str(r[1]) for r in conn.execute("PRAGMA table_info(messages)").fetchall()}
        sessions = {str(r[1]) for r in conn.execute("PRAGMA table_info(sessions)").fetchall()}
        if not messages or not sessions:
            missing = [t for t, cols in (("messages", messages), ("sessions", sessions)) if not cols]
            raise SchemaUnknown(f"no {' or '.join(missing)} table (not a hermes state.db we know)")
        lacking = sorted(REQUIRED_MESSAGE_COLUMNS - messages) + sorted(
            f"sessions.{c}" for c in REQUIRED_SESSION_COLUMNS - sessions
        )
        if lacking:
            raise SchemaUnknown(f"hermes schema without column(s) {', '.join(lacking)}")
        self.session_columns = [c for c in SESSION_INFO_COLUMNS if c in sessions]

    def _reset(self) -> None:
        """The database is another one now: forget every row, buffer and position."""
        self.resets += 1
        self.next_id = self.start_id = 0
        self.more = False
        self.buffered = 0
        for rows in list(self.sessions.values()):
            rows.rows.clear()
            rows.covered_from = rows.durable = rows.evicted_above = 0
        self.max_id.clear()
        self.last_ts.clear()
        self.first_row.clear()
        self.seq = 0
        self.max_known = False

    def _conn_now(self) -> sqlite3.Connection | None:
        """The open connection, reopened if it was closed while idle (None: the database is gone)."""
        if self._conn is not None:
            self.used_at = time.monotonic()
            return self._conn
        st = sqlite_ro.stat_db(self.path)
        return None if st is None else self._connect(st)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        with self.lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def close_if_idle(self, idle_s: float) -> None:
        """Close the connection after ``idle_s`` without a query: an open WAL connection keeps a
        shared lock that stops the agent from taking the database exclusively or dropping its WAL."""
        if self._conn is not None and time.monotonic() - self.used_at > idle_s:
            with self.lock:
                if self._conn is not None and time.monotonic() - self.used_at > idle_s:
                    self._conn.close()
                    self._conn = None

    def stat(self, max_age: float = 0.2) -> sqlite_ro.DbStat | None:
        """A stat of the database at most ``max_age`` old (shared by every session's probe)."""
        now = time.monotonic()
        if now - self.polled_at >= max_age:
            self.polled_stat, self.polled_at = sqlite_ro.stat_db(self.path), now
        return self.polled_stat

    # ---------- listing (discover) ----------

    def list_sessions(self, st: sqlite_ro.DbStat) -> dict[str, SessionMeta]:
        """Every ``sessions`` row (raw id -> info); on first use also each session's row range."""
        with self.lock:
            conn = self._connect(st)
            cols = ["id", *self.session_columns]
            rows = conn.execute(f"SELECT {', '.join(cols)} FROM sessions").fetchall()
            self.meta = {
                str(r[0]): SessionMeta(str(r[0]), dict(zip(cols[1:], r[1:], strict=True))) for r in rows
            }
            if not self.max_known:
                self._load_ranges(conn)
            self.listed_stat = st
            return self.meta

    def _load_ranges(self, conn: sqlite3.Connection) -> None:
        """Each session's first row and highest id, in one grouped query (start-up, replacement)."""
        rows = conn.execute(
            "SELECT g.session_id, g.lo, g.hi, m.timestamp, h.timestamp FROM"
            " (SELECT session_id, MIN(id) AS lo, MAX(id) AS hi FROM messages GROUP BY session_id) g"
            " JOIN messages m ON m.id = g.lo JOIN messages h ON h.id = g.hi"
        ).fetchall()
        for sid, lo, hi, first_ts, last_ts in rows:
            sid = str(sid)
            self.first_row.setdefault(sid, (int(lo), first_ts))
            self.max_id[sid] = max(self.max_id.get(sid, 0), int(hi))
            if isinstance(last_ts, int | float):
                self.last_ts[sid] = float(last_ts)
        self.seq = max(self._sequence(conn), max(self.max_id.values(), default=0))
        self.max_known = True

    def _sequence(self, conn: sqlite3.Connection) -> int:
        """The AUTOINCREMENT high-water mark: never lowers unless the database was recreated."""
        try:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        except sqlite3.OperationalError:
            row = None
        if row is None:
            row = conn.execute("SELECT MAX(id) FROM messages").fetchone()
        return int(row[0] or 0) if row else 0

    # ---------- the shared read ----------

    def follow(self, raw_id: str) -> SessionRows:
        """Start buffering a session's rows (from the next shared read on)."""
        rows = self.sessions.get(raw_id)
        if rows is None:
            rows = self.sessions[raw_id] = SessionRows(covered_from=self.next_id, durable=self.start_id)
        return rows

    def enable_shared(self, start_id: int) -> None:
        """Begin the shared read after ``start_id`` (the saved global cursor; 0 when none)."""
        with self.lock:
            if self.shared:
                return
            self.shared = True
            self.start_id = self.next_id = max(0, start_id)
            for rows in list(self.sessions.values()):
                rows.covered_from = max(rows.covered_from, self.next_id)
                rows.durable = max(rows.durable, self.start_id)

    def needs_refresh(self, st: sqlite_ro.DbStat | None) -> bool:
        """The database may hold rows not read yet: its stat changed, a read stopped short, or it
        changed so recently that a further commit in the same mtime tick (a WAL reused at the same
        size) would not show in the stat."""
        if st is None:
            return False
        return st != self.refreshed_stat or self.more or not sqlite_ro.stat_settled(st)

    def refresh(self, st: sqlite_ro.DbStat) -> set[str]:
        """Fetch new rows into the followed sessions' buffers; the raw ids that got rows."""
        got: set[str] = set()
        with self.lock:
            if self._conn is not None and not self.needs_refresh(st):
                return got  # another caller refreshed for this stat meanwhile
            conn = self._connect(st)
            if not self.max_known:
                self._load_ranges(conn)
            seq = self._sequence(conn)
            if seq < self.seq or (self.shared and seq < self.next_id):
                self._reset()  # recreated in place: the ids went down
                self._load_ranges(conn)
            self.seq = max(self.seq, seq)
            self.refreshed_stat = st
            if not self.shared:
                return got
            self._apply_commits()
            if self.buffered > self.buffer_cap:
                self._evict()
            self.more = False
            while True:
                cur = conn.execute(
                    "SELECT * FROM messages WHERE id > ? ORDER BY id LIMIT ?", (self.next_id, FETCH_ROWS)
                )
                columns = tuple(d[0] for d in cur.description)
                batch = cur.fetchall()
                if not self._take(columns, batch, got):
                    self.more = True  # over the cap: the rest waits until buffers drain
                    break
                if len(batch) < FETCH_ROWS:
                    break
        return got

    def _take(self, columns: tuple[str, ...], batch: list[tuple[Any, ...]], got: set[str]) -> bool:
        """Buffer a batch in id order; False when the cap stopped it (``next_id`` is the last taken)."""
        self.columns = columns
        id_at, sid_at, ts_at = columns.index("id"), columns.index("session_id"), columns.index("timestamp")
        now = time.time()
        for row in batch:
            if self.buffered > self.buffer_cap:
                return False
            rowid, sid, ts = int(row[id_at]), str(row[sid_at]), row[ts_at]
            self.max_id[sid] = max(self.max_id.get(sid, 0), rowid)
            self.first_row.setdefault(sid, (rowid, ts))  # a session new since _load_ranges
            self.last_ts[sid] = min(float(ts), now) if isinstance(ts, int | float) else now
            rows = self.sessions.get(sid)
            if rows is not None and rowid > rows.durable:
                line = encode_row(columns, row)
                rows.rows.append((rowid, line))
                self.buffered += len(line)
            got.add(sid)
            self.next_id = rowid
        return True

    def _evict(self) -> None:
        """Over the cap: drop the buffers of sessions nobody read lately, largest first."""
        now = time.monotonic()
        idle = [
            (sum(len(line) for _, line in rows.rows), sid, rows)
            for sid, rows in list(self.sessions.items())
            if rows.rows and now - rows.last_read > EVICT_IDLE_S
        ]
        for size, _sid, rows in sorted(idle, key=lambda item: item[0], reverse=True):
            if self.buffered <= self.buffer_cap // 2:
                break
            rows.evicted_above = max(rows.evicted_above, rows.rows[-1][0])
            rows.rows.clear()
            rows.covered_from = self.next_id
            self.buffered -= size

    # ---------- one session ----------

    def identity(self, raw_id: str) -> str | None:
        """The session's check value (None while it has no row); blocking (may query)."""
        first = self.first_row.get(raw_id)
        if first is None:
            with self.lock:
                conn = self._conn_now()
                if conn is None:
                    return None
                row = conn.execute(
                    "SELECT id, timestamp FROM messages WHERE session_id = ? ORDER BY id LIMIT 1", (raw_id,)
                ).fetchone()
                if row is None:
                    return None
                first = self.first_row.setdefault(raw_id, (int(row[0]), row[1]))
        return check_value(self.ino, first[0], first[1])

    def take(self, raw_id: str, after: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """Rows of a session with id > ``after``, about ``max_bytes`` of them (at least one)."""
        with self.lock:
            self._apply_commits()
            return self._take_locked(raw_id, after, max_bytes)

    def _take_locked(self, raw_id: str, after: int, max_bytes: int) -> list[tuple[int, bytes]]:
        rows = self.sessions.get(raw_id)
        if rows is None or not self.shared or after < rows.covered_from:
            upto = None if rows is None or not self.shared else rows.covered_from
            found = self._direct(raw_id, after, max_bytes, upto)
            if found or upto is None:
                return found
            after = upto  # nothing in the gap: the buffer holds the rest
        assert rows is not None
        rows.last_read = time.monotonic()
        out: list[tuple[int, bytes]] = []
        size = 0
        for rowid, line in rows.rows:
            if rowid <= after:
                continue
            if out and size + len(line) > max_bytes:
                break
            out.append((rowid, line))
            size += len(line)
        if not out and self.max_id.get(raw_id, 0) > max(after, self.next_id):
            # rows beyond the shared read (it stopped at the cap): read them directly
            return self._direct(raw_id, max(after, self.next_id), max_bytes, None)
        return out

    def _direct(self, raw_id: str, after: int, max_bytes: int, upto: int | None) -> list[tuple[int, bytes]]:
        """One session's rows from the database itself (the gap below its buffer, or no buffer)."""
        out: list[tuple[int, bytes]] = []
        size = 0
        conn = self._conn_now()
        if conn is None:
            return out
        while True:
            sql = "SELECT * FROM messages WHERE session_id = ? AND id > ?"
            args: tuple[Any, ...] = (raw_id, after)
            if upto is not None:
                sql += " AND id <= ?"
                args += (upto,)
            cur = conn.execute(sql + " ORDER BY id LIMIT ?", (*args, DIRECT_ROWS))
            columns = tuple(d[0] for d in cur.description)
            batch = cur.fetchall()
            id_at = columns.index("id")
            for row in batch:
                line = encode_row(columns, row)
                if out and size + len(line) > max_bytes:
                    batch = []  # budget reached; the rest waits for the next read
                    break
                after = int(row[id_at])
                out.append((after, line))
                size += len(line)
            if out:
                self.max_id[raw_id] = max(self.max_id.get(raw_id, 0), out[-1][0])
            if len(batch) < DIRECT_ROWS:
                return out

    def start_at(self, raw_id: str, after: int) -> None:
        """A source's first read: its starting position came from the bucket, so it is durable."""
        rows = self.sessions.get(raw_id)
        if rows is not None and not rows.read_once:
            rows.read_once = True
            self.commit(raw_id, after, None)  # applied before the take that follows

    def commit(self, raw_id: str, upto: int, check: str | None) -> None:
        """Rows of a session up to ``upto`` are durable: freed at the next locked step (never blocks)."""
        self._commits.append((raw_id, upto, check))
        self.commit_count += 1

    def _apply_commits(self) -> None:
        while self._commits:
            self._commit_locked(*self._commits.popleft())

    def _commit_locked(self, raw_id: str, upto: int, check: str | None) -> None:
        rows = self.sessions.get(raw_id)
        if rows is None or upto <= rows.durable:
            return
        first = self.first_row.get(raw_id)
        if check is not None and (first is None or check != check_value(self.ino, *first)):
            return  # a position in a database that has since been replaced
        rows.durable = upto
        while rows.rows and rows.rows[0][0] <= upto:
            self.buffered -= len(rows.rows.popleft()[1])
        if rows.evicted_above <= upto:
            rows.evicted_above = 0

    def forget(self, raw_ids: Iterable[str]) -> None:
        """Sessions no longer listed (deleted by hermes): stop holding their rows (lock held)."""
        for raw_id in raw_ids:
            rows = self.sessions.pop(raw_id, None)
            if rows is not None:
                self.buffered -= sum(len(line) for _, line in rows.rows)

    def global_durable(self) -> int:
        """The highest rowid such that every followed session's rows up to it are durable."""
        with self.lock:
            self._apply_commits()
            bound = self.next_id
            if not self.shared:
                return 0
            for rows in list(self.sessions.values()):
                if rows.rows:
                    bound = min(bound, rows.rows[0][0] - 1)
                if rows.evicted_above:
                    bound = min(bound, rows.durable)
            return bound

    def rows_after(self, raw_id: str, after: int) -> int:
        """How many rows of the session beyond ``after`` are known (buffered; else at least one)."""
        rows = self.sessions.get(raw_id)
        held = list(rows.rows) if rows is not None else []  # one C-level copy: safe beside a refresh
        n = sum(1 for rowid, _ in held if rowid > after)
        if n == 0 and self.max_id.get(raw_id, 0) > after:
            return 1
        return n


def placeholder_for(line: bytes) -> bytes:
    """The line uploaded instead of a row whose JSON exceeds the line limit."""
    return oversize_placeholder(len(line), hashlib.sha256(line).hexdigest())
