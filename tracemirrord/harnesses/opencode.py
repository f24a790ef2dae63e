"""opencode (anomalyco/opencode, formerly sst/opencode): its SQLite database and its older JSON store.

Root (``packages/opencode/src/global/index.ts``, xdg-basedir): ``$XDG_DATA_HOME/opencode``, else
``~/.local/share/opencode``. Databases there: ``opencode.db`` and ``opencode-<channel>.db``;
``OPENCODE_DB`` names another (absolute, or relative to the data dir; ``:memory:`` is ignored)
(``src/storage/db.ts``). The JSON store is ``<root>/storage`` (opencode_store.py). A session in a
database and in the JSON store (the migration copies and leaves ``storage/``) is followed once,
from the database. Sessions are ``document`` sources: records rewritten in place, each new version
appended as one JSON line (docs/harnesses/opencode.md).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

import anyio
import anyio.to_thread

from tracemirrord.harnesses.base import (
    DirCache,
    Discovery,
    Harness,
    HarnessHooks,
    Refused,
    SessionRef,
    UnknownSource,
    UnsafeSessionId,
    env_path,
)
from tracemirrord.harnesses.opencode_db import OpencodeDb, OpencodeDbSource
from tracemirrord.harnesses.opencode_store import OpencodeStoreSource
from tracemirrord.harnesses.safeopen import PathEscape
from tracemirrord.harnesses.sqlite_ro import WatchPace, stat_db, stat_settled
from tracemirrord.model import is_safe_segment
from tracemirrord.source import Source

WATCH_MAX_SHARE = 0.2  # the watch waits at least 1/share times as long as its last query took


def database_paths(roots: list[Path]) -> list[Path]:
    """The opencode databases the roots name: a ``.db`` root itself, or those in a data dir."""
    return list(database_roots(roots))


def database_roots(roots: list[Path]) -> dict[Path, Path]:
    """Each opencode database the roots name, with the root it was found in (itself for a ``.db``
    root). A database in a data dir that is a symlink is not one: never followed below a root."""
    found: list[tuple[Path, Path]] = []
    for root in roots:
        if root.suffix == ".db" or root.is_file():
            found.append((root, root))
            continue
        try:
            names = sorted(os.listdir(root))
        except OSError:
            continue
        found.extend(
            (root / n, root)
            for n in names
            if (n == "opencode.db" or (n.startswith("opencode-") and n.endswith(".db")))
            and not os.path.islink(root / n)
        )
    unique: dict[str, tuple[Path, Path]] = {}
    for path, root in found:
        unique.setdefault(os.path.realpath(path), (path, root))
    return dict(unique.values())


def store_sessions(root: Path, cache: DirCache) -> tuple[list[SessionRef], list[Refused]]:
    """Sessions of the JSON store below a data dir: ``storage/session/<projectID>/<sessionID>.json``."""
    refs: list[SessionRef] = []
    refused: list[Refused] = []
    listing = cache.listing(str(root / "storage" / "session"))
    if listing is None:
        return refs, refused
    for project in sorted(listing[0]):
        inner = cache.listing(project)
        if inner is None:
            continue
        for name in sorted(inner[1]):
            path = Path(name)
            sid = path.name[: -len(".json")]
            if sid.startswith("."):
                continue
            if not sid.startswith("ses"):
                refused.append(UnknownSource(path, "not an opencode session file (ids start with ses_)"))
            elif not is_safe_segment(sid):
                refused.append(UnsafeSessionId(path, sid))
            else:
                refs.append(SessionRef(sid, path, root))
    return refs, refused


class Opencode(Harness):
    name = "opencode"
    kind = "document"
    root_env = ("XDG_DATA_HOME", "OPENCODE_DB")

    def __init__(self) -> None:
        self._dbs: dict[Path, OpencodeDb] = {}
        self._dirs = DirCache((".json",))
        self._last: Discovery | None = None
        self._last_key: object = None

    def default_roots(self, env: Mapping[str, str], home: Path) -> list[Path]:
        root = (env_path(env, "XDG_DATA_HOME") or home / ".local" / "share") / "opencode"
        roots = [root]
        override = env.get("OPENCODE_DB")
        if override and override != ":memory:":
            path = Path(override).expanduser()
            roots.append(path if path.is_absolute() else root / path)
        return roots

    async def discover(self, roots: list[Path]) -> Discovery:
        return await anyio.to_thread.run_sync(self._discover, roots)

    def discover_blocking(self, roots: list[Path]) -> Discovery:
        harness = Opencode()
        try:
            return harness._discover(roots)
        finally:
            for db in harness._dbs.values():
                db.close()

    def _discover(self, roots: list[Path]) -> Discovery:
        sessions: dict[str, SessionRef] = {}
        refused: list[Refused] = []
        for path, root in database_roots(roots).items():
            db = self._dbs.get(path)
            if db is None:
                db = self._dbs[path] = OpencodeDb(path, root)
            try:
                problem, _ = db.schema()
            except PathEscape as exc:
                refused.append(Refused(path, str(exc)))
                continue
            if problem is not None:
                refused.append(UnknownSource(path, problem))
                continue
            try:
                ids = db.session_ids()
            except PathEscape as exc:
                refused.append(Refused(path, str(exc)))
                continue
            except (sqlite3.Error, OSError) as exc:
                refused.append(UnknownSource(path, f"cannot list sessions ({exc})"))
                continue
            for sid in ids:
                if not is_safe_segment(sid):
                    refused.append(UnsafeSessionId(path, sid))
                else:
                    sessions.setdefault(sid, SessionRef(sid, path, root))
        for root in roots:
            refs, bad = store_sessions(root, self._dirs)
            refused.extend(bad)
            for ref in refs:
                sessions.setdefault(ref.session_id, ref)  # a database's copy wins
        key = (sorted((r.session_id, str(r.path)) for r in sessions.values()), [str(r) for r in refused])
        if self._last is not None and key == self._last_key:
            return self._last
        self._last, self._last_key = Discovery(list(sessions.values()), refused), key
        return self._last

    def open_source(self, ref: SessionRef, *, max_line_bytes: int) -> Source:
        if ref.path.suffix == ".json":
            return OpencodeStoreSource(ref.path, ref.session_id, max_line_bytes=max_line_bytes, root=ref.root)
        db = self._dbs.get(ref.path)
        if db is None:
            db = self._dbs[ref.path] = OpencodeDb(ref.path, ref.root)
        return OpencodeDbSource(db, ref.session_id, max_line_bytes=max_line_bytes)

    async def watch(self, roots: list[Path], hooks: HarnessHooks, stopping: anyio.Event) -> None:
        """Poll each database's stats; after a change, one query finds the sessions to wake."""
        pace = WatchPace()
        try:
            while not stopping.is_set():
                started = time.monotonic()
                for db in list(self._dbs.values()):
                    db.watching = True
                    first = db.index_stat is None
                    st = stat_db(db.path)
                    pace.observe(st)
                    if not first and (st is None or (st == db.index_stat and stat_settled(st))):
                        continue  # unchanged: no thread hop, no query
                    try:
                        changed = await anyio.to_thread.run_sync(db.refresh_index)
                    except PathEscape:
                        if not db.refused:  # once: its followers read, and report why
                            db.refused = True
                            for sid in db.sessions:
                                hooks.wake(sid)
                        continue
                    except (sqlite3.Error, OSError):
                        continue  # reported by discovery and the followers' reads
                    db.refused = False
                    if not first:
                        for sid in changed:
                            hooks.wake(sid)
                took = time.monotonic() - started
                await hooks.pause(max(pace.interval(bool(self._dbs)), took / WATCH_MAX_SHARE), stopping)
        finally:
            for db in self._dbs.values():
                db.watching = False

    async def close(self) -> None:
        for db in self._dbs.values():
            db.close()
