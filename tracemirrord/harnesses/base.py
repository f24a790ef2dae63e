"""What a harness is: where an agent keeps its sessions, how to find them and name them.

A harness is stateless: it turns a root directory into ``SessionRef``s (session id + path) and a
session's first records into ``SessionInfo``. The mechanics of following a source live by kind:

- ``jsonl``: append-only JSONL files, byte-offset cursor (harnesses/jsonl.py, mirror.py).
- ``sqlite``: append-only rows, rowid cursor (hermes; a later source kind).
- ``document``: records rewritten in place, change cursor (opencode, old gemini-cli; later).

Adding a JSONL agent means one small module with a ``JsonlHarness`` subclass, registered in
``REGISTRY`` (harnesses/__init__.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from tracemirrord.model import is_safe_segment

SourceKind = Literal["jsonl", "sqlite", "document"]
_DESCRIBE_LINE_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class SessionRef:
    """A session found on disk: its id (a safe key segment) and where its source is."""

    session_id: str
    path: Path


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a session's own records say about it (either may be unknown)."""

    cwd: str | None = None
    started_at: str | None = None


class JsonlHarness:
    """An agent whose sessions are append-only ``*.jsonl`` files below one or more roots."""

    name: ClassVar[str]
    kind: ClassVar[SourceKind] = "jsonl"
    max_depth: ClassVar[int] = 4  # directory levels below a root that may hold session files

    def default_roots(self, env: Mapping[str, str], home: Path) -> list[Path]:
        """Where this agent keeps sessions, from its own environment variables, else under home."""
        raise NotImplementedError

    def session_id(self, root: Path, path: Path) -> str | None:
        """The session id for a file below ``root`` (None: not a session file)."""
        raise NotImplementedError

    def discover(self, roots: list[Path], cache: DirCache | None = None) -> Discovery:
        """Every session file below the roots, and the files refused for an unsafe id.

        Never follows a symlink; a session id found at two paths (an archive move caught between
        two listings) is reported once, at its larger file. With a ``cache`` whose directories did
        not change since the last call, the previous Discovery object itself is returned.
        """
        cache = cache or DirCache()
        listed = [(root, _walk_jsonl(root, self.max_depth, cache)) for root in roots]
        if cache.result is not None and cache.result_version == cache.version:
            return cache.result
        found: dict[str, SessionRef] = {}
        refused: list[UnsafeSessionId] = []
        for root, paths in listed:
            for name in paths:
                path = Path(name)
                session_id = self.session_id(root, path)
                if session_id is None:
                    continue
                if not is_safe_segment(session_id):
                    refused.append(UnsafeSessionId(path, session_id))
                    continue
                if session_id not in found or _size(path) > _size(found[session_id].path):
                    found[session_id] = SessionRef(session_id, path)
        cache.result, cache.result_version = Discovery(list(found.values()), refused), cache.version
        return cache.result

    def describe(self, lines: list[bytes]) -> SessionInfo:
        """cwd and start time from a session's first records (top level or a ``payload``)."""
        cwd = started = None
        for line in lines:
            if len(line) > _DESCRIBE_LINE_LIMIT:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            payload = record.get("payload")
            for source in (record, payload if isinstance(payload, dict) else {}):
                if cwd is None and isinstance(source.get("cwd"), str):
                    cwd = source["cwd"]
                if started is None and isinstance(source.get("timestamp"), str):
                    started = source["timestamp"]
            if cwd is not None and started is not None:
                break
        return SessionInfo(cwd, started)


@dataclass(frozen=True, slots=True)
class Discovery:
    """What a scan of a harness's roots found."""

    sessions: list[SessionRef]
    refused: list[UnsafeSessionId]


class UnsafeSessionId(ValueError):
    """A file whose session id cannot be one key segment: refused, logged, never written."""

    def __init__(self, path: Path, session_id: str) -> None:
        super().__init__(f"session id {session_id!r} of {path} is not a safe key segment")
        self.path = path
        self.session_id = session_id


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return -1


class DirCache:
    """Remembers each directory's listing and re-lists only directories whose mtime changed.

    Creating, deleting or renaming an entry changes its directory's mtime, so a scan of an idle
    tree costs one stat per directory, not one per file. A directory modified within the last
    few seconds is always re-listed (coarse mtime clocks could hide a change in the same tick).
    """

    TRUST_AFTER_S = 2.0

    def __init__(self) -> None:
        self._listings: dict[str, tuple[int, list[str], list[str]]] = {}
        self.version = 0  # bumped whenever a listing differs from the cached one
        self.result: Discovery | None = None
        self.result_version = -1

    def listing(self, directory: str) -> tuple[list[str], list[str]] | None:
        """(subdirectories, *.jsonl files) of a directory; None when it is gone or unreadable."""
        try:
            st = os.stat(directory, follow_symlinks=False)
        except OSError:
            if self._listings.pop(directory, None) is not None:
                self.version += 1
            return None
        cached = self._listings.get(directory)
        if (
            cached is not None
            and cached[0] == st.st_mtime_ns
            and time.time() - st.st_mtime > self.TRUST_AFTER_S
        ):
            return cached[1], cached[2]
        subdirs: list[str] = []
        files: list[str] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            subdirs.append(entry.path)
                        elif entry.name.endswith(".jsonl") and entry.is_file(follow_symlinks=False):
                            files.append(entry.path)
                    except OSError:
                        continue
        except OSError:
            return None
        if cached is None or (cached[1], cached[2]) != (subdirs, files):
            self.version += 1
        self._listings[directory] = (st.st_mtime_ns, subdirs, files)
        return subdirs, files


def _walk_jsonl(root: Path, max_depth: int, cache: DirCache) -> list[str]:
    """``*.jsonl`` regular files below root, depth-bounded, never through a symlink."""
    found: list[str] = []
    stack = [(str(root), 0)]
    while stack:
        directory, depth = stack.pop()
        listing = cache.listing(directory)
        if listing is None:
            continue
        subdirs, files = listing
        if depth < max_depth:
            stack.extend((sub, depth + 1) for sub in subdirs)
        found.extend(files)
    return found


def env_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    return Path(value).expanduser() if value else None
