"""Plain values shared by every stage of the pipeline: session keys, fingerprints, parts, state.

Nothing here does I/O. A ``SessionState`` is the whole truth tracemirrord keeps about one session;
meta.json and the local checkpoint are two renderings of it (layout.py owns the first).
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tracemirrord.source import Position

# How many bytes at the start and before the cursor identify a JSONL source (see Fingerprint).
FINGERPRINT_BYTES = 1024
MAX_SEGMENT_BYTES = 200


def is_safe_segment(value: str) -> bool:
    """True when ``value`` can be one bucket key segment: no '/', '\\', '..' or control characters."""
    if not value or len(value.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
        return False
    if value in (".", "..") or ".." in value or "/" in value or "\\" in value:
        return False
    return not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in value)


def utc_now_iso() -> str:
    """Now as ISO 8601 UTC with a Z suffix: informational only, never used for ordering."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def short_hash(data: bytes) -> str:
    """16 hex digits of sha256: enough to tell two prefixes apart, short enough for metadata."""
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SessionKey:
    """One session in the bucket: ``<harness>/<session-id>``, both safe key segments."""

    harness: str
    session_id: str

    def __str__(self) -> str:
        return f"{self.harness}/{self.session_id}"


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Identity of a JSONL source as far as it was mirrored.

    ``head`` hashes the first ``head_len`` bytes (at most FINGERPRINT_BYTES), ``tail`` hashes the
    FINGERPRINT_BYTES (or fewer) before the cursor. If either no longer matches the file, the file was
    truncated, replaced or rewritten, and what follows starts a new generation. Both are read
    again on every read, so an in-place rewrite is caught even when the file did not shrink.
    """

    head_len: int
    head: str
    tail: str

    def encode(self) -> str:
        return f"{self.head_len}:{self.head}:{self.tail}"

    @classmethod
    def decode(cls, text: str) -> Fingerprint:
        head_len, head, tail = text.split(":")
        return cls(int(head_len), head, tail)

    @classmethod
    def of(cls, head_bytes: bytes, tail_bytes: bytes) -> Fingerprint:
        head = head_bytes[:FINGERPRINT_BYTES]
        return cls(len(head), short_hash(head), short_hash(tail_bytes[-FINGERPRINT_BYTES:]))


@dataclass(frozen=True, slots=True)
class Chunk:
    """Complete source lines read after a cursor: ``data`` covers source bytes [start, end).

    ``fingerprint`` describes the source as of ``end``. ``dropped`` counts over-long lines that
    were replaced by a placeholder line (see frame.py).
    """

    generation: int
    start: int
    end: int
    data: bytes
    fingerprint: Fingerprint
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class PartRecord:
    """One part object: which stretch of its source it holds and what was uploaded for it.

    ``start``/``end`` are source cursors (source.Position) in ``generation``; ``check`` is the
    source's check value as of ``end``; ``source_bytes`` is how much source it covers (for a file,
    ``end - start``; for rows, the size of their JSON).
    """

    seq: int
    token: str
    generation: int
    start: int
    end: int
    sha256: str
    uploaded_bytes: int
    redactions: dict[str, int]
    uploaded_at: str | None
    check: str | None
    source_bytes: int


@dataclass(slots=True)
class Lease:
    """Who writes a session's parts: another instance's live lease makes us back off (lease.py).

    ``pid`` and ``pid_scope`` let a daemon on the same machine see that the holder's process is gone;
    leases written before 0.3 lack them.
    """

    agent_id: str
    instance: str
    renewed_at: str
    pid: int | None = None
    pid_scope: str | None = None


@dataclass(slots=True)
class SessionState:
    """Everything known about one mirrored session; meta.json and the checkpoint render it."""

    key: SessionKey
    source_path: str = ""
    cwd: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    last_uploaded_at: str | None = None
    generation: int = 0
    cursor: int = 0
    check: str | None = None  # the source's check value at ``cursor`` (source.Position)
    next_seq: int = 0
    total_source_bytes: int = 0
    total_uploaded_bytes: int = 0
    redaction_counts: dict[str, int] = field(default_factory=dict)
    recent_parts: list[PartRecord] = field(default_factory=list)
    lease: Lease | None = None
    unit: str = "bytes"  # what the cursor counts (source.CursorUnit)
    info: dict[str, str] = field(default_factory=dict)  # model, git_branch, title, agent_version
    extra: dict[str, str] = field(default_factory=dict)  # what else the source says (hermes' source)

    @property
    def position(self) -> Position:
        return Position(self.generation, self.cursor, self.check)

    def adopt(self, part: PartRecord, window: int) -> None:
        """Account for a part that is durably in the bucket (ours, or found there on start)."""
        self.generation = part.generation
        self.cursor = part.end
        self.check = part.check
        self.next_seq = part.seq + 1
        self.total_source_bytes += part.source_bytes
        self.total_uploaded_bytes += part.uploaded_bytes
        for rule, count in part.redactions.items():
            self.redaction_counts[rule] = self.redaction_counts.get(rule, 0) + count
        if part.uploaded_at:
            self.last_uploaded_at = part.uploaded_at
        self.recent_parts.append(part)
        del self.recent_parts[:-window]

    def start_generation(self) -> None:
        """The source no longer matches what was mirrored: continue from its start, next generation."""
        self.generation += 1
        self.cursor = 0
        self.check = None
