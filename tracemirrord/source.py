"""The source contract: what the writer of parts asks of any session source (design.md section 5).

Every kind of source implements ``Source``: an append-only JSONL file (byte offset), rows of a
SQLite table (rowid), documents or rows rewritten in place (a change cursor). The writer
(mirror.py) knows nothing of files or tables; it only keeps ``Position``s, asks for the
``Records`` after one, and puts them in the bucket.

A ``Position`` is opaque to the writer:

- ``generation`` counts discontinuities: a source that no longer continues what was mirrored
  (a truncated or replaced file, a recreated database) starts the next generation at cursor 0.
- ``cursor`` is an integer that only grows within a generation: a byte offset at a line
  boundary (JSONL), the highest rowid mirrored (SQLite), a count of record versions (documents).
- ``check`` is a short ASCII string that only the source interprets: a file fingerprint, a
  database identity, a hash of what was emitted or the change cursor to resume from. It is stored
  with every part (object metadata) and in meta.json, so the bucket alone tells where to resume.

A source whose harness watches it and calls ``HarnessHooks.wake`` on every change (one database
for many sessions) may have a ``woken`` attribute that is true while that watch runs; its follower
then polls it only as a fallback, every few seconds, instead of four times a second.

Reading is pure in one sense: ``read(after)`` for the same ``after`` on an unchanged source gives
the same records, so a part that landed before a crash is recognised and never duplicated.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

CursorUnit = Literal["bytes", "rows", "records"]

# What meta.json keys the session metadata below under (SessionInfo fields, in order).
INFO_FIELDS = ("cwd", "started_at", "model", "git_branch", "title", "agent_version")


@dataclass(frozen=True, slots=True)
class Position:
    """Where mirroring of one session stands: generation, integer cursor, source-checked value."""

    generation: int = 0
    cursor: int = 0
    check: str | None = None  # None only at cursor 0 of a generation

    @property
    def at_start(self) -> bool:
        return self.cursor == 0


START = Position()


@dataclass(frozen=True, slots=True)
class Records:
    """Complete records read after ``start``, as JSONL bytes (each line ends with ``\\n``).

    ``data`` is raw (not yet redacted). ``source_bytes`` is how much of the source they cover
    (the byte range for a file; the size of the rows' JSON for a table). ``dropped`` counts
    records too long to hold, replaced by a placeholder line (frame.py).
    An empty ``data`` with ``end == start`` means: nothing complete yet (a partial line waits).
    """

    start: Position
    end: Position
    data: bytes
    source_bytes: int
    dropped: int = 0

    @property
    def empty(self) -> bool:
        return not self.data and self.end == self.start


@dataclass(frozen=True, slots=True)
class Discontinuity:
    """The source no longer continues what was mirrored up to the position; ``reason`` says why.

    The writer flushes what it holds, then starts the next generation at cursor 0.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class Probe:
    """A cheap look at a source, for the scheduler.

    ``token`` differs whenever the source may hold something new (a file's size, inode and mtime;
    a database's WAL and file stats plus what was buffered for this session). ``mtime`` is when the
    source last changed (epoch seconds): it paces polling and decides parking.
    """

    token: Hashable
    mtime: float


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What a session's records (or its agent's index) say about it; each field may be unknown.

    The writer passes these through the redactor before they go into meta.json.
    """

    cwd: str | None = None
    started_at: str | None = None
    model: str | None = None
    git_branch: str | None = None
    title: str | None = None
    agent_version: str | None = None
    ended_at: str | None = None  # the agent itself says the session ended (hermes' sessions.ended_at)
    extra: dict[str, str] = field(default_factory=dict)


class UnknownFormat(Exception):
    """The source is of a kind or version this harness does not understand (named in the message).

    Raised by ``read`` or ``probe``; the session is reported in status and the logs by name and
    skipped until the source changes, and the harness task keeps running.
    """


class SourceRefused(Exception):
    """The source may not be read where it now is (its path leaves the agent's directory).

    Raised by ``read``; like UnknownFormat the session is reported in status and the logs by name,
    nothing of it is read, and it is tried again later (the path may be put back).
    """


@runtime_checkable
class Source(Protocol):
    """One session's source, as the writer sees it. Implementations live in ``harnesses/``."""

    unit: CursorUnit

    @property
    def location(self) -> str:
        """Where the source is, for meta.json's ``source_path`` and the logs (a path, or db#id)."""
        ...

    def probe(self) -> Probe | None:
        """A cheap look (a stat or an in-memory check; may block briefly); None: the source is gone."""
        ...

    def settled_at(self, position: Position) -> Probe | None:
        """Blocking: the probe to park at when the source holds exactly ``position`` and nothing more.

        None means "not known to be settled" (start following it). Used by the start-up triage, in
        one worker-thread batch over many sessions, so it must not touch the network or await.
        """
        ...

    async def read(self, after: Position, max_bytes: int) -> Records | Discontinuity | None:
        """Complete records after ``after``, at most about ``max_bytes`` of them (at least one).

        Returns None when the source is gone, a Discontinuity when it no longer continues what was
        mirrored, and an empty Records when nothing complete is there yet. Never returns a record
        at or before ``after`` (a re-read after a crash adds nothing).
        """
        ...

    def behind(self, position: Position) -> int:
        """How much the source holds beyond ``position``, in ``unit``s, as of the last probe/read."""
        ...

    def describe(self, lines: list[bytes]) -> SessionInfo:
        """Session metadata from the first (already redacted) records, plus what the source knows."""
        ...

    def committed(self, position: Position) -> None:
        """Everything up to ``position`` is durably in the bucket (a shared reader may now free it)."""
        ...
