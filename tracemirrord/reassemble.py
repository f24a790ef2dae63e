"""Read a session back from the bucket: its parts in seq order, checked for gaps and overlaps.

Used by the tests and by ``tracemirrorctl`` verbs; it relies only on the bucket (layout.py's keys
and part metadata), never on local state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from tracemirrord import layout
from tracemirrord.model import PartRecord, SessionKey
from tracemirrord.store.base import ObjectStore


class ReassemblyError(Exception):
    """The parts of a session do not line up: a gap, an overlap, or a body that fails its sha256."""


@dataclass
class Reassembled:
    """One session's mirrored bytes per generation, and the parts they came from."""

    generations: dict[int, bytes] = field(default_factory=dict)
    parts: list[PartRecord] = field(default_factory=list)


async def reassemble(store: ObjectStore, project: str, key: SessionKey) -> Reassembled:
    """Concatenate a session's parts per generation, verifying continuity and checksums."""
    prefix = layout.session_prefix(project, key)
    listed = sorted(
        (seq, info.key)
        for info in await store.list(prefix + "part-")
        if (seq := layout.parse_part_key(info.key)) is not None
    )
    out = Reassembled()
    chunks: dict[int, list[bytes]] = {}
    ends: dict[int, int] = {}
    for expected_seq, (seq, object_key) in enumerate(listed):
        if seq != expected_seq:
            raise ReassemblyError(f"{key}: part {expected_seq} is missing (found {seq})")
        obj = await store.get(object_key)
        part = layout.decode_part_metadata(
            object_key, obj.info.metadata, obj.info.size, obj.info.last_modified
        )
        if hashlib.sha256(obj.body).hexdigest() != part.sha256:
            raise ReassemblyError(f"{key}: part {seq} does not match its sha256")
        if part.start != ends.get(part.generation, 0):
            raise ReassemblyError(
                f"{key}: part {seq} starts at {part.start} in generation {part.generation}, "
                f"expected {ends.get(part.generation, 0)}"
            )
        ends[part.generation] = part.end
        chunks.setdefault(part.generation, []).append(obj.body)
        out.parts.append(part)
    out.generations = {g: b"".join(c) for g, c in chunks.items()}
    return out
