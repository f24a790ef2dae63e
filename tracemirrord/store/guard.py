"""The store as the daemon uses it: trusted only once proven, and left alone while it refuses us.

``GuardedStore`` wraps the ObjectStore the daemon writes through and adds three things no backend
should have to know about:

- **Proof before the first write.** No object is written before the conditional-write probe
  (``probe.py``) has shown that the store enforces create-only and compare-and-swap writes, or the
  user has chosen single-writer mode. The daemon probes at start (``verify``); when the store was
  unreachable then, the first write probes.
- **A gate on refusals.** After a permanent refusal (access denied, wrong or expired credentials, a
  missing bucket), calls fail at once with the same error, without a request, until a capped and
  jittered backoff has passed; then one call goes through to find out. However many sessions are
  waiting, a refusing store sees a handful of requests a minute, not a retry storm.
- **Word of recovery.** While the store fails (refused or unreachable), ``watch`` asks it with one
  cheap list on a capped backoff; the first success after a failure calls ``on_recovered``, which
  the daemon uses to wake every waiting session, so it catches up within seconds of the store's
  return instead of at each session's own, longer backoff.
- **A bounded stop.** Once the daemon is stopping (``stop_within``), every request, in flight or to
  come, ends within a grace period: a silent store cannot hold a SIGTERM for its read timeouts. An
  abandoned PUT loses nothing (the source keeps the records; if it landed, the next start adopts it).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import anyio
import structlog

from tracemirrord.store.base import (
    NotFound,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StoredObject,
    StoreError,
    StoreRejected,
    StoreUnavailable,
    store_epoch,
)
from tracemirrord.store.probe import ConditionalWritesIgnored, ProbeReport, probe_conditional_writes

T = TypeVar("T")
log = structlog.get_logger("tracemirrord.store")

REFUSED_BASE_S = 1.0  # the first wait after a refusal; it doubles per refusal in a row
REFUSED_CAP_S = 60.0
WATCH_BASE_S = 1.0  # how soon ``watch`` first asks a failing store; it doubles per failed ask
WATCH_CAP_S = 15.0
STOP_GRACE_S = 5.0  # how long requests may still take once the daemon is stopping


def jittered_backoff(attempt: int, base_s: float, cap_s: float) -> float:
    """Capped exponential backoff with jitter: between half and all of ``base * 2**attempt``."""
    delay = min(cap_s, base_s * 2 ** min(attempt, 30))
    return random.uniform(delay / 2, delay)


class GuardedStore:
    """An ObjectStore that writes only to a proven store and does not hammer one that refuses it."""

    def __init__(
        self,
        inner: ObjectStore,
        *,
        probe_key: str,
        probe_body: Callable[[], bytes],
        single_writer: bool = False,
        on_recovered: Callable[[], None] | None = None,
    ) -> None:
        self.inner = inner
        self.single_writer = single_writer
        self.on_recovered = on_recovered
        self.report: ProbeReport | None = None
        self.trouble: StoreError | None = None  # the last failure not yet followed by a success
        self._probe_key = probe_key
        self._probe_body = probe_body
        self._verify_lock = anyio.Lock()
        self._unusable: ConditionalWritesIgnored | None = None
        self._probe_failure: tuple[float, StoreError] | None = None  # (when, why) the last probe failed
        self._refusal: StoreRejected | None = None
        self._refusals = 0  # in a row; reset by a successful call of the daemon's own (not watch's)
        self._retry_at = 0.0
        self._asking = False  # one call is finding out whether a refusing store still refuses
        self._troubled = anyio.Event()
        self._in_flight: set[anyio.CancelScope] = set()
        self._stop_deadline = math.inf  # in anyio's clock; set by stop_within

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def epoch(self) -> int:
        """The wrapped store's epoch (see ``store_epoch``): a bucket replaced under the daemon."""
        return store_epoch(self.inner)

    @property
    def conditional_writes(self) -> str | None:
        """``enforced``, ``not enforced``, or None while the store has not been probed."""
        if self.report is None:
            return None
        return "enforced" if self.report.enforced else "not enforced"

    # ---------- proof before the first write ----------

    async def probe(self) -> ProbeReport:
        """Run the conditional-write probe now (``--check``) and remember its report."""
        self.report = await self._guarded(
            lambda: probe_conditional_writes(self.inner, self._probe_key, self._probe_body())
        )
        return self.report

    async def verify(self) -> ProbeReport:
        """Probe once; raise ConditionalWritesIgnored if the store may not be written to."""
        if self._unusable is not None:
            raise self._unusable
        if self.report is None:
            waited_from = time.monotonic()
            async with self._verify_lock:
                if self.report is None:
                    await self._probe_once(waited_from)
        if self._unusable is not None:
            raise self._unusable
        assert self.report is not None
        return self.report

    async def _probe_once(self, waited_from: float) -> None:
        """Probe and judge, unless a probe failed while this caller waited for the lock: then fail the
        same way, so that sessions queued behind one failed probe do not each run another."""
        if self._probe_failure is not None:
            failed_at, failure = self._probe_failure
            if failed_at >= waited_from:
                raise type(failure)(str(failure))
        try:
            report = await self.probe()
        except StoreError as exc:
            self._probe_failure = (time.monotonic(), exc)
            raise
        self._judge(report)

    def _judge(self, report: ProbeReport) -> None:
        """Log the verdict once, and keep the error every write will raise if the store is unusable."""
        if report.enforced:
            log.info("store enforces conditional writes", bucket=self.url)
            return
        if report.swap_accepted and self.single_writer:
            log.warning(
                "store does not enforce conditional writes; running in single-writer mode "
                "(TRACEMIRROR_SINGLE_WRITER=true): only one tracemirrord may write each session",
                bucket=self.url,
                conditional_writes=report.describe(),
            )
            return
        self._unusable = ConditionalWritesIgnored(unusable_message(self.url, report))
        log.error("store refused: conditional writes", bucket=self.url, error=str(self._unusable))

    # ---------- the protocol ----------

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> str:
        await self.verify()
        return await self._guarded(
            lambda: self.inner.put(
                key,
                body,
                metadata=metadata,
                if_none_match=if_none_match,
                if_match=if_match,
                content_type=content_type,
            )
        )

    async def get(self, key: str) -> StoredObject:
        return await self._guarded(lambda: self.inner.get(key))

    async def head(self, key: str) -> ObjectInfo:
        return await self._guarded(lambda: self.inner.head(key))

    async def list(self, prefix: str, *, start_after: str | None = None) -> list[ObjectInfo]:
        return await self._guarded(lambda: self.inner.list(prefix, start_after=start_after))

    async def check(self) -> None:
        await self._guarded(self.inner.check)

    async def close(self) -> None:
        await self.inner.close()

    # ---------- a bounded stop ----------

    def stop_within(self, grace_s: float = STOP_GRACE_S) -> None:
        """The daemon is stopping: every request, in flight or to come, ends within ``grace_s``."""
        self._stop_deadline = min(self._stop_deadline, anyio.current_time() + grace_s)
        for scope in self._in_flight:
            scope.deadline = min(scope.deadline, self._stop_deadline)

    async def _bounded(self, call: Callable[[], Awaitable[T]]) -> T:
        """Make ``call``, abandoning it at the stop deadline (StoreUnavailable)."""
        with anyio.CancelScope(deadline=self._stop_deadline) as scope:
            self._in_flight.add(scope)
            try:
                return await call()
            finally:
                self._in_flight.discard(scope)
        raise StoreUnavailable(f"{self.url}: request abandoned: tracemirrord is stopping")

    # ---------- the gate ----------

    async def _guarded(self, call: Callable[[], Awaitable[T]], *, watching: bool = False) -> T:
        """Make ``call`` unless the store refused us and it is not yet time to ask again."""
        refusal = self._refusal
        if refusal is not None and (self._asking or time.monotonic() < self._retry_at):
            raise StoreRejected(str(refusal))  # no request: the answer would be the same
        self._asking = refusal is not None
        try:
            result = await self._bounded(call)
        except (NotFound, PreconditionFailed) as exc:
            # answers; but a HEAD in a missing bucket says NotFound too, so only a 412 proves health
            if isinstance(exc, PreconditionFailed):
                self._succeeded(watching)
            raise
        except StoreRejected as exc:
            self._refused(exc)
            raise
        except StoreUnavailable as exc:
            self._failed(exc)
            raise
        finally:
            if refusal is not None:
                self._asking = False
        self._succeeded(watching)
        return result

    def _refused(self, exc: StoreRejected) -> None:
        self._refusal = exc
        self._retry_at = time.monotonic() + jittered_backoff(self._refusals, REFUSED_BASE_S, REFUSED_CAP_S)
        self._refusals += 1
        self._failed(exc)

    def _failed(self, exc: StoreError) -> None:
        self.trouble = exc
        self._troubled.set()

    def _succeeded(self, watching: bool) -> None:
        if not watching:
            self._refusals = 0
        if self.trouble is None:
            return
        self.trouble = None
        self._refusal = None
        self._troubled = anyio.Event()
        if self.on_recovered is not None:
            self.on_recovered()

    # ---------- word of recovery ----------

    async def watch(self) -> None:
        """Run for the life of the daemon: while the store fails, ask it again on a capped backoff."""
        while True:
            await self._troubled.wait()
            asked = 0
            while self.trouble is not None:
                delay = jittered_backoff(asked, WATCH_BASE_S, WATCH_CAP_S)
                await anyio.sleep(max(delay, self._retry_at - time.monotonic()))
                asked += 1
                try:
                    await self._guarded(self.inner.check, watching=True)
                except StoreError:
                    pass


def unusable_message(url: str, report: ProbeReport) -> str:
    """The one line that says why a store is refused and what to do."""
    if not report.swap_accepted:
        return (
            f"store {url} refused a compare-and-swap write (If-Match) on an object's current ETag, so "
            "meta.json could never be updated; use a store that supports If-Match"
        )
    return (
        f"store {url} ignores conditional writes ({' and '.join(report.ignored)} were accepted where "
        "they must be refused), so two daemons on one session would duplicate parts; use a store that "
        "enforces them, or set TRACEMIRROR_SINGLE_WRITER=true if only one tracemirrord ever writes each "
        "session"
    )
