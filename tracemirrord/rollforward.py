"""Roll-forward: what the bucket says about one session, read from the bucket alone.

The local checkpoint is a cache; after a crash the bucket may be ahead of it (parts put, checkpoint
not yet saved), and with the state dir deleted the bucket is all there is. ``read_bucket`` lists
the session's prefix once (parts and whether meta.json exists in one request), reads meta.json
when there is one, picks the most advanced of {cached state, meta.json} whose last part really is
in the bucket, and adopts every listed part after it from its object metadata (a HEAD each, no
download). The writer then continues from that state, so nothing is uploaded twice.

A part without usable metadata (a bucket copied without its hidden sidecars, an object edited by
hand) never wedges the session: it is described from meta.json's window when an entry there has its
seq and its body's sha256; else, if it is the last part, the session continues after it as a new
generation (the source is mirrored again from its start, nothing already in the bucket is touched),
and a part in the middle is passed over (the parts after it say where mirroring stands).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog

from tracemirrord import layout
from tracemirrord.model import Lease, PartRecord, SessionKey, SessionState
from tracemirrord.store.base import NotFound, ObjectInfo, ObjectStore


@dataclass
class BucketView:
    """A session as the bucket has it: its state, meta.json's ETag, and whether anything is there."""

    state: SessionState
    meta_etag: str | None
    empty: bool  # no object at all under the session's prefix: new to the bucket


async def read_bucket(
    store: ObjectStore,
    project: str,
    key: SessionKey,
    cached: SessionState | None,
    *,
    unit: str,
    parts_window: int,
    check_lease: Callable[[Lease | None], None],
    log: structlog.typing.FilteringBoundLogger,
) -> BucketView:
    """Roll ``cached`` forward to what the bucket holds (``check_lease`` may raise to back off first)."""
    prefix = layout.session_prefix(project, key)
    listing = [info for info in await store.list(prefix) if "/" not in info.key[len(prefix) :]]
    listed = {seq: info for info in listing if (seq := layout.parse_part_key(info.key)) is not None}
    meta_key = layout.meta_key(project, key)
    bucket_state: SessionState | None = None
    etag: str | None = None
    if any(info.key == meta_key for info in listing):
        try:
            meta = await store.get(meta_key)
            etag = meta.info.etag
            bucket_state = layout.parse_meta(meta.body, key)
        except NotFound:
            pass  # removed since the listing: written afresh
        except layout.LayoutError as exc:
            log.warning("meta.json unusable; rebuilding it from the parts", error=str(exc))
    if bucket_state is not None:
        check_lease(bucket_state.lease)  # before any HEAD: a session another agent holds costs little
    state = _pick_base(key, listed, unit, log, cached, bucket_state)
    last = max(listed, default=-1)
    for seq in sorted(s for s in listed if s >= state.next_seq):
        info = await store.head(listed[seq].key)
        try:
            part = layout.decode_part_metadata(info.key, info.metadata, info.size, info.last_modified)
        except layout.LayoutError as exc:
            repaired = await _repair(store, info, seq, bucket_state)
            if repaired is None:
                _pass_over(state, seq, last, str(exc), log)
                continue
            log.warning("part metadata missing; described from meta.json", seq=seq)
            part = repaired
        state.adopt(part, parts_window)
    if bucket_state is not None and state.started_at is None:
        state.started_at, state.cwd = bucket_state.started_at, bucket_state.cwd
        state.info = state.info or dict(bucket_state.info)
        state.extra = state.extra or dict(bucket_state.extra)
    state.unit = unit
    return BucketView(state, etag, not listing)


def _pick_base(
    key: SessionKey,
    listed: dict[int, object],
    unit: str,
    log: structlog.typing.FilteringBoundLogger,
    *candidates: SessionState | None,
) -> SessionState:
    """The most advanced candidate whose last part is really in the bucket, else a fresh state."""
    usable = [c for c in candidates if c is not None and (c.next_seq == 0 or c.next_seq - 1 in listed)]
    if usable:
        return copy.deepcopy(max(usable, key=lambda c: c.next_seq))
    if any(c is not None for c in candidates):
        log.warning("cached state does not match the bucket; rebuilding from the parts")
    return SessionState(key=key, unit=unit)


async def _repair(
    store: ObjectStore, info: ObjectInfo, seq: int, meta: SessionState | None
) -> PartRecord | None:
    """A part's record from meta.json's window, if an entry has its seq and its body's sha256."""
    entry = next((p for p in (meta.recent_parts if meta else []) if p.seq == seq), None)
    if entry is None:
        return None
    try:
        body = (await store.get(info.key)).body
    except NotFound:
        return None
    if hashlib.sha256(body).hexdigest() != entry.sha256:
        return None
    return replace(entry, uploaded_bytes=len(body))


def _pass_over(
    state: SessionState, seq: int, last: int, error: str, log: structlog.typing.FilteringBoundLogger
) -> None:
    """Go on past a part nothing can describe: after the last one, as a new generation from cursor 0."""
    state.next_seq = seq + 1
    if seq < last:
        log.warning(
            "part has no usable metadata; the parts after it say where mirroring stands", seq=seq, error=error
        )
        return
    state.start_generation()
    log.warning(
        "last part has no usable metadata; continuing as a new generation from the source's start",
        seq=seq,
        generation=state.generation,
        error=error,
    )
