"""Roll-forward: what the bucket says about one session, read from the bucket alone.

The local checkpoint is a cache; after a crash the bucket may be ahead of it (parts put, checkpoint
not yet saved), and with the state dir deleted the bucket is all there is. ``read_bucket`` lists
the session's prefix once (parts and whether meta.json exists in one request), reads meta.json
when there is one, picks the most advanced of {cached state, meta.json} whose last part really is
in the bucket, and adopts every listed part after it from its object metadata (a HEAD each, no
download). The writer then continues from that state, so nothing is uploaded twice.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from tracemirrord import layout
from tracemirrord.model import Lease, SessionKey, SessionState
from tracemirrord.store.base import NotFound, ObjectStore


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
    for seq in sorted(s for s in listed if s >= state.next_seq):
        info = await store.head(listed[seq].key)
        part = layout.decode_part_metadata(info.key, info.metadata, info.size, info.last_modified)
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
