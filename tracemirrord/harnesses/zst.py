"""A zstd-compressed JSONL file (Codex's ``.jsonl.zst`` rollouts) as a ``source.Source``.

Codex compresses cold rollouts in place of the plain file (openai/codex
``codex-rs/rollout/src/compression.rs``, checked 2026-11): it writes ``<name>.jsonl.zst`` beside
``<name>.jsonl`` through a temp file, gives it the plain file's mtime, then deletes the plain file;
readers prefer the plain file while both exist, and resuming a session decompresses it back to
``<name>.jsonl``. The compressed file is therefore the *same session*: this source presents the
decompressed bytes with exactly the cursors and check values (``Fingerprint``) that ``JsonlSource``
gives the plain file, so a session mirrored from the ``.jsonl`` continues from the ``.zst`` (and back)
with nothing uploaded again, and a ``.zst`` first seen is mirrored from its decompressed content.

zstd streams cannot be read at an offset, so the file is decompressed once, in a worker thread, in
bounded chunks, into an anonymous temporary file (no memory beyond a chunk; nothing left behind after
a crash), keyed by the compressed file's (device, inode, size, mtime). Reads then run the same framing
and fingerprint steps as ``jsonl.read_chunk`` on that file. The copy is dropped once a read reaches
its end (a compressed file never grows) and rebuilt only if needed again.
"""

from __future__ import annotations

import functools
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread
import zstandard

from tracemirrord.harnesses.jsonl import (
    FileStat,
    JsonlSource,
    Mismatch,
    as_records,
    fingerprint_of,
    read_chunk_fd,
    stat_file,
)
from tracemirrord.harnesses.safeopen import PathEscape, open_source_file
from tracemirrord.model import FINGERPRINT_BYTES, Chunk, short_hash
from tracemirrord.source import (
    Discontinuity,
    Position,
    Probe,
    Records,
    SessionInfo,
    UnknownFormat,
)

ZST_SUFFIX = ".zst"
_CHUNK = 1 << 20
# A decompressed rollout larger than this is refused (a damaged or hostile file must not fill the disk).
MAX_DECOMPRESSED_BYTES = 16 * 2**30


def is_zst(path: Path | str) -> bool:
    return str(path).endswith(ZST_SUFFIX)


@dataclass(frozen=True, slots=True)
class _Key:
    """Identity of one compressed file version: a different key means decompress again."""

    dev: int
    ino: int
    size: int
    mtime: float

    @classmethod
    def of(cls, st: FileStat) -> _Key:
        return cls(st.dev, st.ino, st.size, st.mtime)


class _Decompressed:
    """The decompressed bytes of one compressed file version, in an anonymous temporary file."""

    def __init__(self, key: _Key, file: BinaryIO, size: int) -> None:
        self.key = key
        self.file = file
        self.size = size

    @property
    def fd(self) -> int:
        return self.file.fileno()

    def close(self) -> None:
        self.file.close()


def _open_zst(path: Path, root: Path | None = None) -> tuple[BinaryIO, FileStat] | None:
    """The compressed file opened read-only (never through a symlink below ``root``) and its stat;
    None when gone. Raises PathEscape (safeopen.py)."""
    try:
        fd = open_source_file(path, root)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb"), FileStat(st.st_size, st.st_dev, st.st_ino, st.st_mtime)


def _stream(file: BinaryIO, path: Path, sink: Callable[[bytes], None]) -> int:
    """Decompress ``file`` chunk by chunk into ``sink``; the decompressed size.

    A stream cut short yields what it holds (its complete lines are mirrored, the rest waits like
    a partial line); a stream that is no zstd at all, or too large, is an UnknownFormat.
    """
    reader = zstandard.ZstdDecompressor().stream_reader(file, read_size=_CHUNK, read_across_frames=True)
    total = 0
    try:
        while True:
            block = reader.read(_CHUNK)
            if not block:
                return total
            total += len(block)
            if total > MAX_DECOMPRESSED_BYTES:
                raise UnknownFormat(f"{path}: decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes")
            sink(block)
    except zstandard.ZstdError as exc:
        raise UnknownFormat(f"{path}: not a readable zstd stream ({exc})") from None


def decompress(path: Path, root: Path | None = None) -> _Decompressed | None:
    """Decompress the file at ``path`` into an anonymous temporary file (None when it is gone)."""
    opened = _open_zst(path, root)
    if opened is None:
        return None
    file, st = opened
    with file:
        out = tempfile.TemporaryFile(prefix="tracemirrord-zst-")
        try:
            size = _stream(file, path, out.write)
            out.flush()
        except BaseException:
            out.close()
            raise
    return _Decompressed(_Key.of(st), out, size)


def _summary(path: Path, root: Path | None = None) -> tuple[FileStat, int, bytes, bytes] | None:
    """(stat, decompressed size, first and last FINGERPRINT_BYTES) in one streaming pass, no copy."""
    opened = _open_zst(path, root)
    if opened is None:
        return None
    file, st = opened
    head = bytearray()
    tail = bytearray()

    def keep(block: bytes) -> None:
        if len(head) < FINGERPRINT_BYTES:
            head.extend(block[: FINGERPRINT_BYTES - len(head)])
        tail.extend(block[-FINGERPRINT_BYTES:])
        del tail[:-FINGERPRINT_BYTES]

    with file:
        size = _stream(file, path, keep)
    return st, size, bytes(head), bytes(tail)


class ZstJsonlSource(JsonlSource):
    """A ``.jsonl.zst`` file as a ``source.Source``: the plain file's cursors, over its decompressed bytes.

    Location, probe (a stat of the compressed file), describe and committed are the plain file's.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_line_bytes: int,
        describe: Callable[[list[bytes]], SessionInfo],
        root: Path | None = None,
    ) -> None:
        super().__init__(path, max_line_bytes=max_line_bytes, describe=describe, root=root)
        self._lock = threading.Lock()  # one decompressed copy, used from worker threads
        self._copy: _Decompressed | None = None
        self._plain_size: int | None = None  # decompressed size, once known

    def settled_at(self, position: Position) -> Probe | None:
        try:
            summary = _summary(self.path, self.root)
        except (UnknownFormat, PathEscape):
            return None
        if summary is None:
            return None
        st, size, head, tail = summary
        self._plain_size = size
        if size != position.cursor:
            return None
        if position.cursor:
            expected = fingerprint_of(position.check)
            if expected is None or expected.head_len > len(head):
                return None
            lookbehind = min(position.cursor, FINGERPRINT_BYTES)
            if short_hash(head[: expected.head_len]) != expected.head:
                return None
            if short_hash(tail[-lookbehind:]) != expected.tail:
                return None
        return Probe(st, st.mtime)

    async def read(self, after: Position, max_bytes: int) -> Records | Discontinuity | None:
        read = functools.partial(self._read_blocking, after, max_bytes)
        return as_records(after, await anyio.to_thread.run_sync(read))

    def _read_blocking(self, after: Position, max_bytes: int) -> Chunk | Mismatch | None:
        with self._lock:
            st = stat_file(self.path)
            if st is None:
                self._drop()
                return None
            if self._copy is None or self._copy.key != _Key.of(st):
                self._drop()
                self._copy = decompress(self.path, self.root)
                if self._copy is None:
                    return None
            copy = self._copy
            self._plain_size = copy.size
            chunk = read_chunk_fd(
                copy.fd,
                copy.size,
                generation=after.generation,
                start=after.cursor,
                expected=fingerprint_of(after.check),
                max_bytes=max_bytes,
                max_line_bytes=self.max_line_bytes,
            )
            if isinstance(chunk, Mismatch) or chunk.end == chunk.start:
                self._drop()  # at the end (or done with this copy): a compressed file never grows
            return chunk

    def _drop(self) -> None:
        if self._copy is not None:
            self._copy.close()
            self._copy = None

    def behind(self, position: Position) -> int:
        size = self._plain_size if self._plain_size is not None else self._size
        return max(0, size - position.cursor)

    def close(self) -> None:
        with self._lock:
            self._drop()
