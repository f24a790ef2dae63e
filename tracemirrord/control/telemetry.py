"""The one place the daemon counts what it does; status, metrics and the heartbeat all read it.

Counters move as things happen (a request sent, a part written, a retry); the rest of the status
document (each session's cursor, lag and state, each harness's state, the store's health) is read
from the live objects when asked, by ``snapshot``. So ``tracemirrorctl status``, the Prometheus
metrics and the heartbeat cannot disagree: they are three renderings of one snapshot.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from tracemirrord.control.schema import (
    HEARTBEAT_KIND,
    HEARTBEAT_RECENT_SESSIONS,
    LAGGING_AFTER_S,
    Backfill,
    CheckpointStatus,
    Counters,
    HarnessStatus,
    SessionStatus,
    Status,
    StoreStatus,
    Totals,
)
from tracemirrord.store.base import (
    NotFound,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StoredObject,
    StoreError,
    store_epoch,
)

T = TypeVar("T")
STORE_OPERATIONS = ("put", "get", "head", "list", "check")


def iso(timestamp: float | None) -> str | None:
    """Unix time as ISO 8601 UTC with a Z suffix (None stays None)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def bump(counts: dict[str, int], name: str, by: int = 1) -> None:
    counts[name] = counts.get(name, 0) + by


class HarnessView(Protocol):
    """What a harness task shows of itself (supervisor.HarnessTask)."""

    def harness_status(self) -> HarnessStatus: ...

    def session_statuses(self, now: float, *, parked: bool = True) -> Iterable[SessionStatus]: ...

    def session_totals(self) -> Totals: ...


class StoreHealthView(Protocol):
    state: str
    last_error: str | None
    last_ok_at: float | None


@dataclass
class Identity:
    """Who this daemon is and what it was started with; fixed for the life of the process."""

    version: str
    agent_id: str
    project: str
    bucket: str
    instance: str
    host: str
    redaction: bool
    single_writer: bool = False  # TRACEMIRROR_SINGLE_WRITER: the user vouches for one writer per session
    started_at: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
    pid: int = field(default_factory=os.getpid)


class Telemetry:
    """Counters and backfill progress, plus the snapshot that puts them beside the live state."""

    def __init__(
        self, identity: Identity, settings: Mapping[str, Any] | None = None, rules: Iterable[str] = ()
    ) -> None:
        self.identity = identity
        self.settings: dict[str, Any] = dict(settings or {})
        # every series exists from the start, so a rate() over the first increment is not lost
        self.counters = Counters(
            requests=dict.fromkeys(STORE_OPERATIONS, 0), redactions=dict.fromkeys(rules, 0)
        )
        self.backfill = Backfill()
        self.last_error: str | None = None
        self.checkpoint = CheckpointStatus()  # kept by the writers' saves (writer.save_checkpoint)
        self.conditional_writes: str | None = None  # the store probe's verdict (None: not probed yet)
        self.agent_id_shared_with: str | None = None  # another live daemon beating under our id

    @classmethod
    def standalone(cls) -> Telemetry:
        """Counters for a pipeline run outside a daemon (unit tests, benchmarks): nobody reads them."""
        from tracemirrord import __version__

        return cls(Identity(__version__, "", "", "", "", "", redaction=True))

    # ---------- what happened ----------

    def request(self, operation: str, sent_bytes: int = 0) -> None:
        bump(self.counters.requests, operation)
        self.counters.bytes_uploaded += sent_bytes

    def request_failed(self, exc: StoreError) -> None:
        bump(self.counters.request_errors, _kind(exc))

    def part_written(self, source_bytes: int, redactions: Mapping[str, int]) -> None:
        self.counters.parts_written += 1
        self.counters.bytes_read += source_bytes
        for rule, count in redactions.items():
            bump(self.counters.redactions, rule, count)

    def failed(self, kind: str, message: str, *, retry: bool = True) -> None:
        """Something did not work and will be tried again (a session step, a heartbeat, a harness scan)."""
        bump(self.counters.errors, kind)
        if retry:
            self.counters.retries += 1
        self.last_error = message

    # ---------- the catch-up after a start ----------

    def backfill_started(self, sessions: int, source_bytes: int) -> None:
        """A harness's first discovery found ``sessions`` with ``source_bytes`` not yet in the bucket."""
        backfill = self.backfill
        if sessions == 0:
            return
        if backfill.started_at is None:
            backfill.started_at = iso(time.time())
        backfill.running = True
        backfill.finished_at = None
        backfill.sessions_total += sessions
        backfill.bytes_total += source_bytes

    def backfill_progress(self, source_bytes: int) -> None:
        self.backfill.bytes_done = min(self.backfill.bytes_total, self.backfill.bytes_done + source_bytes)

    def backfill_session_done(self) -> None:
        backfill = self.backfill
        backfill.sessions_done = min(backfill.sessions_total, backfill.sessions_done + 1)
        if backfill.sessions_done >= backfill.sessions_total and backfill.running:
            backfill.running = False
            backfill.bytes_done = backfill.bytes_total
            backfill.finished_at = iso(time.time())

    # ---------- the snapshot ----------

    def snapshot(
        self, harnesses: Iterable[HarnessView], health: StoreHealthView, *, parked: bool = True
    ) -> Status:
        """The whole status document as of now (design.md section 7, and ours).

        ``parked=False`` leaves the parked sessions out of ``sessions`` (they are in the totals and
        the harnesses' counts): they can be neither lagging nor failing, and ten thousand of them
        are most of the cost, which the heartbeat and systemd's STATUS= need not pay every minute.
        """
        now = time.time()
        ident = self.identity
        harness_list: list[HarnessStatus] = []
        sessions: list[SessionStatus] = []
        totals = Totals()
        for task in harnesses:
            harness = task.harness_status()
            harness.error = _shown(harness.error)
            harness_list.append(harness)
            for session in task.session_statuses(now, parked=parked):
                session.error = _shown(session.error)
                sessions.append(session)
            counted = task.session_totals()
            totals.sessions += counted.sessions
            totals.parts += counted.parts
            totals.bytes_uploaded += counted.bytes_uploaded
            totals.redactions += counted.redactions
        store = StoreStatus(
            state="ok" if health.state == "ok" else "unreachable",
            last_error=_shown(health.last_error),
            last_ok_at=iso(health.last_ok_at),
            conditional_writes=self.conditional_writes,
        )
        status = Status(
            version=ident.version,
            pid=ident.pid,
            agent_id=ident.agent_id,
            bucket=ident.bucket,
            uptime_s=round(time.monotonic() - ident.started_monotonic, 3),
            store=store,
            harnesses=harness_list,
            sessions=sessions,
            totals=totals,
            project=ident.project,
            instance=ident.instance,
            host=ident.host,
            started_at=iso(ident.started_at) or "",
            redaction=ident.redaction,
            single_writer=ident.single_writer,
            last_error=_shown(self.last_error),
            backfill=Backfill(**vars(self.backfill)),
            counters=_copy_counters(self.counters),
            settings=dict(self.settings),
            checkpoint=CheckpointStatus(self.checkpoint.state, _shown(self.checkpoint.last_error)),
        )
        status.problems = problems_of(status)
        if status.checkpoint.state == "memory":
            status.warnings.append(f"checkpoint in memory: {status.checkpoint.last_error}")
        if not status.redaction:
            status.warnings.append("redaction is OFF (TRACEMIRROR_REDACT): secrets are uploaded as they are")
        if status.single_writer:
            status.warnings.append(single_writer_warning(status.store.conditional_writes))
        if self.agent_id_shared_with:
            status.warnings.append(
                f"another tracemirrord writes heartbeats under agent id {ident.agent_id} "
                f"({self.agent_id_shared_with}): give each daemon its own TRACEMIRROR_AGENT_ID"
            )
        status.health = "degraded" if status.problems else "healthy"
        return status


def single_writer_warning(conditional_writes: str | None) -> str:
    """What status says while single-writer mode is on, with the store probe's verdict."""
    verdict = conditional_writes or "not probed yet"
    return (
        f"single-writer mode (TRACEMIRROR_SINGLE_WRITER): the store's conditional writes are {verdict}; "
        "only one tracemirrord may write each session"
    )


def problems_of(status: Status) -> list[str]:
    """Why the daemon is degraded, one line each (none: healthy). The exit code of ``status`` and the
    heartbeat's ``health`` both come from this list."""
    problems = []
    if status.store.state != "ok":
        problems.append(f"store unreachable: {status.store.last_error or 'no answer'}")
    if status.checkpoint.state == "failing":
        problems.append(f"checkpoint not saved: {status.checkpoint.last_error} (the bucket stays the truth)")
    for harness in status.harnesses:
        if harness.state == "error":
            problems.append(f"harness {harness.name} failing: {harness.error}")
    lagging = [  # a session blocked by another writer's lease is that writer's to mirror, not ours
        s
        for s in status.sessions
        if s.lag_s is not None
        and s.lag_s > LAGGING_AFTER_S
        and s.state != "blocked"
        and not status.backfill.running
    ]
    for session in lagging[:5]:
        problems.append(f"session {session.harness}/{session.session_id} lagging {session.lag_s:.0f}s")
    if len(lagging) > 5:
        problems.append(f"... and {len(lagging) - 5} more sessions lagging")
    for session in status.sessions:
        if session.state == "error" and session.error and "lagging" not in session.error:
            problems.append(f"session {session.harness}/{session.session_id}: {session.error}")
            break  # one is enough to say it; `tracemirrorctl sessions` lists them all
    return problems


def heartbeat_fields(status: Status, interval_s: float) -> dict[str, Any]:
    """What our heartbeat adds to tracecraft's fields (bucket-layout.md, "Heartbeats")."""
    recent = sorted(
        (s for s in status.sessions if s.last_flush_at), key=lambda s: s.last_flush_at or "", reverse=True
    )[:HEARTBEAT_RECENT_SESSIONS]
    lags = [s.lag_s for s in status.sessions if s.lag_s is not None]
    return {
        "kind": HEARTBEAT_KIND,
        "version": status.version,
        "host": status.host,
        "pid": status.pid,
        "instance": status.instance,
        "heartbeat_interval_s": interval_s,
        "sessions": status.totals.sessions,
        "lag_s": round(max(lags), 3) if lags else None,
        "store": status.store.state,
        "single_writer": status.single_writer,
        "health": status.health,
        "problems": status.problems,
        "harnesses": {h.name: h.state for h in status.harnesses},
        "recent_sessions": [
            {
                "harness": s.harness,
                "session_id": s.session_id,
                "last_flush_at": s.last_flush_at,
                "state": s.state,
            }
            for s in recent
        ],
        "totals": {"parts": status.totals.parts, "bytes_uploaded": status.totals.bytes_uploaded},
    }


def summary_line(status: Status) -> str:
    """One line for systemd's STATUS= and the heartbeat's ``summary``."""
    following = sum(1 for s in status.sessions if s.state == "following")
    lags = [s.lag_s for s in status.sessions if s.lag_s]
    text = f"{status.totals.sessions} sessions ({following} active), {status.totals.parts} parts"
    if lags:
        text += f", lag {max(lags):.1f}s"
    if status.backfill.running:
        b = status.backfill
        text += f", backfill {b.sessions_done}/{b.sessions_total} sessions"
    if status.store.state != "ok":
        text += ", STORE UNREACHABLE"
    elif status.problems:
        text += f", degraded: {status.problems[0]}"
    return text


def _shown(text: str | None) -> str | None:
    """An error message as it may leave the process: URL credentials masked, secrets redacted (an
    exception text can quote an endpoint or a header)."""
    if not text:
        return text
    from tracemirrord.logs import secret_free

    return secret_free(text)


def _copy_counters(counters: Counters) -> Counters:
    return Counters(
        **{k: dict(v) if isinstance(v, dict) else v for k, v in vars(counters).items()},
    )


def _kind(exc: StoreError) -> str:
    """``StoreUnavailable`` -> ``store_unavailable``: the error kind as a metric label."""
    name = type(exc).__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


class CountingStore:
    """An ObjectStore that counts every request and the bytes it sends (the ``requests`` counters).

    NotFound and PreconditionFailed are answers the pipeline expects, not failures: they are
    counted as requests only.
    """

    def __init__(self, inner: ObjectStore, telemetry: Telemetry) -> None:
        self.inner = inner
        self._telemetry = telemetry

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def epoch(self) -> int:
        return store_epoch(self.inner)

    async def put(self, key: str, body: bytes, **kwargs: Any) -> str:
        return await self._counted("put", self.inner.put(key, body, **kwargs), len(body))

    async def get(self, key: str) -> StoredObject:
        return await self._counted("get", self.inner.get(key))

    async def head(self, key: str) -> ObjectInfo:
        return await self._counted("head", self.inner.head(key))

    async def list(self, prefix: str, *, start_after: str | None = None) -> list[ObjectInfo]:
        return await self._counted("list", self.inner.list(prefix, start_after=start_after))

    async def check(self) -> None:
        await self._counted("check", self.inner.check())

    async def _counted(self, operation: str, request: Awaitable[T], sent_bytes: int = 0) -> T:
        self._telemetry.request(operation, sent_bytes)
        try:
            return await request
        except StoreError as exc:
            if not isinstance(exc, NotFound | PreconditionFailed):
                self._telemetry.request_failed(exc)
            raise

    async def close(self) -> None:
        await self.inner.close()
