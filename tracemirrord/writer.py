"""The sink of one session: parts, meta.json and its lease, and the local checkpoint.

It knows nothing of files or tables: it is handed ``source.Records`` and keeps ``SessionState``
(whose ``position`` is the source's Position). Order of effects: PUT part -> meta.json (when due)
-> local checkpoint -> ``Source.committed``. A crash between any two leaves the bucket ahead of
the checkpoint, and ``roll_forward`` (rollforward.py) adopts the parts the cache does not know
instead of uploading them again.

Part keys are fixed by (session, seq) (layout.part_token) and written create-only, so a second
writer racing for the same seq loses with 412, reads what won, and continues after it: parts never
overlap. The meta.json lease (lease.py) makes a second daemon back off before it even tries,
whatever its agent id.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import structlog

from tracemirrord import layout
from tracemirrord.checkpoint import Checkpointer
from tracemirrord.control.telemetry import Telemetry
from tracemirrord.frame import OVERSIZE_RULE
from tracemirrord.lease import Holder, pid_scope, takeover_reason
from tracemirrord.model import Lease, PartRecord, SessionKey, SessionState, utc_now_iso
from tracemirrord.redact import Redactor

if TYPE_CHECKING:
    from tracemirrord.anonymize import AnonymizingRedactor
from tracemirrord.rollforward import read_bucket
from tracemirrord.source import INFO_FIELDS, START, Position, Records, SessionInfo, Source
from tracemirrord.store.base import NotFound, ObjectStore, PreconditionFailed, StoreError, store_epoch

log = structlog.get_logger("tracemirrord.mirror")

LEASE_TTL_S = 120.0  # the default of TRACEMIRROR_LEASE_TTL
_INLINE_REDACT_BYTES = 32 * 1024  # larger batches go to a worker thread: one session's big (or
# hostile) lines must not hold up the others, the heartbeat or SIGTERM; below this the hop costs more
_DESCRIBE_LINES = 8
_DESCRIBE_PARTS = 4  # parts of a session that may fill in missing metadata
_DESCRIBE_PART_BYTES = 64 * 1024  # ... and small (a live session's, not a backfill's)
_DESCRIBED_FIELDS = 2  # info fields most sessions have (model, agent version): stop looking then


# Bytes of parts in flight (read, redacted, uploading) across every session, in part sizes: two
# parts keep both a redaction and an upload busy; more only adds memory (benchmarks/README.md).
PARTS_IN_FLIGHT = 2
# glibc gives each thread that allocates its own heap ("arena", up to 8 per core), and each keeps
# the high-water mark of the multi-MB buffers its thread once held: with parts read, redacted and
# written in worker threads that was about 40 MiB resident on a backfill. Two arenas hold it.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
_arenas_limited = False


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Bound glibc's per-thread heaps (once per process; a no-op elsewhere, e.g. macOS, musl).

    Threads that allocated before this keep their heap; called by ``tracemirrord``'s main before
    the event loop starts. ``MALLOC_ARENA_MAX`` in the environment wins.
    """
    global _arenas_limited
    if _arenas_limited or not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    _arenas_limited = True
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  # glibc only: musl's mallopt ignores this
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


class PartBudget:
    """Bytes of parts in flight, shared by every session's writer: a byte-counting semaphore.

    ``upload_concurrency`` bounds how many sessions read and upload at once, which for small
    sessions is what keeps the store busy; this bounds their bytes, so four sessions with 4 MiB
    parts do not hold four parts (and their copies: the read, the redacted body) at once. Taken in
    order (FIFO: a backfill's newest sessions first); one request larger than the budget runs alone.
    """

    def __init__(self) -> None:
        self.used = 0
        self.limit = 0
        self._waiters: deque[tuple[int, anyio.Event]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, size: int, limit: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes of a budget of ``limit`` (taken from the settings each time)."""
        size = max(0, size)
        self.limit = limit
        if size and (self._waiters or (self.used and self.used + size > limit)):  # 0 never waits
            entry = (size, anyio.Event())
            self._waiters.append(entry)
            try:
                await entry[1].wait()
            except BaseException:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                else:
                    self._release(size)  # granted as it was cancelled
                raise
        else:
            self.used += size
        try:
            yield
        finally:
            self._release(size)

    def _release(self, size: int) -> None:
        self.used -= size
        while self._waiters and (self.used == 0 or self.used + self._waiters[0][0] <= self.limit):
            granted, event = self._waiters.popleft()
            self.used += granted
            event.set()


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
    redactor: Redactor | AnonymizingRedactor  # the anonymizing one with TRACEMIRROR_ANONYMIZE
    project: str
    agent_id: str
    instance: str
    host: str
    flush_interval_s: float
    part_max_bytes: int
    meta_interval_s: float
    max_line_bytes: int
    limiter: anyio.CapacityLimiter
    telemetry: Telemetry = field(default_factory=Telemetry.standalone)
    health: StoreHealth = field(default_factory=StoreHealth)
    backfill_cutoff: float | None = None  # sessions last modified before this are not mirrored
    parts_window: int = layout.META_PARTS_WINDOW
    lease_ttl_s: float = LEASE_TTL_S
    predecessors: frozenset[str] = frozenset()  # earlier instances on our state dir (lease.py)
    pid_scope: str = field(default_factory=pid_scope)
    part_budget: PartBudget = field(default_factory=PartBudget)  # bytes of parts in flight

    @property
    def part_budget_bytes(self) -> int:
        """The budget of bytes in flight, from the part size (a reload may change it)."""
        return PARTS_IN_FLIGHT * self.part_max_bytes

    @property
    def holder(self) -> Holder:
        """This daemon as its leases name it."""
        return Holder(self.agent_id, self.instance, os.getpid(), self.pid_scope, self.predecessors)


class SessionWriter:
    """Puts one session's records into the bucket, exactly once, and keeps its state."""

    def __init__(self, key: SessionKey, ctx: MirrorContext, source: Source) -> None:
        self.key = key
        self.ctx = ctx
        self.state: SessionState | None = None
        self.loaded = False
        self.rolled_forward = False
        self.once = False  # --once: mirror what is pending, then write meta.json once
        self.unclaimed = False  # --once on a session new to the bucket: meta.json comes at the end
        self.source = source  # replaced when the session moves (SessionMirror.relocate)
        self.last_flush_at: str | None = None
        self._meta_etag: str | None = None
        self._meta_written_at: float | None = None
        self._meta_seq = -1  # next_seq as of the last meta.json write
        self._epoch = 0  # the store's epoch when we last read the bucket (store.base.store_epoch)
        self.checkpoint_stale = False  # the last save failed: the follower tries again when idle

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        return log.bind(harness=self.key.harness, session=self.key.session_id)

    def shown_location(self) -> str:
        """The source's path as meta.json may show it (anonymized with TRACEMIRROR_ANONYMIZE)."""
        location = self.source.location
        anonymizer = getattr(self.ctx.redactor, "anonymizer", None)
        return anonymizer.apply(location.encode()).data.decode() if anonymizer else location

    @property
    def position(self) -> Position:
        return START if self.state is None else self.state.position

    # ---------- state ----------

    def use_cached(self, state: SessionState | None) -> None:
        """Start from this cached state (read with others in one batch) instead of loading it."""
        self.state = state
        self.loaded = True

    async def load_cached(self) -> None:
        self.use_cached(await self.ctx.checkpoint.load(self.key))

    def reset(self) -> None:
        """Forget everything; the next read reloads the checkpoint and rolls forward (parking)."""
        self.state = None
        self.loaded = False
        self.rolled_forward = False
        self._meta_etag = None
        self._meta_written_at = None
        self._meta_seq = -1

    def forget_position(self) -> None:
        """Another writer moved the session on: roll forward again before the next part."""
        self.rolled_forward = False

    @property
    def meta_behind(self) -> bool:
        """Parts were written since meta.json last was (it trails by up to meta_interval)."""
        return self.state is not None and self.state.next_seq > self._meta_seq >= 0

    @property
    def unreleased(self) -> bool:
        """On the way out: meta.json misses parts written since, or still holds our lease."""
        state = self.state
        return (
            self.rolled_forward
            and state is not None
            and (state.next_seq != self._meta_seq or state.lease is not None)
        )

    def meta_due(self) -> bool:
        return self.meta_due_in() <= 0

    def meta_due_in(self) -> float:
        """Seconds until meta.json may be written again (0: now)."""
        if self._meta_written_at is None:
            return 0.0
        return max(0.0, self._meta_written_at + self.ctx.meta_interval_s - time.monotonic())

    async def roll_forward(self) -> None:
        """Make ``state`` what the bucket says (rollforward.py), then claim the lease."""
        epoch = store_epoch(self.ctx.store)  # before the listing: a change during it is seen later
        view = await read_bucket(
            self.ctx.store,
            self.ctx.project,
            self.key,
            self.state,
            unit=self.source.unit,
            parts_window=self.ctx.parts_window,
            check_lease=self.check_lease,
            log=self.log,
        )
        self.state, self._meta_etag = view.state, view.meta_etag
        self._epoch = epoch
        self.ctx.health.ok()
        self.rolled_forward = True
        # New to the bucket, under --once: no lease for the few moments this takes. Parts are
        # create-only at keys fixed by seq, so another writer still cannot interleave bytes;
        # meta.json is written once, at the end (one object less per session on a backfill).
        self.unclaimed = self.once and view.empty
        if self.unclaimed:
            return
        await self.write_meta()  # claims the lease before the first part of this run

    def check_lease(self, lease: Lease | None) -> None:
        """Raise LeaseHeld while another live instance holds the session; log a takeover once."""
        reason = takeover_reason(lease, self.ctx.holder, self.ctx.lease_ttl_s, time.time())
        if reason is not None and lease is not None:
            self.log.info(
                "taking over the session's lease",
                reason=reason,
                agent=lease.agent_id,
                instance=lease.instance,
                renewed_at=lease.renewed_at,
            )

    def check_epoch(self) -> None:
        """The whole bucket was deleted or replaced since we read it: read it again before writing."""
        if store_epoch(self.ctx.store) != self._epoch:
            self.forget_position()
            raise WriterConflict("the bucket was deleted or replaced since it was read")

    # ---------- writing ----------

    async def put_part(self, batch: list[Records]) -> PartRecord:
        """Redact ``batch`` and put it as the next part; then meta.json (when due) and the checkpoint."""
        assert self.state is not None and batch
        self.check_epoch()
        written = self._meta_written_at
        renew_after = self.ctx.lease_ttl_s / 2
        if not self.unclaimed and (written is None or time.monotonic() - written > renew_after):
            await self.write_meta()  # renew the lease before writing under it
        raw = batch[0].data if len(batch) == 1 else b"".join(r.data for r in batch)
        redaction = await self._redact(raw)
        counts = dict(redaction.counts)
        dropped = sum(r.dropped for r in batch)
        if dropped:
            counts[OVERSIZE_RULE] = counts.get(OVERSIZE_RULE, 0) + dropped
        body = redaction.data
        state = self.state
        first, last = batch[0].start, batch[-1].end
        if last.check is not None and not layout.check_value_ok(last.check):
            raise ValueError(f"the source gave a check value that cannot travel in metadata: {last.check!r}")
        if self._describing(first, len(body)):
            self._describe(body)
        part = PartRecord(
            seq=state.next_seq,
            token=layout.part_token(self.key, state.next_seq),
            generation=first.generation,
            start=first.cursor,
            end=last.cursor,
            sha256=hashlib.sha256(body).hexdigest(),
            uploaded_bytes=len(body),
            redactions=counts,
            uploaded_at=utc_now_iso(),
            check=last.check,
            source_bytes=sum(r.source_bytes for r in batch),
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
        self.ctx.telemetry.part_written(part.source_bytes, part.redactions)
        state.source_path = self.shown_location()
        if state.ended_at is not None:
            state.ended_at = None  # the source came back and grew
        self.last_flush_at = part.uploaded_at
        if self.meta_due() and not self.unclaimed:
            try:
                await self.write_meta()
            except StoreError as exc:  # the part is durable; meta.json catches up later
                self.log.warning("meta.json update failed; will retry", error=str(exc))
        await self.save_checkpoint()
        self.source.committed(last)
        return part

    def _describing(self, first: Position, size: int) -> bool:
        """Describe the session from this part? Its first part, and a few more small ones while
        fields are missing: a live session's first part is often only a header and a prompt (no
        model yet). A backfill's parts are large and its first one already held the first records."""
        state = self.state
        assert state is not None
        if first.at_start:
            return True
        missing = state.started_at is None or len(state.info) < _DESCRIBED_FIELDS
        return missing and state.next_seq < _DESCRIBE_PARTS and size <= _DESCRIBE_PART_BYTES

    def _describe(self, body: bytes) -> None:
        """Session metadata from the first redacted records, plus what the source says (redacted too)."""
        assert self.state is not None
        info = self.source.describe(body.split(b"\n", _DESCRIBE_LINES)[:_DESCRIBE_LINES])
        self.apply_info(info)

    def apply_info(self, info: SessionInfo) -> None:
        """Take the session metadata into the state, each field through the redactor first.

        The records ``describe`` reads are redacted already; what a source adds from elsewhere
        (hermes' sessions table, a title) is not, so every field passes the redactor here.
        """
        assert self.state is not None
        fields: dict[str, object] = {name: getattr(info, name) for name in INFO_FIELDS if getattr(info, name)}
        if info.ended_at:
            fields["ended_at"] = info.ended_at
        if info.extra:
            fields["extra"] = dict(info.extra)
        if fields:
            line = json.dumps(fields, separators=(",", ":")).encode() + b"\n"
            redacted = self.ctx.redactor.redact(line)
            try:
                fields = json.loads(redacted.data) if redacted.data.strip() else {}
            except ValueError:
                fields = {}
        state = self.state
        state.cwd = state.cwd or _str(fields.get("cwd"))
        state.started_at = state.started_at or _str(fields.get("started_at"))
        for name in layout.INFO_META_FIELDS:
            value = _str(fields.get(name))
            if value and name not in state.info:
                state.info[name] = value
        extra = fields.get("extra")
        if isinstance(extra, dict):
            state.extra.update({str(k): v for k, v in extra.items() if isinstance(v, str)})
        ended = _str(fields.get("ended_at"))
        if ended and state.ended_at is None:
            state.ended_at = ended  # the agent itself says the session ended (hermes)

    def refresh_info(self) -> bool:
        """What the source knows besides its records (a title set later, the agent's own end of the
        session), taken in before each meta.json write. True when it changed the state; sources
        that only read records add nothing."""
        state = self.state
        if state is None:
            return False
        before = (state.cwd, state.started_at, state.ended_at, dict(state.info), dict(state.extra))
        self.apply_info(self.source.describe([]))
        return before != (state.cwd, state.started_at, state.ended_at, state.info, state.extra)

    async def update_info(self) -> None:
        """The source changed but held no new record: put what it says of the session in meta.json
        if that changed (hermes sets ``ended_at`` or a title on a session with no new row)."""
        if self.state is None or self.state.next_seq == 0 or self.unclaimed:
            return  # nothing in the bucket yet: meta.json comes with the first part
        if not self.refresh_info():
            return
        await self.write_meta_current()

    async def write_meta_current(self) -> None:
        """meta.json now; after a conflict dropped what we knew of the bucket, read it again first
        (``roll_forward`` then writes meta.json itself, refreshed)."""
        if self.rolled_forward:
            await self.write_meta()
        else:
            await self.roll_forward()

    async def _resolve_taken_seq(self, object_key: str, part: PartRecord) -> None:
        """Our seq's key exists: either an earlier attempt of ours landed, or another writer's did."""
        info = await self.ctx.store.head(object_key)
        try:
            theirs = layout.decode_part_metadata(object_key, info.metadata, info.size, info.last_modified)
        except layout.LayoutError as exc:  # roll-forward repairs it, or continues after it
            self.forget_position()
            raise WriterConflict(f"part {part.seq} is there without usable metadata: {exc}") from None
        if (theirs.generation, theirs.start, theirs.end, theirs.sha256) == (
            part.generation,
            part.start,
            part.end,
            part.sha256,
        ):
            return  # our own earlier attempt landed: adopt it, do not write it twice
        self.forget_position()
        raise WriterConflict(f"part {part.seq} already holds {theirs.start}-{theirs.end}")

    async def _redact(self, raw: bytes):
        if len(raw) <= _INLINE_REDACT_BYTES:
            return self.ctx.redactor.redact(raw)
        return await anyio.to_thread.run_sync(self.ctx.redactor.redact, raw)

    async def write_meta(self, *, release: bool = False) -> None:
        """Write meta.json under If-Match on the ETag we last saw; claim or renew (or release) the lease."""
        assert self.state is not None
        state = self.state
        state.source_path = self.shown_location()
        self.refresh_info()
        key = layout.meta_key(self.ctx.project, self.key)
        self.check_epoch()
        for _ in range(5):
            state.lease = None if release else self.ctx.holder.lease(utc_now_iso())
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
            self.unclaimed = False
            return
        raise WriterConflict("meta.json kept changing under us")

    async def _reread_meta(self, key: str) -> None:
        try:
            current = await self.ctx.store.get(key)
        except NotFound:
            if self._meta_etag is not None:  # it was there: the session was deleted from the bucket
                self.forget_position()
                raise WriterConflict("meta.json is gone from the bucket; reading the session again") from None
            return
        self._meta_etag = current.info.etag
        try:
            theirs = layout.parse_meta(current.body, self.key)
        except layout.LayoutError:
            return  # not a meta.json we can read: ours replaces it
        self.check_lease(theirs.lease)
        if self.state is not None and theirs.next_seq > self.state.next_seq:
            self.forget_position()
            raise WriterConflict(f"meta.json says {theirs.next_seq} parts, we know {self.state.next_seq}")

    async def save_checkpoint(self) -> None:
        """Cache the state locally; a failure is said once (log, status) until a save works again."""
        assert self.state is not None
        checkpoint, shown = self.ctx.checkpoint, self.ctx.telemetry.checkpoint
        saved = await checkpoint.save(self.state)
        self.checkpoint_stale = not saved and not checkpoint.in_memory
        if saved:
            if shown.state == "failing":
                self.log.info("checkpoint saved again")
                shown.state, shown.last_error = "ok", None
            return
        if checkpoint.in_memory:
            return
        if shown.state != "failing":
            self.log.warning("checkpoint not saved; the bucket stays the truth", error=checkpoint.last_error)
            self.ctx.telemetry.failed("checkpoint", f"checkpoint not saved: {checkpoint.last_error}")
        shown.state, shown.last_error = "failing", checkpoint.last_error

    async def mark_ended(self, ended_at: str | None = None) -> bool:
        """The source is gone (or its agent says the session ended): say so in meta.json, once."""
        if self.state is None or self.state.next_seq == 0 or self.state.ended_at is not None:
            return False
        if not self.rolled_forward:
            await self.roll_forward()
        self.state.ended_at = ended_at or utc_now_iso()
        await self.write_meta(release=True)
        await self.save_checkpoint()
        return True


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
