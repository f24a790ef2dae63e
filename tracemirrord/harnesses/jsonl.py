"""Tail mechanics for append-only JSONL sources (claude-code, codex, pi, ...).

The cursor is a byte offset at a line boundary. Every read first checks that the file still starts
and, just before the cursor, still reads as it did when those bytes were mirrored (the
Fingerprint); a file that is shorter than the cursor or fails that check was truncated, replaced or
rewritten, and the caller starts a new generation. Reads are bounded: at most ``max_bytes`` per
read, and a single line is held whole only up to ``max_line_bytes``; beyond that it is streamed past
and replaced by a placeholder line (frame.py).

Every open walks from the agent's root without following a symlink (harnesses/safeopen.py), and
every read is checked against the file *after* it was read (``_still_holds``): a file rewritten
while it was being read (truncated and written again in place) could otherwise hand back bytes of
the new content under the old generation's fingerprint, and the rewrite would then go unnoticed.
A read that no longer matches is discarded: the rewrite is reported (a new generation) or the read
is tried again.

The functions here block; ``JsonlSource`` (the ``source.Source`` for these files) runs its reads
in a worker thread.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from tracemirrord.frame import complete_len, oversize_placeholder
from tracemirrord.harnesses.safeopen import PathEscape, open_source_file
from tracemirrord.model import FINGERPRINT_BYTES, Chunk, Fingerprint, short_hash
from tracemirrord.source import CursorUnit, Discontinuity, Position, Probe, Records, SessionInfo

_SCAN_BLOCK = 1 << 20
# Reads tried again when the file changed under them (not a rewrite of what was mirrored: a
# rewrite is reported at once); after that the read returns nothing and the next poll tries again.
_UNSTABLE_RETRIES = 3


@dataclass(frozen=True, slots=True)
class FileStat:
    """What a cheap poll of a source file says."""

    size: int
    dev: int
    ino: int
    mtime: float


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The file no longer holds what was mirrored up to the cursor; ``reason`` says why."""

    reason: str


def stat_file(path: Path) -> FileStat | None:
    """Size and identity of a regular file, or None when it is gone (or no longer a regular file)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return FileStat(st.st_size, st.st_dev, st.st_ino, st.st_mtime)


def unchanged_at(
    path: Path, cursor: int, expected: Fingerprint | None, root: Path | None = None
) -> FileStat | None:
    """The file's stat when it ends exactly at ``cursor`` and still matches ``expected``, else None.

    Lets a start-up triage park an old, fully mirrored session without loading it.
    """
    st = stat_file(path)
    if st is None or st.size != cursor:
        return None
    try:
        fd = open_source_file(path, root)
    except (OSError, PathEscape):
        return None
    try:
        return st if _verify(fd, cursor, expected) is None else None
    finally:
        os.close(fd)


def _pread(fd: int, length: int, offset: int) -> bytes:
    first = os.pread(fd, length, offset)
    if len(first) == length or not first:
        return first  # the usual case: one read, no copy
    out = bytearray(first)
    while len(out) < length:
        block = os.pread(fd, length - len(out), offset + len(out))
        if not block:
            break
        out += block
    return bytes(out)


def _verify(fd: int, start: int, expected: Fingerprint | None) -> Mismatch | None:
    if start == 0:
        return None
    if expected is None:
        return Mismatch("no fingerprint for a non-zero cursor")
    if short_hash(_pread(fd, expected.head_len, 0)) != expected.head:
        return Mismatch("the start of the file changed")
    lookbehind = min(start, FINGERPRINT_BYTES)
    if short_hash(_pread(fd, lookbehind, start - lookbehind)) != expected.tail:
        return Mismatch("the bytes before the cursor changed")
    return None


def _fingerprint(
    fd: int, start: int, end: int, data: bytes, raw: bool, prev: Fingerprint | None
) -> Fingerprint:
    """Fingerprint as of ``end``, taken from the bytes just read where possible (no second read race)."""
    if start == 0 and raw and len(data) >= min(end, FINGERPRINT_BYTES):
        head = data[:FINGERPRINT_BYTES]
    elif prev is not None and prev.head_len == FINGERPRINT_BYTES:
        head = b""
    else:
        head = _pread(fd, min(end, FINGERPRINT_BYTES), 0)
    if raw and len(data) >= FINGERPRINT_BYTES:
        tail = data[-FINGERPRINT_BYTES:]
    else:
        lookbehind = min(end, FINGERPRINT_BYTES)
        tail = _pread(fd, lookbehind, end - lookbehind)
    if not head and prev is not None:
        return Fingerprint(prev.head_len, prev.head, short_hash(tail))
    return Fingerprint.of(head, tail)


def read_chunk(
    path: Path,
    *,
    generation: int,
    start: int,
    expected: Fingerprint | None,
    max_bytes: int,
    max_line_bytes: int,
    root: Path | None = None,
) -> Chunk | Mismatch | None:
    """Complete lines after ``start`` (an empty Chunk when only a partial line is there).

    Returns None when the file is gone, a Mismatch when it no longer continues what was mirrored.
    Raises PathEscape when the path below ``root`` goes through a symlink. The lines returned are
    what the file held when they were read, checked after the read (``_still_holds``).
    """
    try:
        fd = open_source_file(path, root)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        for _ in range(_UNSTABLE_RETRIES):
            chunk = read_chunk_fd(
                fd,
                os.fstat(fd).st_size,
                generation=generation,
                start=start,
                expected=expected,
                max_bytes=max_bytes,
                max_line_bytes=max_line_bytes,
            )
            if isinstance(chunk, Mismatch) or chunk.end == chunk.start:
                return chunk
            verdict = _still_holds(fd, chunk, expected)
            if verdict is None:
                return chunk
            if isinstance(verdict, Mismatch):
                return verdict  # rewritten under the read: the bytes read are discarded
        return Chunk(generation, start, start, b"", expected or Fingerprint.of(b"", b""))
    finally:
        os.close(fd)


def _still_holds(fd: int, chunk: Chunk, expected: Fingerprint | None) -> Mismatch | str | None:
    """Whether the open file still holds what ``chunk`` says, checked after the read.

    None: it does. A Mismatch: what was mirrored before the chunk changed (a rewrite; the caller
    reports it and a new generation starts). A str: the chunk's own bytes changed or the file
    shrank under the read (read again). The chunk's bytes are compared with the file again, so a
    read that caught a rewrite half-way never passes; with a placeholder (an over-long line) its
    end fingerprint is compared instead.
    """
    mismatch = _verify(fd, chunk.start, expected)
    if mismatch is not None:
        return Mismatch(f"{mismatch.reason} while it was being read")
    if os.fstat(fd).st_size < chunk.end:
        return "the file shrank while it was being read"
    fp = chunk.fingerprint
    if short_hash(_pread(fd, fp.head_len, 0)) != fp.head:
        return "the start of the file changed while it was being read"
    lookbehind = min(chunk.end, FINGERPRINT_BYTES)
    if short_hash(_pread(fd, lookbehind, chunk.end - lookbehind)) != fp.tail:
        return "the lines read changed while they were being read"
    if not chunk.dropped and _pread(fd, len(chunk.data), chunk.start) != chunk.data:
        return "the lines read changed while they were being read"
    return None


def read_chunk_fd(
    fd: int,
    size: int,
    *,
    generation: int,
    start: int,
    expected: Fingerprint | None,
    max_bytes: int,
    max_line_bytes: int,
) -> Chunk | Mismatch:
    """``read_chunk`` on an open file of ``size`` bytes (a JSONL file, or a decompressed copy of one)."""
    if size < start:
        return Mismatch(f"file is shorter ({size} bytes) than the cursor ({start})")
    mismatch = _verify(fd, start, expected)
    if mismatch is not None:
        return mismatch
    read_limit = min(max_bytes, max_line_bytes)  # a longer line always takes the long-line path
    data = _pread(fd, min(read_limit, size - start), start)
    dropped = 0
    raw = True
    n = complete_len(data)
    if n:
        data = data[:n]
    elif len(data) < read_limit:
        data = b""  # a partial line: it waits for its newline
    else:
        data, line_end, dropped = _read_long_line(fd, start, data, max_line_bytes)
        n = line_end - start
        raw = not dropped
    end = start + n
    if end == start:
        fp = expected if expected is not None else Fingerprint.of(b"", b"")
        return Chunk(generation, start, start, b"", fp)
    fp = _fingerprint(fd, start, end, data, raw, expected)
    return Chunk(generation, start, end, data, fp, dropped)


def _read_long_line(fd: int, start: int, first: bytes, max_line_bytes: int) -> tuple[bytes, int, int]:
    """One line longer than a read: held whole up to the limit, else streamed past (placeholder).

    Returns (data, end offset, dropped count); (b"", start, 0) while its newline has not arrived.
    """
    blocks = [first]
    held = len(first)
    digest = hashlib.sha256(first)
    offset = start + len(first)
    while True:
        block = os.pread(fd, _SCAN_BLOCK, offset)
        if not block:
            return b"", start, 0
        newline = block.find(b"\n")
        piece = block if newline < 0 else block[: newline + 1]
        digest.update(piece)
        offset += len(piece)
        if blocks is not None:
            if held + len(piece) <= max_line_bytes:
                blocks.append(piece)
                held += len(piece)
            else:
                blocks = None  # too long to hold: keep hashing, stop keeping
        if newline >= 0:
            if blocks is not None:
                return b"".join(blocks), offset, 0
            return oversize_placeholder(offset - start, digest.hexdigest()), offset, 1


def fingerprint_of(check: str | None) -> Fingerprint | None:
    """The Fingerprint a check value holds (None when absent or not one: the read then mismatches)."""
    if check is None:
        return None
    try:
        return Fingerprint.decode(check)
    except ValueError:
        return None


def as_records(after: Position, chunk: Chunk | Mismatch | None) -> Records | Discontinuity | None:
    """A read's result in the source contract's terms (the check value is the encoded fingerprint)."""
    if chunk is None:
        return None
    if isinstance(chunk, Mismatch):
        return Discontinuity(chunk.reason)
    if chunk.end == chunk.start:
        return Records(after, after, b"", 0)
    end = Position(after.generation, chunk.end, chunk.fingerprint.encode())
    return Records(after, end, chunk.data, chunk.end - chunk.start, chunk.dropped)


class JsonlSource:
    """An append-only JSONL file as a ``source.Source``: byte cursor, fingerprint as check value."""

    unit: CursorUnit = "bytes"

    def __init__(
        self,
        path: Path,
        *,
        max_line_bytes: int,
        describe: Callable[[list[bytes]], SessionInfo],
        root: Path | None = None,
    ) -> None:
        self.path = path
        self.root = root  # opens walk from here without following a symlink (safeopen.py)
        self.max_line_bytes = max_line_bytes
        self._describe = describe
        self._size = 0

    @property
    def location(self) -> str:
        return str(self.path)

    def probe(self) -> Probe | None:
        st = stat_file(self.path)
        if st is None:
            return None
        self._size = st.size
        return Probe(st, st.mtime)

    def settled_at(self, position: Position) -> Probe | None:
        st = unchanged_at(self.path, position.cursor, fingerprint_of(position.check), self.root)
        return None if st is None else Probe(st, st.mtime)

    async def read(self, after: Position, max_bytes: int) -> Records | Discontinuity | None:
        read = functools.partial(
            read_chunk,
            self.path,
            generation=after.generation,
            start=after.cursor,
            expected=fingerprint_of(after.check),
            max_bytes=max_bytes,
            max_line_bytes=self.max_line_bytes,
            root=self.root,
        )
        return as_records(after, await anyio.to_thread.run_sync(read))

    def behind(self, position: Position) -> int:
        return max(0, self._size - position.cursor)

    def describe(self, lines: list[bytes]) -> SessionInfo:
        return self._describe(lines)

    def committed(self, position: Position) -> None:
        """Nothing to free: the file itself is the buffer."""
