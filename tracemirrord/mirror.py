"""One session's follower: when to look at its source, reading through it, and parking.

The pipeline for one session: ``source.Source`` (read complete records after a Position) ->
a pending batch (here) -> ``writer.SessionWriter`` (redact, put the part, meta.json, checkpoint).
This module decides *when*: it probes the source (cheap), reads when the probe changed, flushes a
batch when it is due (``flush_interval`` after its first record, or full), and parks a session
idle for an hour (no task, no state) until the harness's idle sweep or ``wake`` finds it changed.

The cursor moves only after the part holding the records is durably in the bucket (the writer
adopts it); a crash loses nothing, and the first read after a start rolls forward from the bucket.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import structlog

from tracemirrord.control.schema import SessionStatus
from tracemirrord.control.telemetry import iso
from tracemirrord.lease import LeaseHeld
from tracemirrord.model import SessionKey, SessionState
from tracemirrord.source import (
    Discontinuity,
    Position,
    Probe,
    Records,
    Source,
    SourceRefused,
    UnknownFormat,
)
from tracemirrord.store.base import StoreError, StoreRejected
from tracemirrord.timers import timeout_s
from tracemirrord.writer import (
    MirrorContext,
    SessionWriter,
    StoreHealth,
    WriterConflict,
)

__all__ = ["MirrorContext", "SessionMirror", "StoreHealth", "poll_interval_s", "timeout_s"]

log = structlog.get_logger("tracemirrord.mirror")

MISSING_GRACE_S = 5.0
DRAIN_TIMEOUT_S = 5.0
UNKNOWN_FORMAT_RETRY_S = 60.0
# Writer conflicts one after another (no step succeeding between them) back off from this, capped
CONFLICT_BACKOFF_S = 0.05
CONFLICT_BACKOFF_CAP_S = 2.0

# A source untouched for this long is parked: no task or timer of its own; the harness's idle sweep
# probes it with all the other parked sources in one batch and starts it again when it changes.
PARK_AFTER_S = 3600.0
PARKED_POLL_S = 600.0
# A source whose harness watches it and calls ``wake`` on every change (``Source.woken`` true) needs
# no fast polling of its own: this is only the fallback.
WOKEN_POLL_S = 5.0
# A source covered by file-system notifications (``SessionMirror.watched``) has no polling of its
# own: its harness task wakes it when the file changes (starting it again if parked), and stats it
# every ``rescan_interval`` in case a notification was missed. So it can park, and drop its state,
# once idle for WATCHED_PARK_AFTER_S: its one timer. A file written line by line is read on the
# first notification after the follower caught up, which starts a batch, and then once more when
# that batch is due (which reads what came meanwhile and puts it): notifications for a follower
# holding a batch wake nothing (``notify``). So a busy file is read about twice per flush interval,
# half as often as polling read it. A batch begun less than READ_GAP_S after the follower's previous
# step (the one that put the last batch) counts its flush interval from READ_GAP_S after that step,
# as polling's pace made it: parts are no more frequent than polling's, and no smaller.
IDLE_AFTER_S = 300.0
CHECKPOINT_RETRY_S = 5.0  # a checkpoint save that failed is tried again this often while idle
WATCHED_PARK_AFTER_S = IDLE_AFTER_S
READ_GAP_S = 0.25


def poll_interval_s(mtime: float, now: float) -> float:
    """How often to look at a source: often while it is being written, rarely once it is old."""
    age = now - mtime
    if age < IDLE_AFTER_S:
        return 0.25
    if age < PARK_AFTER_S:
        return 1.0
    return PARKED_POLL_S


def watched_wait_s(mtime: float, now: float) -> float:
    """A notified source waits for a wake-up, or until it is old enough to park (PARKED_POLL_S)."""
    age = now - mtime
    if age >= WATCHED_PARK_AFTER_S:
        return PARKED_POLL_S
    return min(WATCHED_PARK_AFTER_S, WATCHED_PARK_AFTER_S - age) + 1.0


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


@dataclass
class Batch:
    """Records read but not yet in the bucket: the next part."""

    records: list[Records] = field(default_factory=list)
    source_bytes: int = 0
    since: float | None = None  # monotonic time its flush interval counts from (its first read)

    def __bool__(self) -> bool:
        return bool(self.records)

    @property
    def end(self) -> Position | None:
        return self.records[-1].end if self.records else None

    def add(self, records: Records, since: float | None = None) -> None:
        self.records.append(records)
        self.source_bytes += records.source_bytes
        if self.since is None:
            self.since = time.monotonic() if since is None else since

    def clear(self) -> None:
        self.records = []
        self.source_bytes = 0
        self.since = None


@dataclass(slots=True)
class Summary:
    """What status shows of a session; kept while it is parked, when its state is dropped."""

    cursor: int = 0
    generation: int = 0
    parts: int = 0
    bytes_uploaded: int = 0
    last_flush_at: str | None = None
    redactions: dict[str, int] = field(default_factory=dict)
    cwd: str | None = None
    unit: str = "bytes"

    def remember(self, state: SessionState) -> None:
        self.cursor, self.generation, self.parts = state.cursor, state.generation, state.next_seq
        self.bytes_uploaded, self.cwd, self.unit = state.total_uploaded_bytes, state.cwd, state.unit
        self.last_flush_at = state.last_uploaded_at
        if state.redaction_counts != self.redactions:
            self.redactions = dict(state.redaction_counts)


class Wake:
    """A one-shot wake-up like ``anyio.Event``, whose event is only made when someone waits on it:
    ten thousand parked followers then hold no event (about 750 bytes each with its deque)."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self._set = False

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


class SessionMirror:
    """Follows one session's source from its cursor into the bucket."""

    def __init__(self, key: SessionKey, source: Source, ctx: MirrorContext) -> None:
        self.key = key
        self.ctx = ctx
        self.writer = SessionWriter(key, ctx, source)
        self.status = "idle"
        self.last_error: str | None = None
        self.finished = False
        self.parked = False
        self._eligible = ctx.backfill_cutoff is None
        self._batch = Batch()
        self._more_to_read = False
        self._last_probe: Probe | None = None
        self._missing_since: float | None = None
        self._wake = Wake()
        self.summary: Summary | None = None  # None until the session's state was first seen
        self.pending_since: float | None = None  # when this daemon first saw bytes not in the bucket
        self._caught_up_at: float | None = None
        self.in_backfill = False  # counted in the catch-up after the start (Telemetry.backfill)
        self._flush_asked = 0  # flush requests (tracemirrorctl flush) asked / done, and their waiters
        self._flush_done = 0
        self._flush_waiters: list[tuple[int, anyio.Event]] = []
        self._bucket_replaced = False
        self.watched = False  # file-system notifications cover the source (set by the harness task)
        self._notified = False  # a notification came since the last step began (see ``notify``)
        self._stepped_at = 0.0  # monotonic time the current (or last) step began
        self._previous_step_at = 0.0  # and the one before it (see READ_GAP_S)

    # ---------- what the harness task uses ----------

    @property
    def source(self) -> Source:
        return self.writer.source

    def park_at(self, probe: Probe) -> None:
        """Start parked: the source is known to need nothing until its probe differs from ``probe``."""
        self._last_probe = probe
        self.parked = True

    @property
    def nudged(self) -> bool:
        """Was it woken (a notification) since its last look? Then it must not start parked."""
        return self._wake.is_set()

    def remember(self, state: SessionState) -> None:
        """Keep what status shows of ``state`` (a parked follower keeps no state of its own)."""
        if self.summary is None:
            self.summary = Summary()
        self.summary.remember(state)

    # ---------- what status shows ----------

    def current_summary(self) -> Summary | None:
        """The summary, brought up to date from the state when the follower holds one."""
        state = self.writer.state
        if state is not None:
            self.remember(state)
        return self.summary

    def session_status(self, now: float) -> SessionStatus:
        """This session as ``tracemirrorctl status`` shows it (cheap: no I/O)."""
        state = self.writer.state
        summary = self.current_summary() or Summary(unit=self.source.unit)
        if self.parked or (state is None and self.summary is not None and self.pending_since is None):
            behind = 0 if self.parked else self.source.behind(Position(summary.generation, summary.cursor))
        else:
            behind = self.behind
        if self.pending_since is not None:
            lag: float | None = round(max(0.0, now - self.pending_since), 3)
        elif self._caught_up_at is not None or self.parked:
            lag = 0.0
        else:
            lag = None  # not looked at yet
        status = "idle" if self.parked else self.status
        return SessionStatus(
            harness=self.key.harness,
            session_id=self.key.session_id,
            source_path=self.source.location,
            state=status,  # type: ignore[arg-type]  # mirror states are schema.SessionStateName
            cursor=summary.cursor,
            behind_bytes=behind,
            parts=summary.parts,
            last_flush_at=summary.last_flush_at,
            lag_s=lag,
            redactions=dict(summary.redactions),
            cursor_unit=summary.unit,
            generation=summary.generation,
            cwd=summary.cwd,
            parked=self.parked,
            error=self.last_error,
            modified_at=iso(self._last_probe.mtime) if self._last_probe else None,
            bytes_uploaded=summary.bytes_uploaded,
        )

    def request_flush(self) -> anyio.Event:
        """Ask for everything the source holds to be put now (``tracemirrorctl flush``); the event is
        set once it landed, meta.json included."""
        self._flush_asked += 1
        done = anyio.Event()
        self._flush_waiters.append((self._flush_asked, done))
        if self.parked or self.finished:
            self._flushed(self._flush_asked)  # nothing is held: a parked session is fully mirrored
        self.nudge()
        return done

    def _flushed(self, upto: int) -> None:
        self._flush_done = max(self._flush_done, upto)
        waiting = []
        for asked, event in self._flush_waiters:
            if asked <= self._flush_done:
                event.set()
            else:
                waiting.append((asked, event))
        self._flush_waiters = waiting

    def use_cached(self, state: SessionState | None) -> None:
        """Start from this cached state (read with others in one batch) instead of loading it."""
        self.writer.use_cached(state)
        if state is not None:
            self._eligible = True

    def bucket_replaced(self) -> None:
        """The bucket was deleted or replaced: drop what we know and mirror from what it holds now."""
        self._bucket_replaced = True
        self.nudge()

    def nudge(self) -> None:
        """Wake the follower now (its source changed, or the daemon is stopping)."""
        self._wake.set()

    def notify(self) -> None:
        """A file-system notification: the source was written. A notified follower holding a batch
        is not woken: it reads the source again when the batch is due, before putting it (the run
        loop wakes it after a step that put the batch without having read past this write)."""
        self._notified = True
        if not (self.watched and self._batch):
            self._wake.set()

    def untouched_for(self, seconds: float, now: float) -> bool:
        """Was the source, when last looked at, last modified more than ``seconds`` before ``now``?"""
        return self._last_probe is not None and now - self._last_probe.mtime > seconds

    def changed_since_last_look(self) -> bool:
        """For the idle sweep (may block briefly): has the source changed since it was last read?"""
        return self.source.probe() != self._last_probe

    def relocate(self, source: Source) -> None:
        """The same session now lives elsewhere (an archive move, a compressed file): follow it there."""
        if source.location != self.source.location:
            self.log.info("session moved", old=self.source.location, new=source.location)
        self.writer.source = source
        self._last_probe = None
        self._missing_since = None

    @property
    def behind(self) -> int:
        """What the source holds beyond the bucket's copy (bytes or rows: ``source.unit``)."""
        return self.source.behind(self.writer.position)

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        return log.bind(harness=self.key.harness, session=self.key.session_id)

    # ---------- the loop ----------

    async def run(self, stopping: anyio.Event) -> None:
        """Follow until ``stopping``, the source is gone for good, or it goes idle; then drain.

        A source idle for PARK_AFTER_S is *parked*: the task ends, its state is dropped (the bucket
        and the checkpoint keep it), and the harness's idle sweep starts ``run`` again when the
        source changes. Ten thousand old sessions then cost no task and no timer.
        """
        backoff = Backoff()
        conflicts = Backoff(base_s=CONFLICT_BACKOFF_S, cap_s=CONFLICT_BACKOFF_CAP_S)
        conflicted = False  # the last step ended in a writer conflict
        park = False
        self.parked = False
        try:
            while not stopping.is_set() and not self.finished:
                try:
                    delay = await self.step()
                    backoff.reset()
                    conflicts.reset()
                    conflicted = False
                    self.last_error = None
                except LeaseHeld as exc:
                    self._fail("blocked", str(exc), kind="lease_held")
                    self._backfill_done()  # another writer's to mirror: not ours to wait for
                    self._forget_position()  # look at the bucket (and the lease) again first
                    delay = exc.retry_in_s
                except WriterConflict as exc:
                    self.log.warning("another writer wrote this session; rolling forward", detail=str(exc))
                    self.ctx.telemetry.failed("writer_conflict", f"{self.key}: {exc}")
                    self._forget_position()
                    # the first at once (the usual race, settled by reading the bucket again);
                    # one after another, a cause that reading does not settle: back off, not spin
                    delay = conflicts.next() if conflicted else 0.0
                    conflicted = True
                except UnknownFormat as exc:
                    self._fail("error", f"unknown source format: {exc}", kind="unknown_format")
                    self._backfill_done()
                    delay = UNKNOWN_FORMAT_RETRY_S
                except SourceRefused as exc:  # e.g. its path now leaves the agent's directory
                    self._fail("error", f"source refused: {exc}", kind="source_refused")
                    self._backfill_done()
                    delay = UNKNOWN_FORMAT_RETRY_S
                except StoreRejected as exc:
                    self.ctx.health.failed(exc)
                    self._fail("error", str(exc), quiet=True, kind="store_rejected")
                    delay = max(30.0, backoff.next())
                except StoreError as exc:
                    self.ctx.health.failed(exc)
                    self._fail("error", str(exc), quiet=True, kind="store_unavailable")
                    delay = backoff.next()
                except Exception as exc:
                    self.log.exception("session follower failed; retrying")
                    self._fail("error", f"{type(exc).__name__}: {exc}", kind="internal")
                    delay = backoff.next()
                if delay is None:
                    break
                if self._notified and not self._batch:
                    self._wake.set()  # written during the step, after its read: look again now
                if delay >= PARKED_POLL_S and self.status != "error":
                    # drain before deciding: a wake-up that comes meanwhile (a notification) must
                    # find a running follower, not one about to park without having read it
                    await self.drain()
                    if not self._wake.is_set() and not self._notified and not self._batch:
                        park = True
                        break
                    self._wake = Wake()
                    continue
                if delay > 0 and not stopping.is_set():
                    with anyio.move_on_after(timeout_s(delay)):
                        await self._wake.wait()
                    self._wake = Wake()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(timeout_s(DRAIN_TIMEOUT_S)):
                await self.drain()
            if park and not self._batch:
                self._drop_state()
                self.parked = True

    def _drop_state(self) -> None:
        """Forget everything but the last probe; the next read reloads the checkpoint and rolls forward."""
        self.writer.reset()
        self._eligible = self.ctx.backfill_cutoff is None

    def _forget_position(self) -> None:
        """Another writer moved the session on: drop what we hold and roll forward on the next read."""
        self._batch.clear()
        self._last_probe = None
        self.writer.forget_position()

    def _fail(self, status: str, message: str, *, kind: str, quiet: bool = False) -> None:
        """Record why the session is not advancing; store outages are logged once by StoreHealth."""
        if message != self.last_error:
            emit = self.log.debug if quiet else self.log.warning
            emit("session not mirrored for now", status=status, error=message)
        self.status, self.last_error = status, message
        self.ctx.telemetry.failed(kind, f"{self.key}: {message}")

    def _caught_up(self, now: float) -> None:
        """Everything complete in the source is in the bucket (a partial last line does not count)."""
        self.pending_since = None
        self._caught_up_at = now
        self._backfill_done()
        if self._flush_asked > self._flush_done and not self.writer.meta_behind:
            self._flushed(self._flush_asked)

    def _backfill_done(self) -> None:
        if self.in_backfill:
            self.in_backfill = False
            self.ctx.telemetry.backfill_session_done()

    async def step(self, *, flush_all: bool = False) -> float | None:
        """One poll: read what is new, flush when due. Returns seconds to the next poll (None: done)."""
        now = time.time()
        self._notified = False  # this step's probe and read see every write notified so far
        self._previous_step_at, self._stepped_at = self._stepped_at, time.monotonic()
        if self._bucket_replaced:
            self._bucket_replaced = False
            self._batch.clear()
            self._last_probe = None
            self._drop_state()
        probe = self.source.probe()
        if probe is None:
            return await self._source_missing(now)
        self._missing_since = None
        writer = self.writer
        if not writer.loaded:
            await writer.load_cached()
            if writer.state is not None:
                self._eligible = True
        if not self._eligible:
            cutoff = self.ctx.backfill_cutoff
            if cutoff is not None and probe.mtime < cutoff and writer.state is None:
                self.status = "idle"
                self._caught_up(now)  # outside the backfill window: nothing of it is to be mirrored
                self._last_probe = probe  # the idle sweep wakes us when it changes
                return self._interval(probe, now)
            self._eligible = True
        changed = probe != self._last_probe
        asked = self._flush_asked
        flush_asked = asked > self._flush_done  # tracemirrorctl flush: read and put now
        forced = flush_all or flush_asked
        if changed and self.pending_since is None:
            # the oldest byte not in the bucket is at most as old as the last time all of it was,
            # or as this daemon (what was written while it was stopped counts from its start)
            seen_from = self._caught_up_at or self.ctx.telemetry.identity.started_at
            self.pending_since = max(min(probe.mtime, now), seen_from)
        if changed or self._more_to_read or flush_asked or (self._batch and (forced or self._flush_due())):
            reading = changed or self._more_to_read or flush_asked
            async with self._slot(reading):
                if reading:
                    await self._read()
                    self._last_probe = probe
                    if changed and not self._batch:
                        await self.writer.update_info()
                if self._batch and (forced or self._flush_due()):
                    await self._flush()
            if self._more_to_read:
                return 0.0
        if self._batch:
            assert self._batch.since is not None
            due_in = self._batch.since + self.ctx.flush_interval_s - time.monotonic()
            return max(0.01, min(due_in, self._interval(probe, now)))
        if writer.meta_behind and (writer.meta_due() or flush_asked):
            await writer.write_meta_current()
        if writer.checkpoint_stale and writer.state is not None:
            await writer.save_checkpoint()  # a disk that was full, a lock that was held: try again
        self._caught_up(now)
        self.status = "following" if now - probe.mtime < IDLE_AFTER_S else "idle"
        if flush_all:
            return None
        interval = self._interval(probe, now)
        # a notified follower may wait long: not so long that meta.json or the checkpoint lag
        if writer.meta_behind:
            interval = min(interval, max(0.01, writer.meta_due_in()))
        if writer.checkpoint_stale:
            interval = min(interval, CHECKPOINT_RETRY_S)
        return interval

    @contextlib.asynccontextmanager
    async def _slot(self, reading: bool) -> AsyncIterator[None]:
        """What a step that reads or puts holds: its bytes of the part budget, then an upload slot
        (every follower takes them in that order, so none waits on the other's)."""
        async with self.ctx.part_budget.hold(self._in_flight(reading), self.ctx.part_budget_bytes):
            async with self.ctx.limiter:
                yield

    def _in_flight(self, reading: bool) -> int:
        """Bytes this step may hold at once (PartBudget): the batch, and what a read may add to
        it: up to the part size, or what the file holds beyond the batch when that is less. Row
        and record sources (hermes, opencode) count only their batch: what they are behind is not
        in bytes, and their readers bound their own buffers (hermes: 32 MiB)."""
        held = self._batch.source_bytes
        if not reading or self.source.unit != "bytes":
            return held
        room = max(0, self.ctx.part_max_bytes - held)
        return held + min(room, self.source.behind(self._batch.end or self.writer.position))

    def _interval(self, probe: Probe, now: float) -> float:
        """Seconds to the next look; a source its harness wakes on every change is polled as a
        fallback, one covered by notifications waits to be woken (or to park)."""
        if self.watched:
            return watched_wait_s(probe.mtime, now)
        interval = poll_interval_s(probe.mtime, now)
        if interval < PARKED_POLL_S and getattr(self.source, "woken", False):
            return max(interval, WOKEN_POLL_S)
        return interval

    async def sync_once(self) -> None:
        """Mirror everything pending now, write meta.json, and return (``tracemirrord --once``)."""
        self.writer.once = True
        while await self.step(flush_all=True) == 0.0:
            pass
        await self.drain()

    async def drain(self) -> None:
        """Flush what is held and bring meta.json up to date (shutdown, --once, end of source)."""
        writer = self.writer
        if writer.state is None:
            return
        try:
            if self._batch and self._notified:
                await self._read_notified()
            if self._batch:
                await self._flush()
            if writer.unreleased:
                await writer.write_meta(release=True)
        except (StoreError, LeaseHeld, WriterConflict) as exc:
            self.log.warning("could not flush on the way out; the source keeps the records", error=str(exc))

    # ---------- reading ----------

    async def _read_notified(self) -> None:
        """Before a last flush: read what was written since the batch was read, which a notified
        follower holding a batch has not looked at (``notify``). A failed read keeps the batch as
        it is (the source keeps the rest for the next start)."""
        self._notified = False
        try:
            async with self._slot(reading=True):
                await self._read()
        except (StoreError, LeaseHeld, WriterConflict):
            raise
        except Exception as exc:
            self.log.warning("could not read the last writes on the way out", error=str(exc))

    async def _read(self) -> None:
        """Read complete records after what is held (or after the cursor) into the pending batch."""
        writer = self.writer
        while True:
            after = self._batch.end or writer.position
            budget = self.ctx.part_max_bytes - self._batch.source_bytes
            if budget <= 0:
                self._more_to_read = True
                return
            result = await self.source.read(after, budget)
            if result is None:
                self._more_to_read = False
                return
            if not writer.rolled_forward and (isinstance(result, Discontinuity) or not result.empty):
                await writer.roll_forward()
                self._batch.clear()
                if isinstance(result, Discontinuity) or writer.position != after:
                    continue  # read again from the position the bucket gave us
                # the bucket agrees with where this read started (the usual case): keep it
            if isinstance(result, Discontinuity):
                if self._batch:
                    await self._flush()  # what was read before the rewrite is still the old generation
                assert writer.state is not None
                self.log.warning(
                    "source no longer continues what was mirrored; starting a new generation",
                    reason=result.reason,
                    generation=writer.state.generation + 1,
                )
                writer.state.start_generation()
                continue
            if result.empty:
                self._more_to_read = False
                return
            since = None
            if self.watched and not self._batch:  # see READ_GAP_S
                since = max(time.monotonic(), self._previous_step_at + READ_GAP_S)
            self._batch.add(result, since)
            self._more_to_read = self.source.behind(result.end) > 0
            return

    def _flush_due(self) -> bool:
        assert self._batch.since is not None
        return (
            self._more_to_read
            or self._batch.source_bytes >= self.ctx.part_max_bytes
            or time.monotonic() - self._batch.since >= self.ctx.flush_interval_s
        )

    async def _flush(self) -> None:
        await self.writer.put_part(self._batch.records)
        if self.in_backfill:
            self.ctx.telemetry.backfill_progress(self._batch.source_bytes)
        self._batch.clear()

    async def _source_missing(self, now: float) -> float | None:
        """The source is gone: wait a moment for a move to show up, then mark the session ended."""
        if self._missing_since is None:
            self._missing_since = now
            return 1.0
        if now - self._missing_since < MISSING_GRACE_S:
            return 1.0
        self.finished = True
        writer = self.writer
        if not writer.loaded:
            await writer.load_cached()
        if writer.state is None or writer.state.next_seq == 0:
            return None
        if self._batch:
            await self._flush()
        if await writer.mark_ended():
            self.log.info("source is gone; its copy stays in the bucket, session marked ended")
        self.status = "ended"
        return None
