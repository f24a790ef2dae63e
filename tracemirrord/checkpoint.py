"""The local checkpoint: a cache of each session's state, keyed by bucket, project and session.

It is only ever a cache of what the bucket says (design.md section 5): it is written after a part
is durably in the bucket, and on start every session rolls forward from the bucket past it. If the
file is deleted or corrupt, tracemirrord starts with an empty cache and loses nothing.

Faults, none fatal, each in ``last_error`` (status shows it):
- a write that fails (disk full, read-only state dir) is reported and tried again with the next one;
- a database another process holds locked is waited for briefly (BUSY_TIMEOUT_S), then saves skip
  it for LOCKED_PAUSE_S, so a part never waits long on the cache; locked at start, the run uses a
  cache in memory (the file is left alone);
- a corrupt database (garbage bytes, at start or while running) is moved aside as ``.corrupt``
  with its WAL files, and a new one is started: every session then rolls forward from the bucket.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

import aiosqlite

from tracemirrord.layout import LayoutError, parse_meta, render_meta
from tracemirrord.model import SessionKey, SessionState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS session_state (
    bucket TEXT NOT NULL,
    project TEXT NOT NULL,
    harness TEXT NOT NULL,
    session_id TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (bucket, project, harness, session_id)
);
CREATE TABLE IF NOT EXISTS source_cursor (
    bucket TEXT NOT NULL,
    project TEXT NOT NULL,
    harness TEXT NOT NULL,
    source TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (bucket, project, harness, source)
);
"""


BUSY_TIMEOUT_S = 0.25
LOCKED_PAUSE_S = 5.0
_LOCKED_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def is_locked(exc: sqlite3.Error) -> bool:
    """Another connection holds the database: wait, it is not damaged."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF in _LOCKED_CODES) or "locked" in str(exc)


def is_corrupt(exc: sqlite3.Error) -> bool:
    """The file is not (or no longer) a database we can use: set it aside and start afresh."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return "malformed" in str(exc) or "not a database" in str(exc)


def parse_cached(raw: str | bytes, key: SessionKey) -> SessionState | None:
    """A cached state as stored by ``save`` (None when it is from another layout or damaged)."""
    try:
        return parse_meta(raw, key)
    except LayoutError:
        return None


class Checkpointer:
    """Reads and writes cached SessionStates in ``<state dir>/checkpoint.sqlite3``."""

    def __init__(self, path: Path, *, bucket: str, project: str) -> None:
        self.path = path
        self._bucket = bucket
        self._project = project
        self._db: aiosqlite.Connection | None = None
        self.last_error: str | None = None
        self.in_memory = False  # the file was locked at start: this run caches in memory
        self._paused_until = 0.0  # monotonic: saves skip a database another process holds locked

    async def open(self) -> None:
        """Open (or create) the database; corrupt: moved aside, started afresh; locked: in memory."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._db = await self._connect(self.path)
        except sqlite3.DatabaseError as exc:
            if is_locked(exc):
                self.in_memory = True
                self.last_error = (
                    f"checkpoint {self.path} is locked by another process ({exc}); "
                    "this run caches in memory and rolls every session forward from the bucket"
                )
                self._db = await self._connect(":memory:")
                return
            self.last_error = self._set_aside(exc)
            self._db = await self._connect(self.path)

    def _set_aside(self, exc: Exception) -> str:
        """Move a damaged database (and its WAL files) to ``.corrupt``; the message says so."""
        aside = self.path.with_suffix(".corrupt")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        return f"checkpoint {self.path} was unreadable ({exc}); moved to {aside}, rebuilt from the bucket"

    async def _recover(self, exc: sqlite3.Error, what: str) -> None:
        """After a failed statement: note why; pause on a lock; start afresh on corruption."""
        self.last_error = f"checkpoint {what} failed: {exc}"
        if is_locked(exc):
            self._paused_until = time.monotonic() + LOCKED_PAUSE_S
            self.last_error += f" (locked by another process; saves paused {LOCKED_PAUSE_S:g}s)"
        elif is_corrupt(exc) and not self.in_memory and self._db is not None:
            db, self._db = self._db, None
            with contextlib.suppress(sqlite3.Error):
                await db.close()
            self.last_error = self._set_aside(exc)
            try:
                self._db = await self._connect(self.path)
            except sqlite3.Error as again:
                self.last_error += f"; a new one could not be opened: {again}"

    def _paused(self) -> bool:
        return time.monotonic() < self._paused_until

    async def _connect(self, path: Path | str) -> aiosqlite.Connection:
        # Autocommit: each statement is its own transaction, so a save is one round trip to the
        # connection's thread (the daemon saves after every part). A short busy timeout: the cache
        # is never worth holding up a part.
        db = await aiosqlite.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.executescript(_SCHEMA)
            await db.execute("SELECT count(*) FROM session_state")
        except BaseException:
            await db.close()
            raise
        if path != ":memory:":
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o600)
        return db

    async def load(self, key: SessionKey) -> SessionState | None:
        """The cached state of a session, or None (absent, unreadable or from another layout)."""
        if self._db is None:
            return None
        try:
            rows = await self._db.execute_fetchall(
                "SELECT state FROM session_state WHERE bucket=? AND project=? AND harness=? AND session_id=?",
                (self._bucket, self._project, key.harness, key.session_id),
            )
        except sqlite3.Error as exc:
            await self._recover(exc, "read")
            return None
        for (raw,) in rows:
            return parse_cached(raw, key)
        return None

    async def load_all_raw(self, harness: str) -> dict[str, str]:
        """Every cached state of one harness, unparsed (for a cheap start-up triage)."""
        if self._db is None:
            return {}
        try:
            rows = await self._db.execute_fetchall(
                "SELECT session_id, state FROM session_state WHERE bucket=? AND project=? AND harness=?",
                (self._bucket, self._project, harness),
            )
            found = dict(rows)  # type: ignore[arg-type]
            del rows
            # aiosqlite's thread keeps its last result until its next call: with ten thousand
            # sessions that list is megabytes of JSON nobody needs once triage is done
            await self._db.execute_fetchall("SELECT 1")
            return found
        except sqlite3.Error as exc:
            await self._recover(exc, "read")
            return {}

    async def save(self, state: SessionState) -> bool:
        """Cache a state; False (and ``last_error``) when the write failed or saves are paused."""
        if self._db is None or self._paused():
            return False
        body = render_meta(state, agent_id="", host="").decode()
        try:
            await self._db.execute(
                "INSERT OR REPLACE INTO session_state VALUES (?, ?, ?, ?, ?)",
                (self._bucket, self._project, state.key.harness, state.key.session_id, body),
            )
        except sqlite3.Error as exc:
            await self._recover(exc, "write")
            return False
        if not self.in_memory:
            self.last_error = None
        return True

    async def forget_bucket(self) -> None:
        """Drop everything cached of this bucket: it was deleted or replaced under us."""
        if self._db is None:
            return
        try:
            for table in ("session_state", "source_cursor"):
                await self._db.execute(
                    f"DELETE FROM {table} WHERE bucket=? AND project=?", (self._bucket, self._project)
                )
        except sqlite3.Error as exc:
            await self._recover(exc, "write")

    async def load_cursor(self, harness: str, source: str) -> str | None:
        """A shared read position of a source many sessions come from (hermes' global rowid).

        Like everything here it is a cache: without it the source is read from its start and each
        session's roll-forward drops what its parts already hold.
        """
        if self._db is None:
            return None
        try:
            rows = await self._db.execute_fetchall(
                "SELECT value FROM source_cursor WHERE bucket=? AND project=? AND harness=? AND source=?",
                (self._bucket, self._project, harness, source),
            )
        except sqlite3.Error as exc:
            await self._recover(exc, "read")
            return None
        for (value,) in rows:
            return str(value)
        return None

    async def save_cursor(self, harness: str, source: str, value: str) -> bool:
        """Cache a shared read position; save only what every session's writer made durable."""
        if self._db is None or self._paused():
            return False
        try:
            await self._db.execute(
                "INSERT OR REPLACE INTO source_cursor VALUES (?, ?, ?, ?, ?)",
                (self._bucket, self._project, harness, source, value),
            )
        except sqlite3.Error as exc:
            await self._recover(exc, "write")
            return False
        return True

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            with contextlib.suppress(sqlite3.Error):
                await db.close()
