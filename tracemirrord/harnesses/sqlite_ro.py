"""Opening an agent's live SQLite database the only way we may: read-only, never blocking it.

harnesses.md: ``file:...?mode=ro`` as a URI (never ``immutable=1``: the database is live), a busy
timeout, short read transactions (autocommit: a statement's implicit transaction ends with it, so
no read transaction is held while idle and the agent's WAL can still be checkpointed), never a
write and never a checkpoint. ``query_only`` makes SQLite itself refuse any write we might issue.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

BUSY_TIMEOUT_MS = 5000


def readonly_uri(path: Path) -> str:
    return "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"


async def open_readonly(path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> aiosqlite.Connection:
    """An autocommit, query-only connection to ``path`` (sqlite3.Error when it cannot be opened)."""
    db = await aiosqlite.connect(readonly_uri(path), uri=True, isolation_level=None)
    try:
        await db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        await db.execute("PRAGMA query_only=1")
    except BaseException:
        await db.close()
        raise
    return db


def open_readonly_blocking(path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    """The same for blocking callers (``--check``, worker threads)."""
    db = sqlite3.connect(readonly_uri(path), uri=True, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    db.execute("PRAGMA query_only=1")
    return db


@dataclass(frozen=True, slots=True)
class DbStat:
    """A cheap change probe of a WAL database: the database and ``-wal`` files' identity, size, mtime."""

    ino: int
    size: int
    mtime_ns: int
    wal_size: int
    wal_mtime_ns: int

    @property
    def mtime(self) -> float:
        """When rows were last written. An empty (or absent) ``-wal`` holds none, so its mtime is
        left out: our own read-only connection creates an empty one when the agent's last
        connection had removed it, and that must not make an idle database look just written
        (the watch would poll it every 0.1 s for five minutes: WatchPace)."""
        if self.wal_size <= 0:
            return self.mtime_ns / 1e9
        return max(self.mtime_ns, self.wal_mtime_ns) / 1e9


def stat_db(path: Path) -> DbStat | None:
    """None when the database file is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    try:
        wal = os.stat(f"{path}-wal")
        wal_size, wal_mtime = wal.st_size, wal.st_mtime_ns
    except OSError:
        wal_size, wal_mtime = -1, 0
    return DbStat(st.st_ino, st.st_size, st.st_mtime_ns, wal_size, wal_mtime)


async def table_columns(db: aiosqlite.Connection, table: str) -> set[str]:
    """The columns of ``table`` (empty when it does not exist): to tell a format we do not know."""
    rows = await db.execute_fetchall(f"PRAGMA table_info({table})")
    return {str(row[1]) for row in rows}


# A database changed this recently may hide a later commit in its stat (coarse file timestamps, a
# WAL reused at the same size): a watch reads it once more on each poll until its stat is older.
STAT_TRUST_AFTER_S = 2.0


def stat_settled(st: DbStat, now: float | None = None) -> bool:
    """Whether ``st`` is old enough that an unchanged stat means an unchanged database."""
    return (time.time() if now is None else now) - st.mtime >= STAT_TRUST_AFTER_S


class WatchPace:
    """How often a harness's watch looks at its databases: every ``active_s`` while one of them was
    modified in the last five minutes, every second otherwise (or when there is nothing to watch),
    so an idle daemon does not wake several times a second per harness."""

    IDLE_S = 1.0
    IDLE_AFTER_S = 300.0

    def __init__(self, active_s: float = 0.2) -> None:
        self.active_s = active_s
        self._newest = 0.0  # the newest database mtime seen (epoch seconds)

    def observe(self, st: DbStat | None) -> None:
        """Take in a database's stat (every poll: it costs nothing more than the stat itself)."""
        if st is not None:
            self._newest = max(self._newest, st.mtime)

    def interval(self, watching: bool = True) -> float:
        if not watching or time.time() - self._newest > self.IDLE_AFTER_S:
            return self.IDLE_S
        return self.active_s
