"""Hermes (NousResearch/hermes-agent): every session's messages as rows of one live SQLite database.

Where (``hermes_constants.get_hermes_home``, ``named_profile_home``): ``$HERMES_HOME`` else
``~/.hermes``; the default profile's database is ``<home>/state.db``, each named profile has its own
at ``<home>/profiles/<name>/state.db`` (names starting with ``.`` are not profiles: ``.deleted``
holds tombstones). A session of a named profile is mirrored as ``<profile>__<session id>``.

Format (``hermes_state_common.SCHEMA_SQL``, schema version 30, and
``hermes_state_messages._encode_content``, confirmed in NousResearch/hermes-agent at commits
00704d087b7c and 01e8a2d0e06b): WAL mode; ``sessions(id TEXT PRIMARY KEY, source, model, cwd,
git_branch, started_at REAL, ended_at REAL, title, ...)`` and ``messages(id INTEGER PRIMARY KEY
AUTOINCREMENT, session_id, role, content, tool_calls, tool_name, timestamp REAL, token_count,
active, compacted, ...)``; list/dict content is stored as ``"\\x00json:" + json``.

Cursor: the highest ``messages.id`` of the session already mirrored; check: a hash of the
database's inode and the session's first row (hermes_reader.check_value). One shared reader per
database (hermes_reader.DbReader) serves every session with one rowid query; ``watch`` polls the
database and ``-wal`` stats every 0.2 s and queries only when they changed.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import anyio
import anyio.to_thread
import structlog

from tracemirrord.harnesses import sqlite_ro
from tracemirrord.harnesses.base import (
    Discovery,
    Harness,
    HarnessHooks,
    Refused,
    SessionRef,
    SourceKind,
    UnknownSource,
    UnsafeSessionId,
    env_path,
)
from tracemirrord.harnesses.hermes_reader import DbReader, SchemaUnknown, placeholder_for
from tracemirrord.harnesses.safeopen import PathEscape
from tracemirrord.model import is_safe_segment
from tracemirrord.source import (
    CursorUnit,
    Discontinuity,
    Position,
    Probe,
    Records,
    SessionInfo,
    Source,
    UnknownFormat,
)

log = structlog.get_logger(__name__)

DB_NAME = "state.db"
SAVE_EVERY_S = 1.0
IDLE_CLOSE_S = 10.0  # close a database's connection after this long without a query
# The watch alone reads new rows while it runs: its period is most of a row's way into a part.
ACTIVE_POLL_S = 0.1


def databases(root: Path) -> list[tuple[Path, str]]:
    """(database, session id prefix) for the default profile and every named profile below root."""
    own = f"{root.name}__" if root.parent.name == "profiles" else ""  # HERMES_HOME is a profile home
    found = [(root / DB_NAME, own)]
    try:
        names = sorted(p.name for p in (root / "profiles").iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        names = []
    found.extend((root / "profiles" / n / DB_NAME, f"{n}__") for n in names if not n.startswith("."))
    return found


def _dir_stamp(path: Path) -> tuple[int, int] | None:
    """A directory's (inode, mtime_ns): an entry added, removed or renamed in it changes the mtime."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _locked(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def iso_utc(value: Any) -> str | None:
    """hermes keeps epoch seconds (REAL); meta.json wants ISO 8601 UTC. Strings pass through."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return (
                datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            )
        except (OverflowError, OSError, ValueError):
            return None
    return value if isinstance(value, str) and value else None


class Hermes(Harness):
    name: ClassVar[str] = "hermes"
    kind: ClassVar[SourceKind] = "sqlite"
    root_env: ClassVar[tuple[str, ...]] = ("HERMES_HOME",)
    # Discovery sees the databases at <root>/state.db and <root>/profiles/<name>/state.db, all within
    # the watched depth (supervisor.WAKE_DEPTH): a new session is a write to one of them.
    notified_discovery: ClassVar[bool] = True

    def __init__(self) -> None:
        self.readers: dict[Path, DbReader] = {}
        self.watching = False
        self._parts: dict[Path, tuple[list[SessionRef], list[Refused]]] = {}
        self._last: Discovery | None = None
        self._last_key: tuple[object, ...] | None = None
        # what the last scan looked at: its roots, each root's profiles directory, its databases
        self._scanned: tuple[list[Path], dict[Path, tuple[int, int] | None], list[Path]] | None = None

    def default_roots(self, env: Mapping[str, str], home: Path) -> list[Path]:
        return [env_path(env, "HERMES_HOME") or home / ".hermes"]

    async def discover(self, roots: list[Path]) -> Discovery:
        if self._last is not None and self._unchanged(roots):
            return self._last
        return await anyio.to_thread.run_sync(self.scan, roots)

    def _unchanged(self, roots: list[Path]) -> bool:
        """Whether a scan would find what the last one did: each profiles directory as it was (and
        older than a coarse mtime tick), every database's stat as listed. A few stats, made in the
        event loop as the watch makes its own: an idle database then costs no worker-thread hop
        per scan tick (about 0.3 ms on a small VM, most of a polled idle scan)."""
        held = self._scanned
        if held is None or held[0] != roots:
            return False
        for root, stamp in held[1].items():
            now = _dir_stamp(root / "profiles")
            if now != stamp or (
                now is not None and time.time() - now[1] / 1e9 < sqlite_ro.STAT_TRUST_AFTER_S
            ):
                return False
        for path in held[2]:
            st = sqlite_ro.stat_db(path)
            reader = self.readers.get(path)
            if st is None:
                if path in self._parts:
                    return False
            elif reader is None or path not in self._parts or st != reader.listed_stat:
                return False
        return True

    def discover_blocking(self, roots: list[Path]) -> Discovery:
        probe = Hermes()
        try:
            return probe.scan(roots)
        finally:
            for reader in probe.readers.values():
                reader.close()

    def scan(self, roots: list[Path]) -> Discovery:
        """Every session of every database below the roots; the previous object when nothing changed."""
        sessions: list[SessionRef] = []
        refused: list[Refused] = []
        stamps = {root: _dir_stamp(root / "profiles") for root in roots}  # before listing them
        looked: list[Path] = []
        for root in roots:
            for path, prefix in databases(root):
                looked.append(path)
                st = sqlite_ro.stat_db(path)
                if st is None:
                    self._parts.pop(path, None)
                    continue
                reader = self.readers.get(path)
                if reader is None:
                    reader = self.readers[path] = DbReader(path, prefix, root=root)
                if st != reader.listed_stat or path not in self._parts:
                    self._parts[path] = self._list(reader, st, self._parts.get(path))
                found, bad = self._parts[path]
                sessions.extend(found)
                refused.extend(bad)
        self._scanned = (list(roots), stamps, looked)
        key = (tuple(sessions), tuple((r.path, str(r)) for r in refused))
        if self._last is None or key != self._last_key:
            self._last, self._last_key = Discovery(sessions, refused), key
        return self._last

    def _list(
        self,
        reader: DbReader,
        st: sqlite_ro.DbStat,
        previous: tuple[list[SessionRef], list[Refused]] | None,
    ) -> tuple[list[SessionRef], list[Refused]]:
        try:
            meta = reader.list_sessions(st)
        except SchemaUnknown as exc:
            return [], [UnknownSource(reader.path, str(exc))]
        except PathEscape as exc:
            return [], [Refused(reader.path, str(exc))]
        except sqlite3.OperationalError as exc:
            if _locked(exc):  # the agent holds it exclusively for now: keep what we knew, retry
                return previous or ([], [])
            return [], [UnknownSource(reader.path, f"unreadable SQLite database ({exc})")]
        except sqlite3.DatabaseError as exc:
            return [], [UnknownSource(reader.path, f"not a SQLite database ({exc})")]
        found: list[SessionRef] = []
        bad: list[Refused] = []
        for raw_id in meta:
            session_id = reader.prefix + raw_id
            if is_safe_segment(session_id):
                found.append(SessionRef(session_id, reader.path, reader.root))
            else:
                bad.append(UnsafeSessionId(reader.path, session_id))
        gone = [raw for raw in list(reader.sessions) if raw not in meta]
        if gone:
            with reader.lock:
                reader.forget(gone)
        return found, bad

    def open_source(self, ref: SessionRef, *, max_line_bytes: int) -> Source:
        reader = self.readers.get(ref.path)
        if reader is None:
            prefix = next((p for db, p in databases(ref.path.parent) if db == ref.path), "")
            reader = self.readers[ref.path] = DbReader(ref.path, prefix, root=ref.root)
        raw_id = ref.session_id.removeprefix(reader.prefix)
        reader.follow(raw_id)
        return HermesSource(self, reader, raw_id, max_line_bytes=max_line_bytes)

    async def watch(self, roots: list[Path], hooks: HarnessHooks, stopping: anyio.Event) -> None:
        """Poll each database's stats (every 0.1 s, every second once idle: sqlite_ro.WatchPace); on a
        change read new rows once and wake their sessions."""
        self.watching = True
        saved: dict[Path, int] = {}
        seen_commits: dict[Path, int] = {}  # each database's commit count at its last save
        last_save = 0.0
        pace = sqlite_ro.WatchPace(ACTIVE_POLL_S)
        try:
            while not stopping.is_set():
                for path, reader in list(self.readers.items()):
                    if path not in saved:
                        saved[path] = await self._start_shared(reader, hooks)
                    st = reader.stat(0)
                    pace.observe(st)
                    if reader.needs_refresh(st):
                        assert st is not None
                        try:
                            got = await anyio.to_thread.run_sync(reader.refresh, st)
                        except (sqlite3.Error, SchemaUnknown, PathEscape) as exc:
                            log.debug("hermes_refresh_failed", db=str(path), error=str(exc))
                            continue
                        for raw_id in got:
                            hooks.wake(reader.prefix + raw_id)
                    elif reader.connected and time.monotonic() - reader.used_at > IDLE_CLOSE_S:
                        await anyio.to_thread.run_sync(reader.close_if_idle, IDLE_CLOSE_S)
                    if reader.commit_count != seen_commits.get(path) and (
                        time.monotonic() - last_save >= SAVE_EVERY_S
                    ):
                        seen_commits[path] = reader.commit_count  # no commit since: idle costs nothing
                        durable = await anyio.to_thread.run_sync(reader.global_durable)
                        if durable > saved[path]:
                            await hooks.cursors.save(str(path), str(durable))
                            saved[path] = durable
                        last_save = time.monotonic()
                await hooks.pause(pace.interval(bool(self.readers)), stopping)
        finally:
            self.watching = False

    async def _start_shared(self, reader: DbReader, hooks: HarnessHooks) -> int:
        """Load the saved global cursor (where the shared read starts) and turn the shared read on."""
        value = await hooks.cursors.load(str(reader.path))
        try:
            start = max(0, int(value)) if value is not None else 0
        except ValueError:
            start = 0
        await anyio.to_thread.run_sync(reader.enable_shared, start)
        return start

    async def close(self) -> None:
        for reader in self.readers.values():
            await anyio.to_thread.run_sync(reader.close)


class HermesSource:
    """One hermes session as a ``source.Source``: rowid cursor, database identity as check."""

    unit: CursorUnit = "rows"

    def __init__(self, harness: Hermes, reader: DbReader, raw_id: str, *, max_line_bytes: int) -> None:
        self.harness = harness
        self.reader = reader
        self.raw_id = raw_id
        self.max_line_bytes = max_line_bytes
        self._seen_stat = reader.listed_stat
        self._retries = 0  # bumped when a read was refused by a lock, so the next probe reads again

    @property
    def woken(self) -> bool:
        """While the harness watches the database, every new row wakes this session's follower."""
        return self.harness.watching

    @property
    def location(self) -> str:
        return f"{self.reader.path}#{self.raw_id}"

    def _gone(self) -> bool:
        return self.reader.listed_stat is not None and self.raw_id not in self.reader.meta

    def _token(self, st: sqlite_ro.DbStat | None) -> tuple[object, ...]:
        reader = self.reader
        dirty = None if self.harness.watching or st == self._seen_stat else st
        meta = reader.meta.get(self.raw_id)
        # the session row too: hermes sets ended_at or a title without a new message
        row = None if meta is None else (meta.info.get("ended_at"), meta.info.get("title"))
        return (reader.resets, reader.ino, reader.max_id.get(self.raw_id, 0), self._retries, dirty, row)

    def _mtime(self, st: sqlite_ro.DbStat) -> float:
        ts = self.reader.last_ts.get(self.raw_id)
        if ts is not None:
            return ts
        meta = self.reader.meta.get(self.raw_id)
        started = meta.info.get("started_at") if meta else None
        return float(started) if isinstance(started, int | float) else st.mtime

    def probe(self) -> Probe | None:
        st = self.reader.stat()
        if st is None or self._gone():
            return None
        return Probe(self._token(st), self._mtime(st))

    def settled_at(self, position: Position) -> Probe | None:
        reader = self.reader
        st = reader.listed_stat
        if st is None or self._gone() or reader.max_id.get(self.raw_id, 0) != position.cursor:
            return None
        if position.cursor and reader.identity(self.raw_id) != position.check:
            return None
        self._seen_stat = st
        return Probe(self._token(st), self._mtime(st))

    async def read(self, after: Position, max_bytes: int) -> Records | Discontinuity | None:
        st = sqlite_ro.stat_db(self.reader.path)
        if st is None or self._gone():
            return None
        try:
            result, refreshed = await anyio.to_thread.run_sync(self._read, after, max_bytes, st)
        except SchemaUnknown as exc:
            raise UnknownFormat(f"{self.reader.path}: {exc}") from exc
        except sqlite3.OperationalError as exc:
            if not _locked(exc):
                raise
            self._retries += 1  # the agent holds the database: nothing now, read again soon
            return Records(after, after, b"", 0)
        # This read did the shared read for everyone: wake the other sessions it found rows for, as
        # the watch would have (their followers poll only as a fallback while the watch runs).
        hooks = self.harness.hooks
        if hooks is not None:
            for raw_id in refreshed - {self.raw_id}:
                hooks.wake(self.reader.prefix + raw_id)
        return result

    def _read(
        self, after: Position, max_bytes: int, st: sqlite_ro.DbStat
    ) -> tuple[Records | Discontinuity, set[str]]:
        """The read (in a worker thread), and the sessions a shared read it did found rows for."""
        reader = self.reader
        # While the watch runs it alone does the shared read (5 times a second) and wakes whom it
        # concerns; reads that each did it as well woke each other in a storm (3x the CPU).
        shared_by_watch = self.harness.watching and reader.shared
        refresh = not shared_by_watch and reader.needs_refresh(st)
        refreshed = reader.refresh(st) if refresh else set()
        return self._take(after, max_bytes, st), refreshed

    def _take(self, after: Position, max_bytes: int, st: sqlite_ro.DbStat) -> Records | Discontinuity:
        reader = self.reader
        self._seen_stat = st
        check = reader.identity(self.raw_id)
        if after.cursor > 0:
            if check != after.check:
                return Discontinuity(
                    f"{self.location}: database replaced or session rewritten "
                    f"(identity {check} != {after.check})"
                )
            if reader.seq < after.cursor:
                return Discontinuity(f"{self.location}: ids went below the cursor (database recreated)")
        reader.start_at(self.raw_id, after.cursor)
        rows = reader.take(self.raw_id, after.cursor, max_bytes)
        if not rows:
            return Records(after, after, b"", 0)
        lines: list[bytes] = []
        dropped = source_bytes = 0
        for _rowid, line in rows:
            source_bytes += len(line)
            if len(line) > self.max_line_bytes:
                line = placeholder_for(line)
                dropped += 1
            lines.append(line)
        end = Position(after.generation, rows[-1][0], check)
        return Records(after, end, b"".join(lines), source_bytes, dropped)

    def behind(self, position: Position) -> int:
        return self.reader.rows_after(self.raw_id, position.cursor)

    def describe(self, lines: list[bytes]) -> SessionInfo:
        meta = self.reader.meta.get(self.raw_id)
        info = meta.info if meta else {}

        def text(name: str) -> str | None:
            value = info.get(name)
            return str(value) if value not in (None, "") else None

        extra = {"db": str(self.reader.path)}
        if text("source"):
            extra["source"] = str(text("source"))
        if self.reader.prefix:
            extra["profile"] = self.reader.prefix.removesuffix("__")
        return SessionInfo(
            cwd=text("cwd"),
            started_at=iso_utc(info.get("started_at")),
            model=text("model"),
            git_branch=text("git_branch"),
            title=text("title"),
            ended_at=iso_utc(info.get("ended_at")),
            extra=extra,
        )

    def committed(self, position: Position) -> None:
        if position.cursor and position.check is not None:
            self.reader.commit(self.raw_id, position.cursor, position.check)
