"""Read a session back from the bucket: its parts in seq order, checked for gaps and overlaps.

Used by the tests and by ``tracemirrorctl`` verbs (cat, verify, restore); it relies only on the bucket
(layout.py's keys and part metadata), never on local state.

The checks, in the order a reader meets them (the first failure names the part):

- *missing*: the seqs listed are 0, 1, 2, ... without a hole, and, when meta.json says how many
  parts there are (``part_count``), none is missing at the end;
- *metadata*: each part carries our part metadata;
- *checksum*: each body has the sha256 its metadata names;
- *overlap* / *gap*: within a generation each part starts where the previous one ended (the first at 0).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Literal

from tracemirrord import layout
from tracemirrord.model import PartRecord, SessionKey
from tracemirrord.store.base import NotFound, ObjectInfo, ObjectStore

ProblemKind = Literal["missing", "metadata", "checksum", "overlap", "gap"]

# Part GETs in flight at once while reading a session in order: enough to hide a round trip.
FETCH_WINDOW = 8


class ReassemblyError(Exception):
    """The parts of a session do not line up: a gap, an overlap, or a body that fails its sha256.

    ``kind`` says which check failed and ``seq`` the first part it concerns.
    """

    def __init__(self, message: str, *, kind: ProblemKind = "missing", seq: int | None = None) -> None:
        super().__init__(message)
        self.kind: ProblemKind = kind
        self.seq = seq


@dataclass
class Reassembled:
    """One session's mirrored bytes per generation, and the parts they came from."""

    generations: dict[int, bytes] = field(default_factory=dict)
    parts: list[PartRecord] = field(default_factory=list)


def listed_parts(infos: Iterable[ObjectInfo]) -> list[tuple[int, str]]:
    """(seq, key) of every part among ``infos``, in seq order (other objects are ignored)."""
    return sorted((seq, info.key) for info in infos if (seq := layout.parse_part_key(info.key)) is not None)


def check_listing(key: SessionKey, listed: Sequence[tuple[int, str]], part_count: int | None = None) -> None:
    """Raise ``missing`` for the first seq absent from the listing (up to ``part_count`` when known)."""
    for expected_seq, (seq, _) in enumerate(listed):
        if seq != expected_seq:
            raise ReassemblyError(
                f"{key}: part {expected_seq} is missing (found {seq})", kind="missing", seq=expected_seq
            )
    if part_count is not None and part_count > len(listed):
        raise ReassemblyError(
            f"{key}: part {len(listed)} is missing (meta.json counts {part_count} parts)",
            kind="missing",
            seq=len(listed),
        )


class ChainChecker:
    """Checks parts one at a time, in seq order: each body against its sha256, each start against the
    end of the previous part of its generation. Holds only the ends, so a session of any size streams."""

    def __init__(self, key: SessionKey) -> None:
        self.key = key
        self.ends: dict[int, int] = {}

    def add(self, part: PartRecord, body: bytes) -> None:
        key = self.key
        if hashlib.sha256(body).hexdigest() != part.sha256:
            raise ReassemblyError(
                f"{key}: part {part.seq} does not match its sha256 (the object was changed)",
                kind="checksum",
                seq=part.seq,
            )
        expected = self.ends.get(part.generation, 0)
        if part.start != expected:
            kind: ProblemKind = "overlap" if part.start < expected else "gap"
            raise ReassemblyError(
                f"{key}: part {part.seq} starts at {part.start} in generation {part.generation}, "
                f"expected {expected} ({'overlaps the previous part' if kind == 'overlap' else 'a gap'})",
                kind=kind,
                seq=part.seq,
            )
        self.ends[part.generation] = part.end


async def fetch_part(
    store: ObjectStore, key: SessionKey, seq: int, object_key: str
) -> tuple[PartRecord, bytes]:
    """One part's record (from its metadata) and body; a part deleted since the listing is ``missing``."""
    try:
        obj = await store.get(object_key)
    except NotFound:
        raise ReassemblyError(f"{key}: part {seq} is missing", kind="missing", seq=seq) from None
    try:
        part = layout.decode_part_metadata(
            object_key, obj.info.metadata, obj.info.size, obj.info.last_modified
        )
    except layout.LayoutError as exc:
        raise ReassemblyError(f"{key}: part {seq}: {exc}", kind="metadata", seq=seq) from None
    return part, obj.body


async def iter_parts(
    store: ObjectStore, key: SessionKey, listed: Sequence[tuple[int, str]], *, window: int = FETCH_WINDOW
) -> AsyncIterator[tuple[PartRecord, bytes]]:
    """The listed parts in seq order, ``window`` GETs ahead of the consumer (bounded memory)."""
    pending: list[asyncio.Task[tuple[PartRecord, bytes]]] = []
    upcoming = iter(listed)
    try:
        while True:
            while len(pending) < window:
                nxt = next(upcoming, None)
                if nxt is None:
                    break
                pending.append(asyncio.ensure_future(fetch_part(store, key, *nxt)))
            if not pending:
                return
            yield await pending.pop(0)
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)  # prefetches nobody wants any more


async def reassemble(store: ObjectStore, project: str, key: SessionKey) -> Reassembled:
    """Concatenate a session's parts per generation, verifying continuity and checksums."""
    listed = listed_parts(await store.list(layout.session_prefix(project, key) + "part-"))
    check_listing(key, listed)
    checker = ChainChecker(key)
    out = Reassembled()
    chunks: dict[int, list[bytes]] = {}
    async with aclosing(iter_parts(store, key, listed)) as parts:
        async for part, body in parts:
            checker.add(part, body)
            chunks.setdefault(part.generation, []).append(body)
            out.parts.append(part)
    out.generations = {g: b"".join(c) for g, c in chunks.items()}
    return out
