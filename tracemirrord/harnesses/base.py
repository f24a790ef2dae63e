"""The harness contract: where an agent keeps its sessions, how to find them, how to open each one.

A ``Harness`` turns its roots into ``SessionRef``s (a session id, a safe key segment, and where the
session lives) and opens each as a ``source.Source``, the only thing the writer (mirror.py) sees.
One harness instance serves one running harness task, so it may keep caches and shared readers
(a directory-listing cache; one database reader for all of hermes' sessions). Source kinds:

- ``jsonl``: append-only JSONL files, byte-offset cursor (``JsonlHarness``, harnesses/jsonl.py).
- ``sqlite``: append-only rows, rowid cursor (hermes).
- ``document``: records rewritten in place, change cursor (opencode, old gemini-cli).

Adding an agent means one small module with a ``Harness`` subclass (for JSONL agents a
``JsonlHarness`` with ``default_roots`` and ``session_id``) and one line in ``REGISTRY``
(harnesses/__init__.py); docs/adding-a-harness.md walks through it.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import anyio
import anyio.to_thread

from tracemirrord.model import is_safe_segment
from tracemirrord.source import SessionInfo, Source
from tracemirrord.timers import timeout_s

SourceKind = Literal["jsonl", "sqlite", "document"]
_DESCRIBE_LINE_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class SessionRef:
    """A session found on disk: its id (a safe key segment) and where its source is.

    ``path`` is the file (JSONL, document) or the database that holds the session; ``root`` the
    directory it was found below, from which every open walks without following a symlink
    (harnesses/safeopen.py; None: only the last component is guarded).
    """

    session_id: str
    path: Path
    root: Path | None = field(default=None, compare=False)  # where ``path`` was found: same session
    # one source with many projects' work (Claude Code's prompt history): no single cwd to filter on
    many_projects: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file that belongs to a session but is no transcript (Claude Code's tool-results).

    Mirrored once, redacted, as its own create-only object ``<session prefix>/<name>``.
    """

    session_id: str
    name: str  # relative key below the session prefix, e.g. ``tool-results/toolu_01.txt``
    path: Path
    root: Path | None = field(default=None, compare=False)  # opened from here (see SessionRef)


class SharedCursors(Protocol):
    """Where a harness keeps read positions shared by many sessions (the local checkpoint)."""

    async def load(self, source: str) -> str | None: ...

    async def save(self, source: str, value: str) -> None: ...


async def sleep_unless(seconds: float, stopping: anyio.Event) -> None:
    """Wait ``seconds`` or until ``stopping``: a watch loop's pace without notifications."""
    with anyio.move_on_after(timeout_s(seconds)):
        await stopping.wait()


@dataclass
class HarnessHooks:
    """What the harness task hands a harness's ``watch``: shared cursors, and a way to wake a session.

    ``wake(session_id)`` makes the session's follower read now (starting it again if it was parked);
    it is how a harness that notices changes itself (one database for many sessions) gets low lag
    without every follower polling.
    """

    cursors: SharedCursors
    wake: Callable[[str], None]
    agent_id: str = ""  # this daemon's agent id (names per-machine sessions such as a prompt log)
    # ``await pause(seconds, stopping)`` between two looks of a watch loop: at least ``seconds``;
    # where file-system notifications cover the roots, longer, until something below them changes
    pause: Callable[[float, anyio.Event], Awaitable[None]] = sleep_unless


class Harness:
    """One agent: its roots, its sessions and how to open each as a Source."""

    name: ClassVar[str]
    kind: ClassVar[SourceKind]
    root_env: ClassVar[tuple[str, ...]] = ()  # the agent's own variables that move its root
    # Set by the harness task before the first discover (also under --once, where watch() does not
    # run): shared cursors and wake-ups.
    hooks: HarnessHooks | None = None
    # True when every change its discovery can see raises a notification in the directories the
    # harness task watches: then, under notifications, a scan tick with nothing notified since the
    # last scan is skipped (it would find the same). False where discovery looks beyond them.
    notified_discovery: ClassVar[bool] = False

    def default_roots(self, env: Mapping[str, str], home: Path) -> list[Path]:
        """Where this agent keeps sessions, from its own environment variables, else under home."""
        raise NotImplementedError

    async def discover(self, roots: list[Path]) -> Discovery:
        """Every session below the roots (the previous Discovery object itself if nothing changed)."""
        raise NotImplementedError

    def discover_blocking(self, roots: list[Path]) -> Discovery:
        """The same, for ``--check`` outside the event loop."""
        raise NotImplementedError

    def open_source(self, ref: SessionRef, *, max_line_bytes: int) -> Source:
        """The Source that follows one discovered session."""
        raise NotImplementedError

    async def watch(self, roots: list[Path], hooks: HarnessHooks, stopping: anyio.Event) -> None:
        """Run beside the followers until ``stopping`` (optional): notice changes, call ``hooks.wake``.

        The default watches nothing: each follower probes its own source.
        """

    async def close(self) -> None:
        """Release what the harness holds open (database connections)."""


class JsonlHarness(Harness):
    """An agent whose sessions are append-only ``*.jsonl`` files below one or more roots."""

    kind: ClassVar[SourceKind] = "jsonl"
    max_depth: ClassVar[int] = 4  # directory levels below a root that may hold session files
    suffixes: ClassVar[tuple[str, ...]] = (".jsonl",)  # file names that may be sessions

    def __init__(self) -> None:
        self._dirs = DirCache(self.suffixes)

    def session_id(self, root: Path, path: Path) -> str | None:
        """The session id for a file below ``root`` (None: not a session file)."""
        raise NotImplementedError

    async def discover(self, roots: list[Path]) -> Discovery:
        return await anyio.to_thread.run_sync(self.scan, roots, self._dirs)

    def discover_blocking(self, roots: list[Path]) -> Discovery:
        return self.scan(roots, DirCache(self.suffixes))

    def open_source(self, ref: SessionRef, *, max_line_bytes: int) -> Source:
        from tracemirrord.harnesses.jsonl import JsonlSource

        return JsonlSource(ref.path, max_line_bytes=max_line_bytes, describe=self.describe, root=ref.root)

    def scan(self, roots: list[Path], cache: DirCache | None = None) -> Discovery:
        """Every session file below the roots, and the files refused for an unsafe id.

        Never follows a symlink below a root (a root that is a symlink is followed, deliberately,
        and listed afresh whenever its target changes); a session id found at two paths (an
        archive move caught between two listings) is reported once, at its larger file. With a
        ``cache`` whose directories did not change since the last call, the previous Discovery
        object itself is returned.
        """
        cache = cache or DirCache(self.suffixes)
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
                    found[session_id] = SessionRef(session_id, path, root)
        cache.result, cache.result_version = Discovery(list(found.values()), refused), cache.version
        return cache.result

    def describe(self, lines: list[bytes]) -> SessionInfo:
        """Session metadata from its first records: top level, a ``payload``, or a ``message``.

        Claude Code: ``cwd``, ``timestamp``, ``gitBranch``, ``version``, ``message.model``; Codex:
        ``payload.cwd``, ``payload.cli_version``, ``payload.git.branch``, ``payload.model``; pi:
        the header's ``cwd`` and ``timestamp``, ``model`` or ``message.model`` later.
        """
        found: dict[str, str] = {}
        for record in json_records(lines):
            nested = [record.get("payload"), record.get("message")]
            git = [d.get("git") for d in (record, *nested) if isinstance(d, dict)]
            for source in (record, *nested, *git):
                if not isinstance(source, dict):
                    continue
                for name, keys in _DESCRIBE_KEYS.items():
                    for key in keys:
                        value = source.get(key)
                        if name not in found and isinstance(value, str) and value:
                            found[name] = value
        return SessionInfo(
            cwd=found.get("cwd"),
            started_at=found.get("started_at"),
            model=found.get("model"),
            git_branch=found.get("git_branch"),
            agent_version=found.get("agent_version"),
        )


# SessionInfo field -> the record keys that hold it in the JSONL agents' formats (harnesses.md).
_DESCRIBE_KEYS = {
    "cwd": ("cwd",),
    "started_at": ("timestamp",),
    "model": ("model",),
    "git_branch": ("gitBranch", "branch"),
    "agent_version": ("version", "cli_version"),
}


@dataclass(frozen=True, slots=True)
class Discovery:
    """What a scan of a harness's roots found.

    ``refused`` are sources that are not followed, each with its reason: an unsafe session id, or
    a format this version does not understand (``UnknownSource``). They are logged once and shown
    by ``--check``; nothing of them is written.
    """

    sessions: list[SessionRef]
    refused: list[Refused] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)


class Refused(ValueError):
    """A source that is not followed; the message says which and why."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


class UnsafeSessionId(Refused):
    """A file whose session id cannot be one key segment: refused, logged, never written."""

    def __init__(self, path: Path, session_id: str) -> None:
        super().__init__(path, f"session id {session_id!r} of {path} is not a safe key segment")
        self.session_id = session_id


class UnknownSource(Refused):
    """A source of a kind or version this harness does not understand: reported by name, skipped."""

    def __init__(self, path: Path, what: str) -> None:
        super().__init__(path, f"{path}: {what}; not followed by this version of tracemirrord")


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

    def __init__(self, suffixes: tuple[str, ...] = (".jsonl",)) -> None:
        self.suffixes = suffixes
        self._listings: dict[str, tuple[int, list[str], list[str]]] = {}
        self.version = 0  # bumped whenever a listing differs from the cached one
        self.result: Discovery | None = None
        self.result_version = -1

    def listing(self, directory: str, *, follow: bool = False) -> tuple[list[str], list[str]] | None:
        """(subdirectories, files with one of the suffixes) of a directory; None when gone or unreadable.

        ``follow`` (a harness root only): the directory may be a symlink, followed deliberately, and
        its target's mtime is what is compared (the link's own never changes). Below a root a
        directory that became a symlink is not listed: it is not followed.
        """
        try:
            st = os.stat(directory, follow_symlinks=follow)
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
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
        listed = self._list(directory, follow)
        if listed is None:
            return None
        subdirs, files = listed
        if cached is None or (cached[1], cached[2]) != (subdirs, files):
            self.version += 1
        self._listings[directory] = (st.st_mtime_ns, subdirs, files)
        return subdirs, files

    def _list(self, directory: str, follow: bool) -> tuple[list[str], list[str]] | None:
        """Read a directory through a descriptor opened without following a symlink (unless ``follow``)."""
        flags = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0)
        if not follow:
            flags |= getattr(os, "O_NOFOLLOW", 0)
        subdirs: list[str] = []
        files: list[str] = []
        try:
            fd = os.open(directory, flags)
        except OSError:
            return None
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            subdirs.append(os.path.join(directory, entry.name))
                        elif entry.name.endswith(self.suffixes) and entry.is_file(follow_symlinks=False):
                            files.append(os.path.join(directory, entry.name))
                    except OSError:
                        continue
        except OSError:
            return None
        finally:
            os.close(fd)
        return subdirs, files


def _walk_jsonl(root: Path, max_depth: int, cache: DirCache) -> list[str]:
    """``*.jsonl`` regular files below root, depth-bounded, never through a symlink below the root."""
    found: list[str] = []
    stack = [(str(root), 0)]
    while stack:
        directory, depth = stack.pop()
        listing = cache.listing(directory, follow=depth == 0)
        if listing is None:
            continue
        subdirs, files = listing
        if depth < max_depth:
            stack.extend((sub, depth + 1) for sub in subdirs)
        found.extend(files)
    return found


def json_records(lines: list[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects among a session's first lines (skipping huge, non-JSON and non-object ones)."""
    for line in lines:
        if len(line) > _DESCRIBE_LINE_LIMIT:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def env_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    return Path(value).expanduser() if value else None
