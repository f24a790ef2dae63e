"""One session's loop: read new complete lines, redact, put a part, update meta.json, checkpoint.

When the cursor moves: only after the part holding those bytes is durably in the bucket (the PUT
returned, or a HEAD proved an earlier attempt of the same bytes landed). Order of effects:
PUT part -> meta.json (when due) -> local checkpoint. A crash between any two leaves the bucket
ahead of the checkpoint, and the next start rolls forward from the bucket (``_roll_forward``),
adopting parts instead of uploading them again.

Part keys are fixed by (session, seq) (layout.part_token) and written create-only, so a second
writer racing for the same seq loses with 412, reads what won, and continues after it: parts never
overlap. The meta.json lease makes a second agent back off before it even tries.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import anyio
import anyio.to_thread
import structlog

from tracemirrord import layout
from tracemirrord.checkpoint import Checkpointer
from tracemirrord.frame import OVERSIZE_RULE
from tracemirrord.harnesses.base import JsonlHarness
from tracemirrord.harnesses.jsonl import FileStat, Mismatch, read_chunk, stat_file
from tracemirrord.model import Chunk, Lease, PartRecord, SessionKey, SessionState, utc_now_iso
from tracemirrord.redact import Redactor
from tracemirrord.store.base import (
    NotFound,
    ObjectStore,
    PreconditionFailed,
    StoreError,
    StoreRejected,
)

log = structlog.get_logger("tracemirrord.mirror")

LEASE_TTL_S = 120.0
MISSING_GRACE_S = 5.0
DRAIN_TIMEOUT_S = 5.0
_INLINE_REDACT_BYTES = 256 * 1024
_DESCRIBE_LINES = 8


class LeaseHeld(Exception):
    """Another agent holds a live lease on this session: back off, say so, do not write."""


class WriterConflict(Exception):
    """Another writer put a part at our seq: roll forward again from the bucket."""


@dataclass
class StoreHealth:
    """The store's health as the followers see it; transitions are logged once, not per request."""

    state: str = "ok"
    last_error: str | None = None
    last_ok_at: float | None = None

    def ok(self) -> None:
        if self.state != "ok":
            log.info("store reachable again")
        self.state = "ok"
        self.last_ok_at = time.time()

    def failed(self, exc: StoreError) -> None:
        """Record a failure; only the first of an outage is logged as an error, the rest at debug."""
        message = str(exc)
        if self.state != "unreachable":
            log.error("store error", error=message, kind=type(exc).__name__)
        else:
            log.debug("store error", error=message, kind=type(exc).__name__)
        self.state = "unreachable"
        self.last_error = message


@dataclass
class MirrorContext:
    """Everything the followers share; built once by the supervisor."""

    store: ObjectStore
    checkpoint: Checkpointer
    redactor: Redactor
    project: str
    agent_id: str
    instance: str
    host: str
    flush_interval_s: float
    part_max_bytes: int
    meta_interval_s: float
    max_line_bytes: int
    limiter: anyio.CapacityLimiter
    health: StoreHealth = field(default_factory=StoreHealth)
    backfill_cutoff: float | None = None  # sessions last modified before this are not mirrored
    parts_window: int = layout.META_PARTS_WINDOW


# A file untouched for this long is parked: no task or timer of its own; the harness's idle sweep
# stats it with all the other parked files in one batch and starts it again when it changes.
PARK_AFTER_S = 3600.0
PARKED_POLL_S = 600.0


def poll_interval_s(mtime: float, now: float) -> float:
    """How often to look at a file: often while it is being written, rarely once it is old."""
    age = now - mtime
    if age < 300:
        return 0.25
    if age < PARK_AFTER_S:
        return 1.0
    return PARKED_POLL_S


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter."""

    base_s: float = 1.0
    cap_s: float = 60.0
    attempt: int = 0

    def next(self) -> float:
        delay = min(self.cap_s, self.base_s * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


class SessionMirror:
    """Follows one session's source from its cursor into the bucket."""

    def __init__(self, key: SessionKey, path: Path, harness: JsonlHarness, ctx: MirrorContext) -> None:
        self.key = key
        self.path = path
        self.harness = harness
        self.ctx = ctx
        self.state: SessionState | None = None
        self.status = "idle"
        self.last_error: str | None = None
        self.last_flush_at: str | None = None
        self.lag_s: float | None = None
        self.source_size = 0
        self.finished = False
        self._loaded = False
        self._rolled_forward = False
        self._eligible = ctx.backfill_cutoff is None
        self._pending: list[Chunk] = []
        self._pending_bytes = 0
        self._pending_since: float | None = None
        self._more_to_read = False
        self._last_stat: FileStat | None = None
        self._missing_since: float | None = None
        self._meta_etag: str | None = None
        self._meta_written_at: float | None = None
        self._meta_seq = -1  # next_seq as of the last meta.json write
        self._once = False  # set by sync_once: mirror what is pending, then write meta.json once
        self._unclaimed = False  # --once on a session new to the bucket: meta.json comes at the end
        self._wake = anyio.Event()
        self.parked = False

    def park_at(self, st: FileStat) -> None:
        """Start parked: the file is known to need nothing until it differs from ``st``."""
        self._last_stat = st
        self.parked = True

    def use_cached(self, state: SessionState | None) -> None:
        """Start from this cached state (read with others in one batch) instead of loading it."""
        self.state = state
        self._loaded = True
        if state is not None:
            self._eligible = True

    def nudge(self) -> None:
        """Wake the follower now (its file changed, or the daemon is stopping)."""
        self._wake.set()

    def untouched_for(self, seconds: float, now: float) -> bool:
        """Was the file, when last looked at, last modified more than ``seconds`` before ``now``?"""
        return self._last_stat is not None and now - self._last_stat.mtime > seconds

    def changed_since_last_look(self) -> bool:
        """For the idle sweep (blocking stat): has the file changed since the follower last read it?"""
        return stat_file(self.path) != self._last_stat

    # ---------- status ----------

    @property
    def behind_bytes(self) -> int:
        cursor = self.state.cursor if self.state else 0
        return max(0, self.source_size - cursor)

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        return log.bind(harness=self.key.harness, session=self.key.session_id)

    # ---------- the loops ----------

    async def run(self, stopping: anyio.Event) -> None:
        """Follow until ``stopping``, the source is gone for good, or the file goes idle; then drain.

        A file idle for PARK_AFTER_S is *parked*: the task ends, its state is dropped (the bucket
        and the checkpoint keep it), and the harness's idle sweep starts ``run`` again when the
        file changes. Ten thousand old sessions then cost no task and no timer.
        """
        backoff = Backoff()
        park = False
        self.parked = False
        try:
            while not stopping.is_set() and not self.finished:
                try:
                    delay = await self.step()
                    backoff.reset()
                    if self.status == "error":
                        self.status, self.last_error = "following", None
                except LeaseHeld as exc:
                    self._fail("blocked", str(exc))
                    delay = LEASE_TTL_S / 4
                except WriterConflict as exc:
                    self.log.warning("another writer wrote this session; rolling forward", detail=str(exc))
                    delay = 0.0
                except StoreRejected as exc:
                    self.ctx.health.failed(exc)
                    self._fail("error", str(exc), quiet=True)
                    delay = max(30.0, backoff.next())
                except StoreError as exc:
                    self.ctx.health.failed(exc)
                    self._fail("error", str(exc), quiet=True)
                    delay = backoff.next()
                except Exception as exc:
                    self.log.exception("session follower failed; retrying")
                    self._fail("error", f"{type(exc).__name__}: {exc}")
                    delay = backoff.next()
                if delay is None:
                    break
                if delay >= PARKED_POLL_S and self.status != "error":
                    park = True
                    break
                if delay > 0 and not stopping.is_set():
                    with anyio.move_on_after(delay):
                        await self._wake.wait()
                    self._wake = anyio.Event()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(DRAIN_TIMEOUT_S):
                await self.drain()
            if park and not self._pending:
                self._drop_state()
                self.parked = True

    def _drop_state(self) -> None:
        """Forget everything but the last stat; the next read reloads the checkpoint and rolls forward."""
        self.state = None
        self._loaded = False
        self._rolled_forward = False
        self._meta_etag = None
        self._meta_written_at = None
        self._meta_seq = -1
        self._eligible = self.ctx.backfill_cutoff is None

    def _fail(self, status: str, message: str, *, quiet: bool = False) -> None:
        """Record why the session is not advancing; store outages are logged once by StoreHealth."""
        if message != self.last_error:
            emit = self.log.debug if quiet else self.log.warning
            emit("session not mirrored for now", status=status, error=message)
        self.status, self.last_error = status, message

    async def step(self, *, flush_all: bool = False) -> float | None:
        """One poll: read what is new, flush when due. Returns seconds to the next poll (None: done)."""
        now = time.time()
        st = stat_file(self.path)
        if st is None:
            return await self._source_missing(now)
        self._missing_since = None
        self.source_size = st.size
        if not self._loaded:
            await self._load_cached()
        if not self._eligible:
            cutoff = self.ctx.backfill_cutoff
            if cutoff is not None and st.mtime < cutoff and self.state is None:
                self.status = "idle"
                self._last_stat = st  # the idle sweep wakes us when it changes
                return poll_interval_s(st.mtime, now)
            self._eligible = True
        changed = st != self._last_stat
        flush_now = bool(self._pending) and (flush_all or self._flush_due())
        if changed or self._more_to_read or flush_now:
            async with self.ctx.limiter:
                if changed or self._more_to_read:
                    await self._read()
                    self._last_stat = st
                if self._pending and (flush_all or self._flush_due()):
                    await self._flush()
            if self._more_to_read:
                return 0.0
        if self._pending:
            assert self._pending_since is not None
            due_in = self._pending_since + self.ctx.flush_interval_s - time.monotonic()
            return max(0.01, min(due_in, poll_interval_s(st.mtime, now)))
        if self.state is not None and self.state.next_seq > self._meta_seq >= 0 and self._meta_due():
            await self._write_meta()
        self.status = "following" if now - st.mtime < 300 else "idle"
        return None if flush_all else poll_interval_s(st.mtime, now)

    async def sync_once(self) -> None:
        """Mirror everything pending now, write meta.json, and return (``tracemirrord --once``)."""
        self._once = True
        while await self.step(flush_all=True) == 0.0:
            pass
        await self.drain()

    async def drain(self) -> None:
        """Flush what is held and bring meta.json up to date (shutdown, --once, end of source)."""
        if self.state is None:
            return
        try:
            if self._pending:
                await self._flush()
            if self._rolled_forward and (
                self.state.next_seq != self._meta_seq or self.state.lease is not None
            ):
                await self._write_meta(release=True)
        except (StoreError, LeaseHeld, WriterConflict) as exc:
            self.log.warning("could not flush on the way out; the source keeps the bytes", error=str(exc))

    def relocate(self, path: Path) -> None:
        """The same session now lives at another path (an archive move): follow it there."""
        if path != self.path:
            self.log.info("session moved", old=str(self.path), new=str(path))
            self.path = path
            self._last_stat = None
            self._missing_since = None

    # ---------- state ----------

    async def _load_cached(self) -> None:
        self.use_cached(await self.ctx.checkpoint.load(self.key))

    async def _roll_forward(self) -> None:
        """Make ``state`` what the bucket says, adopting parts the cache does not know yet."""
        store, key = self.ctx.store, self.key
        # One listing shows the parts and whether meta.json exists: a session new to the bucket
        # costs one request here, not a GET that fails and then a LIST.
        prefix = layout.session_prefix(self.ctx.project, key)
        listing = [info for info in await store.list(prefix) if "/" not in info.key[len(prefix) :]]
        listed = {seq: info for info in listing if (seq := layout.parse_part_key(info.key)) is not None}
        meta_key = layout.meta_key(self.ctx.project, key)
        bucket_state: SessionState | None = None
        self._meta_etag = None
        if any(info.key == meta_key for info in listing):
            try:
                meta = await store.get(meta_key)
                self._meta_etag = meta.info.etag
                bucket_state = layout.parse_meta(meta.body, key)
            except NotFound:
                pass  # removed since the listing: written afresh below
            except layout.LayoutError as exc:
                self.log.warning("meta.json unusable; rebuilding it from the parts", error=str(exc))
        if bucket_state is not None:
            self._check_lease(bucket_state.lease)
        state = self._pick_base(listed, self.state, bucket_state)
        for seq in sorted(s for s in listed if s >= state.next_seq):
            info = await store.head(listed[seq].key)
            part = layout.decode_part_metadata(info.key, info.metadata, info.size, info.last_modified)
            state.adopt(part, self.ctx.parts_window)
        if bucket_state is not None and state.started_at is None:
            state.started_at, state.cwd = bucket_state.started_at, bucket_state.cwd
        self.state = state
        self.ctx.health.ok()
        self._rolled_forward = True
        # New to the bucket, under --once: no lease for the few moments this takes. Parts are
        # create-only at keys fixed by seq, so another writer still cannot interleave bytes;
        # meta.json is written once, at the end (one object less per session on a backfill).
        self._unclaimed = self._once and not listing
        if self._unclaimed:
            return
        await self._write_meta()  # claims the lease before the first part of this run

    def _pick_base(self, listed: dict[int, object], *candidates: SessionState | None) -> SessionState:
        """The most advanced candidate whose last part is really in the bucket, else a fresh state."""
        usable = [c for c in candidates if c is not None and (c.next_seq == 0 or c.next_seq - 1 in listed)]
        if usable:
            return copy.deepcopy(max(usable, key=lambda c: c.next_seq))
        if any(c is not None for c in candidates):
            self.log.warning("cached state does not match the bucket; rebuilding from the parts")
        return SessionState(key=self.key)

    def _check_lease(self, lease: Lease | None) -> None:
        if lease is None or lease.agent_id == self.ctx.agent_id:
            return
        try:
            renewed = datetime.fromisoformat(lease.renewed_at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return
        if time.time() - renewed < LEASE_TTL_S:
            raise LeaseHeld(
                f"agent {lease.agent_id} is mirroring this session (lease renewed {lease.renewed_at}); "
                "backing off"
            )

    # ---------- reading ----------

    async def _read(self) -> None:
        """Read complete lines after what is held (or after the cursor) into the pending batch."""
        while True:
            state = self.state or SessionState(key=self.key)
            if self._pending:
                last = self._pending[-1]
                generation, start, expected = last.generation, last.end, last.fingerprint
            else:
                generation, start, expected = state.generation, state.cursor, state.fingerprint
            budget = self.ctx.part_max_bytes - self._pending_bytes
            if budget <= 0:
                self._more_to_read = True
                return
            read = functools.partial(
                read_chunk,
                self.path,
                generation=generation,
                start=start,
                expected=expected,
                max_bytes=budget,
                max_line_bytes=self.ctx.max_line_bytes,
            )
            result = await anyio.to_thread.run_sync(read)
            if result is None:
                self._more_to_read = False
                return
            if not self._rolled_forward and (isinstance(result, Mismatch) or result.end > result.start):
                await self._roll_forward()
                self._pending.clear()
                self._pending_bytes = 0
                at = self.state
                assert at is not None
                agreed = (at.generation, at.cursor, at.fingerprint) == (generation, start, expected)
                if isinstance(result, Mismatch) or not agreed:
                    continue  # read again from the cursor the bucket gave us
                # the bucket agrees with where this read started (the usual case): keep it
            if isinstance(result, Mismatch):
                if self._pending:
                    await self._flush()  # what was read before the rewrite is still the old generation
                assert self.state is not None
                self.log.warning(
                    "source no longer matches what was mirrored; starting a new generation",
                    reason=result.reason,
                    generation=self.state.generation + 1,
                )
                self.state.start_generation()
                continue
            if result.end == result.start:
                self._more_to_read = False
                return
            if result.start == 0 and self.state is not None and self.state.started_at is None:
                self._describe(result.data)
            self._pending.append(result)
            self._pending_bytes += result.end - result.start
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            self._more_to_read = result.end < self.source_size
            return

    def _describe(self, data: bytes) -> None:
        assert self.state is not None
        info = self.harness.describe(data.split(b"\n", _DESCRIBE_LINES)[:_DESCRIBE_LINES])
        self.state.cwd = self.state.cwd or info.cwd
        self.state.started_at = info.started_at

    def _flush_due(self) -> bool:
        assert self._pending_since is not None
        return (
            self._more_to_read
            or self._pending_bytes >= self.ctx.part_max_bytes
            or time.monotonic() - self._pending_since >= self.ctx.flush_interval_s
        )

    def _meta_due(self) -> bool:
        return (
            self._meta_written_at is None
            or time.monotonic() - self._meta_written_at >= self.ctx.meta_interval_s
        )

    # ---------- writing ----------

    async def _flush(self) -> None:
        """Redact the pending lines and put them as the next part; then meta (when due), checkpoint."""
        assert self.state is not None and self._pending
        written = self._meta_written_at
        if not self._unclaimed and (written is None or time.monotonic() - written > LEASE_TTL_S / 2):
            await self._write_meta()  # renew the lease before writing under it
        chunks = self._pending
        raw = chunks[0].data if len(chunks) == 1 else b"".join(c.data for c in chunks)
        redaction = await self._redact(raw)
        counts = dict(redaction.counts)
        dropped = sum(c.dropped for c in chunks)
        if dropped:
            counts[OVERSIZE_RULE] = counts.get(OVERSIZE_RULE, 0) + dropped
        body = redaction.data
        state = self.state
        part = PartRecord(
            seq=state.next_seq,
            token=layout.part_token(self.key, state.next_seq),
            generation=chunks[0].generation,
            start=chunks[0].start,
            end=chunks[-1].end,
            sha256=hashlib.sha256(body).hexdigest(),
            uploaded_bytes=len(body),
            redactions=counts,
            uploaded_at=utc_now_iso(),
            fingerprint=chunks[-1].fingerprint,
        )
        object_key = layout.format_part_key(self.ctx.project, self.key, part.seq)
        try:
            await self.ctx.store.put(
                object_key,
                body,
                metadata=layout.encode_part_metadata(part),
                if_none_match=True,
                content_type="application/x-ndjson",
            )
        except PreconditionFailed:
            await self._resolve_taken_seq(object_key, part)
        self.ctx.health.ok()
        self.log.debug(
            "part uploaded",
            seq=part.seq,
            generation=part.generation,
            cursor_range=[part.start, part.end],
            uploaded_bytes=part.uploaded_bytes,
        )
        state.adopt(part, self.ctx.parts_window)
        state.source_path = str(self.path)
        if state.ended_at is not None:
            state.ended_at = None  # the source came back and grew
        if self._pending_since is not None:
            self.lag_s = time.monotonic() - self._pending_since
        self.last_flush_at = part.uploaded_at
        self._pending = []
        self._pending_bytes = 0
        self._pending_since = None
        if self._meta_due() and not self._unclaimed:
            try:
                await self._write_meta()
            except StoreError as exc:  # the part is durable; meta.json catches up later
                self.log.warning("meta.json update failed; will retry", error=str(exc))
        await self._save_checkpoint()

    async def _resolve_taken_seq(self, object_key: str, part: PartRecord) -> None:
        """Our seq's key exists: either an earlier attempt of ours landed, or another writer's did."""
        info = await self.ctx.store.head(object_key)
        theirs = layout.decode_part_metadata(object_key, info.metadata, info.size, info.last_modified)
        if (theirs.generation, theirs.start, theirs.end, theirs.sha256) == (
            part.generation,
            part.start,
            part.end,
            part.sha256,
        ):
            return  # our own earlier attempt landed: adopt it, do not write it twice
        self._forget_position()
        raise WriterConflict(f"part {part.seq} already holds bytes {theirs.start}-{theirs.end}")

    async def _redact(self, raw: bytes):
        if len(raw) <= _INLINE_REDACT_BYTES:
            return self.ctx.redactor.redact(raw)
        return await anyio.to_thread.run_sync(self.ctx.redactor.redact, raw)

    async def _write_meta(self, *, release: bool = False) -> None:
        """Write meta.json under If-Match on the ETag we last saw; claim or renew (or release) the lease."""
        assert self.state is not None
        state = self.state
        state.source_path = str(self.path)
        key = layout.meta_key(self.ctx.project, self.key)
        for _ in range(5):
            state.lease = None if release else Lease(self.ctx.agent_id, self.ctx.instance, utc_now_iso())
            body = layout.render_meta(state, agent_id=self.ctx.agent_id, host=self.ctx.host)
            try:
                if self._meta_etag is None:
                    etag = await self.ctx.store.put(
                        key, body, if_none_match=True, content_type="application/json"
                    )
                else:
                    etag = await self.ctx.store.put(
                        key, body, if_match=self._meta_etag, content_type="application/json"
                    )
            except PreconditionFailed:
                await self._reread_meta(key)
                continue
            self._meta_etag = etag
            self._meta_written_at = time.monotonic()
            self._meta_seq = state.next_seq
            self._unclaimed = False
            return
        raise WriterConflict("meta.json kept changing under us")

    async def _reread_meta(self, key: str) -> None:
        try:
            current = await self.ctx.store.get(key)
        except NotFound:
            self._meta_etag = None
            return
        self._meta_etag = current.info.etag
        try:
            theirs = layout.parse_meta(current.body, self.key)
        except layout.LayoutError:
            return  # not a meta.json we can read: ours replaces it
        self._check_lease(theirs.lease)
        if self.state is not None and theirs.next_seq > self.state.next_seq:
            self._forget_position()
            raise WriterConflict(f"meta.json says {theirs.next_seq} parts, we know {self.state.next_seq}")

    def _forget_position(self) -> None:
        """Another writer moved the session on: drop what we hold and roll forward on the next read."""
        self._pending = []
        self._pending_bytes = 0
        self._pending_since = None
        self._rolled_forward = False
        self._last_stat = None

    async def _save_checkpoint(self) -> None:
        assert self.state is not None
        if not await self.ctx.checkpoint.save(self.state):
            self.log.warning(
                "checkpoint not saved; the bucket stays the truth", error=self.ctx.checkpoint.last_error
            )

    async def _source_missing(self, now: float) -> float | None:
        """The file is gone: wait a moment for a rename to show up, then mark the session ended."""
        if self._missing_since is None:
            self._missing_since = now
            return 1.0
        if now - self._missing_since < MISSING_GRACE_S:
            return 1.0
        self.finished = True
        if not self._loaded:
            await self._load_cached()
        if self.state is None or self.state.next_seq == 0:
            return None
        if self._pending:
            await self._flush()
        if self.state.ended_at is None:
            if not self._rolled_forward:
                await self._roll_forward()
            self.state.ended_at = utc_now_iso()
            await self._write_meta(release=True)
            await self._save_checkpoint()
            self.log.info("source is gone; its copy stays in the bucket, session marked ended")
        self.status = "ended"
        return None
