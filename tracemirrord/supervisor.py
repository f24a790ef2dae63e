"""The task tree of a running daemon, and its start and stop order.

Start: take the state-dir lock, open the checkpoint and check the store, bind the control socket
(and the metrics address), then one HarnessTask per enabled harness plus the heartbeat. A
HarnessTask discovers its sessions every ``scan_interval`` and runs one SessionMirror per session;
a harness task that fails is restarted with backoff and never takes the others down (a session
follower that fails backs off on its own, see mirror.py). Every other long-lived task (heartbeat,
control socket, metrics, signals, systemd notifications) runs under ``_keep_running``: an exception
is logged, counted and the task restarted with backoff, so none of them can stop the daemon.
SIGHUP reloads the configuration.
Stop (SIGTERM/SIGINT): stop reading, let every follower flush what it holds and write meta.json
(bounded time), then write the last heartbeat ("stopped"), close; a second signal exits at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import structlog

from tracemirrord import __version__, anonymize, early_signals, layout
from tracemirrord.anonymize import AnonymizingRedactor
from tracemirrord.attachments import AttachmentMirror
from tracemirrord.checkpoint import Checkpointer, parse_cached
from tracemirrord.config import (
    ConfigError,
    Settings,
    build_redactor,
    build_store,
    load_settings,
    parse_metrics_addr,
)
from tracemirrord.control.api import ControlApi
from tracemirrord.control.schema import (
    FlushResult,
    HarnessStatus,
    ReloadResult,
    SessionStatus,
    Status,
    Totals,
)
from tracemirrord.control.server import SocketInUse, bind_tcp, bind_unix, serve, unlink_socket
from tracemirrord.control.telemetry import (
    CountingStore,
    Identity,
    Telemetry,
    heartbeat_fields,
    summary_line,
)
from tracemirrord.harnesses import REGISTRY
from tracemirrord.harnesses.base import Attachment, Discovery, Harness, HarnessHooks, SessionRef
from tracemirrord.heartbeat import HeartbeatWriter
from tracemirrord.lease import record_instance
from tracemirrord.mirror import PARK_AFTER_S, Backoff, MirrorContext, SessionMirror
from tracemirrord.model import SessionKey, SessionState, utc_now_iso
from tracemirrord.privacy import SessionFilter, Verdict, decide_by_cwd
from tracemirrord.progress import ProgressBar
from tracemirrord.redact import Redactor
from tracemirrord.reload import apply_live_settings, live_settings, restart_only_changes
from tracemirrord.sdnotify import Notifier
from tracemirrord.source import START, Probe, Source
from tracemirrord.store.base import StoreError, store_epoch
from tracemirrord.store.guard import GuardedStore
from tracemirrord.store.probe import ConditionalWritesIgnored
from tracemirrord.timers import timeout_s
from tracemirrord.watch import Changes, TreeWatcher, WatchUnavailable, open_watcher

log = structlog.get_logger("tracemirrord")

IDLE_SWEEP_EVERY = 5  # scans between two idle sweeps of the parked sessions
COLD_SWEEP_EVERY = 30  # scans between two sweeps that include the cold ones (see sweep_parked)
COLD_AFTER_S = 86400.0
STABLE_RUN_S = 60.0
PROGRESS_EVERY_S = 10.0
BAR_EVERY_S = 0.25  # redraws of the --once progress bar on a terminal
DRAIN_WAIT_S = 30.0  # the last heartbeat waits this long at most for the followers to drain
RESCAN_CHUNK = 500  # running followers stat'ed between two yields to the event loop in a rescan
NOTIFY_BATCH_S = 0.2  # after handling notifications, wait this long before reading more
NOTIFIED_WATCH_S = 5.0  # a harness's own watch looks at least this often when notified of changes
UNDECIDED_LOOK_S = 5.0  # an undecided session (privacy filter) is looked at again at least this often
WAKE_DEPTH = 2  # directories watched below a database harness's roots (hermes: profiles/<name>/)


def describe_failure(exc: BaseException) -> str:
    """``Type: message`` of what really failed, looking through the task groups' exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_failure(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


@dataclass
class OnceProgress:
    """How far ``--once`` has come, for the line it logs every PROGRESS_EVERY_S on a long backfill."""

    sessions: int = 0  # sessions found with something to mirror
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def log(self, event: str, bytes_done: int = 0, bytes_total: int = 0) -> None:
        log.info(
            event,
            sessions_done=self.done,
            sessions=self.sessions,
            bytes_done=bytes_done,
            bytes_total=bytes_total,
            elapsed_s=self.elapsed_s,
        )

    @property
    def elapsed_s(self) -> float:
        return round(time.monotonic() - self.started, 1)


class DaemonError(Exception):
    """A condition that stops the daemon from starting; the message says what to do."""


class DaemonConfigError(DaemonError):
    """The configuration or environment cannot work (a store that ignores conditional writes): exit 2."""


class CheckpointCursors:
    """``HarnessHooks.cursors`` for one harness: shared read positions kept in the local checkpoint."""

    def __init__(self, checkpoint: Checkpointer, harness: str) -> None:
        self._checkpoint = checkpoint
        self._harness = harness

    async def load(self, source: str) -> str | None:
        return await self._checkpoint.load_cursor(self._harness, source)

    async def save(self, source: str, value: str) -> None:
        if not await self._checkpoint.save_cursor(self._harness, source, value):
            log.warning("shared cursor not saved", harness=self._harness, error=self._checkpoint.last_error)


class HarnessTask:
    """Discovers one harness's sessions and runs a follower for each."""

    def __init__(
        self,
        harness: Harness,
        roots: list[Path],
        ctx: MirrorContext,
        scan_interval_s: float,
        *,
        watch: str = "auto",
        rescan_interval_s: float = 60.0,
        session_filter: SessionFilter | None = None,
    ):
        self.harness = harness
        self.roots = roots
        self.ctx = ctx
        self.scan_interval_s = scan_interval_s
        self.watch_mode = watch  # "auto": notifications where they can be had; "poll": never
        self.rescan_interval_s = rescan_interval_s
        self.watcher: TreeWatcher | None = None
        self.watch_problem: str | None = None  # why this harness polls (None while notified)
        self._paths: dict[str, str] = {}  # source path -> session id, for notifications
        self._rescan_at = 0.0  # monotonic time of the next rescan of every followed file
        self._rescan_now = False  # events were lost: rescan at once
        self._watch_scope: anyio.CancelScope | None = None  # the notifications task's
        self.followers: dict[str, SessionMirror] = {}
        self.state = "idle"
        self.error: str | None = None
        self._refused: set[Path] = set()  # logged once each
        self.hooks = HarnessHooks(
            CheckpointCursors(ctx.checkpoint, harness.name), self.wake, ctx.agent_id, pause=self.pause
        )
        self._changed = anyio.Event()  # something below the roots changed (notifications)
        self._scan_due = True  # notified (or a new session woken) since the last discovery
        harness.hooks = self.hooks
        self._last_found: Discovery | None = None
        self._refs: dict[str, SessionRef] = {}
        self._kick = anyio.Event()
        self._to_start: list[SessionMirror] = []
        self.attachments = AttachmentMirror(ctx)
        self.first_scan_done = anyio.Event()  # READY=1 waits for every harness's first discovery
        self.stopping = anyio.Event()  # this harness alone (removed by a reload)
        self._discovered_once = False
        self._epoch = store_epoch(ctx.store)
        self.newest: dict[str, float] = {}  # the last triage's followers -> source mtime (order)
        self.filter = session_filter or SessionFilter()
        self.admitted: set[str] = set()  # session ids the filter let through (decided once each)
        self.excluded: dict[str, str] = {}  # session id -> the label of what left it out
        self._undecided: dict[str, SessionRef] = {}  # waiting for their first records to name a cwd
        self._look_again: set[str] = set()  # undecided sessions written to since their last look
        self._undecided_at = 0.0  # monotonic time of the last look at every undecided session
        # the last attachment list filtered: (the discovery's list, admitted count, the filtered list)
        self._attachments_of: tuple[list[Attachment], int, list[Attachment]] | None = None

    def harness_status(self) -> HarnessStatus:
        return HarnessStatus(
            name=self.name,
            root=str(self.roots[0]) if self.roots else "",
            state=self.state,  # type: ignore[arg-type]  # one of schema.HARNESS_STATES
            sessions=len(self.followers),
            error=self.error,
            roots=[str(r) for r in self.roots],
            parked=sum(1 for f in self.followers.values() if f.parked),
            following="notifications" if self.watcher is not None else "polling",
            polling_because=self.watch_problem,
            excluded=len(self.excluded),
            filtered=self.filter_counts() if self.filter.active else {},
        )

    def session_statuses(self, now: float, *, parked: bool = True) -> list[SessionStatus]:
        return [f.session_status(now) for f in self.followers.values() if parked or not f.parked]

    def session_totals(self) -> Totals:
        """Sessions, parts, bytes and redactions of every follower, from their summaries (cheap)."""
        totals = Totals(sessions=len(self.followers))
        for follower in self.followers.values():
            summary = follower.current_summary()
            if summary is not None:
                totals.parts += summary.parts
                totals.bytes_uploaded += summary.bytes_uploaded
                totals.redactions += sum(summary.redactions.values())
        return totals

    @property
    def name(self) -> str:
        return self.harness.name

    def wake(self, session_id: str, *, written: bool = False) -> None:
        """A harness saw this session change: read it now (start it again if it was parked).
        ``written``: a notification that its file was written, which a follower holding a batch
        leaves for the read before its flush (``SessionMirror.notify``)."""
        follower = self.followers.get(session_id)
        if follower is None:
            if session_id in self._undecided:
                self._look_again.add(session_id)  # its first records may name its cwd now
            self._scan_due = True
            self._kick.set()  # a new session: discover now
        elif follower.parked:
            follower.parked = False
            self._to_start.append(follower)
            self._kick.set()
        elif written:
            follower.notify()
        else:
            follower.nudge()

    def _open(self, ref: SessionRef) -> Source:
        return self.harness.open_source(ref, max_line_bytes=self.ctx.max_line_bytes)

    async def discover(self) -> list[SessionMirror]:
        """Scan the roots; create followers for new sessions, move followers of moved ones.

        A session seen for the first time goes through the privacy filter (privacy.py) first: an
        excluded one never gets a follower, an undecided one waits for its cwd.
        """
        if not any(root.exists() for root in self.roots):
            self.state, self.error = "missing", None
            return []
        self._scan_due = False  # a notification from now on is after this scan's look
        found = await self.harness.discover(self.roots)
        self.error = None  # it recovered (or never failed)
        new: list[SessionMirror] = []
        if found is not self._last_found:
            self._last_found = found
            new = self._take(found)
        new += await self._decide_undecided()
        self.state = "running" if self.followers else "idle"
        if not new and self._discovered_once:
            return []
        first = not self._discovered_once
        self._discovered_once = True
        return await self._triage(new, first=first)

    def _take(self, found: Discovery) -> list[SessionMirror]:
        """Followers for the sessions of ``found`` that are new and admitted; move the moved ones."""
        for problem in found.refused:
            if problem.path not in self._refused:
                self._refused.add(problem.path)
                log.error("session refused", harness=self.name, path=str(problem.path), error=str(problem))
        new: list[SessionMirror] = []
        moved: list[str] = []
        for ref in found.sessions:
            follower = self.followers.get(ref.session_id)
            if follower is None or follower.finished:
                if ref.session_id not in self.admitted and not self._admit_by_path(ref):
                    continue  # excluded, or waiting for its cwd
                new.append(self._follow(ref, self._open(ref)))
                continue
            if self._refs.get(ref.session_id) != ref:
                follower.relocate(self._open(ref))
                moved.append(ref.session_id)
                self._refs[ref.session_id] = ref
        self._map_paths(found)
        for session_id in moved:
            self.wake(session_id)  # look at the new path now (no notification may come from it)
        return new

    def _follow(self, ref: SessionRef, source: Source) -> SessionMirror:
        """A new follower for ``ref`` (not started: the triage decides)."""
        follower = SessionMirror(SessionKey(self.name, ref.session_id), source, self.ctx)
        self.followers[ref.session_id] = follower
        self._refs[ref.session_id] = ref
        return follower

    # ---------- the privacy filter ----------

    def _admit_by_path(self, ref: SessionRef) -> bool:
        """Whether ``ref`` may be followed now: admitted by its path alone (or no filter), else
        excluded for good, or left undecided until its cwd is looked up (_decide_undecided)."""
        if ref.session_id in self.excluded:
            return False
        verdict = self.filter.by_path(str(ref.path), many_projects=ref.many_projects)
        if verdict is None:
            if ref.session_id not in self._undecided:
                self._look_again.add(ref.session_id)
            self._undecided[ref.session_id] = ref
            return False
        return self._settle(ref, verdict)

    def _settle(self, ref: SessionRef, verdict: Verdict) -> bool:
        self._undecided.pop(ref.session_id, None)
        self._look_again.discard(ref.session_id)
        if verdict.mirror:
            self.admitted.add(ref.session_id)
            return True
        self.excluded[ref.session_id] = verdict.because or ""
        log.info(
            "session excluded by the privacy filter",
            harness=self.name,
            session_id=ref.session_id,
            path=str(ref.path),
            by=verdict.because,
        )
        return False

    async def _decide_undecided(self) -> list[SessionMirror]:
        """Look up the cwd of the sessions waiting for one: those written to since the last look,
        and every one of them once per UNDECIDED_LOOK_S (so one left alone is decided by SETTLE_S)."""
        if not self._undecided:
            return []
        now = time.monotonic()
        if now - self._undecided_at >= UNDECIDED_LOOK_S:
            self._undecided_at = now
            self._look_again.update(self._undecided)
        looks = [self._undecided[i] for i in self._look_again if i in self._undecided]
        self._look_again = set()
        new = []
        for ref in looks:
            source = self._open(ref)
            try:
                verdict = await decide_by_cwd(self.filter, ref, source, time.time())
            except Exception as exc:  # unreadable for now: it waits, and says why once
                if ref.path not in self._refused:
                    self._refused.add(ref.path)
                    where = str(ref.path)
                    log.warning("session cwd not readable yet", harness=self.name, path=where, error=str(exc))
                continue
            if verdict is not None and self._settle(ref, verdict):
                new.append(self._follow(ref, source))
        if new and self._last_found is not None:
            self._map_paths(self._last_found)
        return new

    def filter_counts(self) -> dict[str, int]:
        """Sessions left out so far, per pattern (and "undecided" while some wait for a cwd)."""
        return self.filter.tally(self.excluded.values(), len(self._undecided))

    def _map_paths(self, found: Discovery) -> None:
        """Which session each notified path belongs to; a follower whose file raises notifications
        is marked ``watched`` (no polling of its own)."""
        self._paths = {}
        for ref in found.sessions:
            follower = self.followers.get(ref.session_id)
            path = str(ref.path)
            if follower is None:  # excluded (no notifications wanted) or undecided (wake to decide)
                watcher = self.watcher
                if ref.session_id in self._undecided and watcher is not None and watcher.covers(path):
                    self._paths[path] = ref.session_id
                continue
            watcher = self.watcher if self.harness.kind == "jsonl" else None  # one file, one session
            covered = watcher is not None and (
                watcher.covers(path) or self._watch_directory(watcher, os.path.dirname(path))
            )
            if covered:
                self._paths[path] = ref.session_id
            follower.watched = covered

    def _watch_directory(self, watcher: TreeWatcher, directory: str) -> bool:
        """Watch the directory of a session outside the roots (Claude Code's prompt history)."""
        try:
            return watcher.add_directory(directory)
        except WatchUnavailable as exc:
            self._stop_watching(str(exc))
            return False

    async def _triage(self, new: list[SessionMirror], *, first: bool = False) -> list[SessionMirror]:
        """Park new followers of old, fully mirrored (or out-of-window) sources without starting them.

        On a first start over months of history most sessions have nothing to do; checking them in
        one worker-thread batch against the checkpoint avoids a task, a state and a read for each.
        Returns the followers that need a task now, each handed its cached state from that batch,
        newest source first (by mtime; one written to while the triage ran counts as newest): they
        take the upload slots in that order, so a backfill over months of history puts today's and
        the active sessions in the bucket before last quarter's. On the first discovery those are
        the catch-up after the start (Telemetry.backfill).
        """
        if not new:
            return new
        cached = await self.ctx.checkpoint.load_all_raw(self.name)
        cutoff = self.ctx.backfill_cutoff

        def triage() -> list[tuple[SessionMirror, SessionState | None, Probe | None, int, float]]:
            """(follower, its cached state, the probe to park it at or None to start it now, what
            its source holds beyond the cached position, and its source's mtime)."""
            now = time.time()
            verdicts = []
            for follower in new:
                raw = cached.get(follower.key.session_id)
                state = None if raw is None else parse_cached(raw, follower.key)
                probe = follower.source.probe()
                park = None
                # a file notifications cover is woken when it changes: park it at any age
                if probe is not None and (follower.watched or now - probe.mtime >= PARK_AFTER_S):
                    if raw is None:
                        if cutoff is not None and probe.mtime < cutoff:
                            park = probe  # outside the backfill window until it changes
                    elif state is not None:
                        if follower.source.settled_at(state.position) == probe:
                            park = probe  # fully mirrored and untouched since
                mtime = probe.mtime if probe is not None else float("-inf")  # a gone source: last
                if park is not None:
                    # a parked follower keeps no state, only its summary for status (remembered
                    # here: the worker thread holds its last result, which must not hold states)
                    if state is not None:
                        follower.remember(state)
                    verdicts.append((follower, None, park, 0, mtime))
                else:
                    position = state.position if state is not None else START
                    verdicts.append((follower, state, None, follower.source.behind(position), mtime))
            return verdicts

        started: list[tuple[float, SessionMirror]] = []
        behind_bytes = 0
        for follower, state, park, behind, mtime in await anyio.to_thread.run_sync(triage):
            if park is not None and follower.nudged:
                # written to while the triage ran (it loads its own state): the newest of all
                started.append((float("inf"), follower))
            elif park is not None:
                follower.park_at(park)
            else:
                follower.use_cached(state)  # no checkpoint read of its own
                if state is not None:
                    follower.remember(state)
                started.append((mtime, follower))
                if first:
                    follower.in_backfill = True
                    if follower.source.unit == "bytes":
                        behind_bytes += behind
        if first:
            self.ctx.telemetry.backfill_started(len(started), behind_bytes)
        started.sort(key=lambda entry: -entry[0])  # stable: equal mtimes keep the discovery order
        self.newest = {follower.key.session_id: mtime for mtime, follower in started}
        return [follower for _, follower in started]

    async def run(self, stopping: anyio.Event) -> None:
        """Follow every session until ``stopping``; followers drain before this returns."""
        self._start_watching()
        log.info(
            "harness started",
            harness=self.name,
            roots=[str(r) for r in self.roots],
            following="notifications" if self.watcher is not None else "polling",
            polling_because=self.watch_problem,
        )
        try:
            async with anyio.create_task_group() as followers:
                followers.start_soon(self._relay_stop, stopping)
                followers.start_soon(self.harness.watch, self.roots, self.hooks, stopping)
                if self.watcher is not None:
                    followers.start_soon(self._notifications, stopping)
                scans = 0
                while not stopping.is_set():
                    for follower in await self.bucket_replaced():
                        followers.start_soon(follower.run, stopping)
                    self._refresh_watches()
                    if self._discovery_due():
                        for follower in await self.discover():
                            followers.start_soon(follower.run, stopping)
                    self.first_scan_done.set()
                    await self.mirror_attachments()
                    if self.watcher is not None:
                        for follower in await self.rescan_due():
                            followers.start_soon(follower.run, stopping)
                    elif scans % IDLE_SWEEP_EVERY == 0:
                        for follower in await self.sweep_parked(cold=scans % COLD_SWEEP_EVERY == 0):
                            followers.start_soon(follower.run, stopping)
                    scans += 1
                    with anyio.move_on_after(timeout_s(self.scan_interval_s)):
                        await self._kick.wait()
                    self._kick = anyio.Event()
                    woken, self._to_start = self._to_start, []
                    for follower in woken:
                        if not stopping.is_set():
                            followers.start_soon(follower.run, stopping)
                self.nudge_all()
        finally:
            self.nudge_all()
            if self.watcher is not None:
                self.watcher.close()
                self.watcher = None

    def _discovery_due(self) -> bool:
        """Whether this tick scans the roots. Always while polling. Under notifications, for a harness
        whose discovery they cover (``Harness.notified_discovery``), only when something below the
        roots was reported (or a new session woken) since the last scan, a watch was added, the
        rescan is due, or sessions wait for the privacy filter: an idle hermes database then costs
        no worker-thread scan every scan interval, only its watch's stat."""
        if self.watcher is None or not self.harness.notified_discovery or self._last_found is None:
            return True
        if self._scan_due or self._rescan_now or self._undecided:
            return True
        return time.monotonic() >= self._rescan_at

    # ---------- notifications ----------

    def _start_watching(self) -> None:
        """Cover the roots with notifications, or say why this harness polls."""
        self.watcher, self.watch_problem = None, None
        self._last_found = None  # mark every follower watched or not on the next discovery
        if self.watch_mode == "poll":
            self.watch_problem = "watch = poll"
            return
        # a database harness's own watch looks after a change below its roots (hooks.pause)
        depth = getattr(self.harness, "max_depth", 4) if self.harness.kind == "jsonl" else WAKE_DEPTH
        try:
            self.watcher = open_watcher(self.roots, depth)
        except (WatchUnavailable, OSError) as exc:
            self.watch_problem = str(exc)
            log.warning("file-system notifications unavailable; polling", harness=self.name, reason=str(exc))
            return
        self._rescan_at = time.monotonic() + self.rescan_interval_s

    def _stop_watching(self, reason: str) -> None:
        """Notifications failed while running: every follower goes back to polling its own file."""
        log.warning("file-system notifications stopped; polling", harness=self.name, reason=reason)
        if self._watch_scope is not None:
            self._watch_scope.cancel()  # the notifications task closes the watcher on its way out
        self.watcher, self.watch_problem, self._paths = None, reason, {}
        for follower in self.followers.values():
            follower.watched = False
            follower.nudge()
        self._kick.set()

    def _refresh_watches(self) -> None:
        """Watch roots that appeared since the last scan (and every directory again after an overflow)."""
        watcher = self.watcher
        if watcher is None:
            return
        try:
            if watcher.refresh(full=self._rescan_now):
                self._last_found = None  # new watches: map the paths again
        except WatchUnavailable as exc:
            self._stop_watching(str(exc))

    async def _notifications(self, stopping: anyio.Event) -> None:
        """Turn notifications into wake-ups: a written session file wakes its follower; a new,
        moved or deleted entry makes the task scan now; lost events make it rescan everything."""
        watcher = self.watcher
        assert watcher is not None
        try:
            with anyio.CancelScope() as self._watch_scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(_cancel_when, stopping, group.cancel_scope)
                    try:
                        while True:
                            self._apply(await watcher.changes())
                            # let a busy file's events gather (the kernel merges repeats): a
                            # follower holding a batch reads again only when it is due anyway
                            await anyio.sleep(NOTIFY_BATCH_S)
                    except OSError as exc:
                        self._stop_watching(f"reading notifications failed: {exc}")
        finally:
            self._watch_scope = None
            watcher.close()

    def _apply(self, changes: Changes) -> None:
        self._changed.set()
        self._scan_due = True
        for path in changes.written:
            session_id = self._paths.get(path)
            if session_id is not None:
                self.wake(session_id, written=True)
        if changes.overflow:
            log.info("notification queue overflowed; rescanning every file", harness=self.name)
            self._rescan_now = True
        if changes.entries or changes.overflow:
            self._kick.set()

    async def pause(self, seconds: float, stopping: anyio.Event) -> None:
        """``HarnessHooks.pause`` for the harness's own watch (hermes, opencode: a stat of each
        database per look). With notifications the next look waits for a change below the roots,
        or NOTIFIED_WATCH_S as a fallback, and never comes sooner than ``seconds`` after this one."""
        if self.watcher is None:
            with anyio.move_on_after(timeout_s(seconds)):
                await stopping.wait()
            return
        started = time.monotonic()
        with anyio.move_on_after(timeout_s(max(seconds, NOTIFIED_WATCH_S))):
            await self._changed.wait()
        self._changed = anyio.Event()
        rest = started + seconds - time.monotonic()
        if rest > 0 and not stopping.is_set():
            with anyio.move_on_after(timeout_s(rest)):
                await stopping.wait()

    async def rescan_due(self) -> list[SessionMirror]:
        """The safety net under notifications: every rescan interval (at once after an overflow),
        stat every followed file; wake those that changed since their follower last looked.

        Returns the parked followers to start again (running ones are nudged)."""
        now = time.monotonic()
        if not self._rescan_now and now < self._rescan_at:
            return []
        self._rescan_now = False
        self._rescan_at = now + self.rescan_interval_s
        woken = await self.sweep_parked(cold=True)
        running = [f for f in self.followers.values() if not f.parked and not f.finished]
        for start in range(0, len(running), RESCAN_CHUNK):
            for follower in running[start : start + RESCAN_CHUNK]:
                if follower.changed_since_last_look():
                    follower.nudge()
            await anyio.lowlevel.checkpoint()
        return woken

    async def bucket_replaced(self) -> list[SessionMirror]:
        """When the bucket was deleted or replaced while running (store epoch), every session is
        mirrored again from what it holds now: the cache is dropped, parked followers are returned to
        be started, running ones told."""
        epoch = store_epoch(self.ctx.store)
        if epoch == self._epoch:
            return []
        self._epoch = epoch
        log.warning("the bucket was deleted or replaced; mirroring every session again", harness=self.name)
        await self.ctx.checkpoint.forget_bucket()
        self.attachments = AttachmentMirror(self.ctx)  # what it knew to be uploaded is gone
        woken = []
        for follower in self.followers.values():
            follower.bucket_replaced()
            if follower.parked:
                follower.parked = False
                woken.append(follower)
        return woken

    async def mirror_attachments(self) -> None:
        """Upload the files that belong to sessions but are no transcript (once each; cheap when done)."""
        found = self._last_found
        if found is None or not found.attachments:
            return
        items = found.attachments
        if self.filter.active:  # only those of admitted sessions
            held = self._attachments_of
            if held is not None and held[0] is items and held[1] == len(self.admitted):
                items = held[2]  # the same list object as last time: the mirror's fast path
            else:
                admitted = [a for a in items if a.session_id in self.admitted]
                self._attachments_of = (items, len(self.admitted), admitted)
                items = admitted
        await self.attachments.mirror(self.name, items)

    async def _relay_stop(self, stopping: anyio.Event) -> None:
        await stopping.wait()
        self._kick.set()
        self._changed.set()

    def nudge_all(self) -> None:
        for follower in self.followers.values():
            follower.nudge()

    async def sweep_parked(self, *, cold: bool = True) -> list[SessionMirror]:
        """Stat parked (long idle) sessions in one worker-thread batch; return those that changed.

        Each stat costs a few microseconds, which for ten thousand old sessions is most of the idle
        budget; so files untouched for a day (*cold*) are only included when ``cold`` is set, which
        the harness task does every COLD_SWEEP_EVERY scans (a minute at the default scan interval).
        """
        now = time.time()
        parked = [
            f
            for f in self.followers.values()
            if f.parked and (cold or not f.untouched_for(COLD_AFTER_S, now))
        ]
        if not parked:
            return []
        changed = await anyio.to_thread.run_sync(lambda: [f for f in parked if f.changed_since_last_look()])
        changed = [f for f in changed if f.parked]  # not those a wake-up started meanwhile
        for follower in changed:
            follower.parked = False
        return changed

    async def pending_once(self) -> list[tuple[float, SessionMirror]]:
        """``--once``: discover, and the followers with something to mirror, each with its source's
        mtime (the order they are taken in, newest first, across every harness)."""
        pending = await self.discover()
        if self._undecided:
            log.warning(
                "sessions not mirrored by this run: the privacy filter needs their cwd, which "
                "their first records do not name yet",
                harness=self.name,
                sessions=len(self._undecided),
            )
        return [(self.newest.get(f.key.session_id, float("-inf")), f) for f in pending]


async def sync_newest_first(
    tasks: list[HarnessTask], limiter: anyio.CapacityLimiter, progress: OnceProgress
) -> list[str]:
    """``--once``: mirror every pending session of ``tasks``, newest source first across all of them.

    A few workers each mirror a session to the end before taking the next: with a task per session,
    a session of many parts would go to the back of the upload queue after each part, and months-old
    sessions would land before the rest of today's. Twice the upload slots: a session's meta.json
    write (outside the slot) overlaps the next one's parts. Returns one message per failure.
    """
    failures: list[str] = []
    pending: list[tuple[float, SessionMirror]] = []
    for task in tasks:
        pending += await task.pending_once()
    pending.sort(key=lambda entry: entry[0])  # stable; popped from the end: newest first
    queue = [follower for _, follower in pending]
    progress.sessions += len(queue)

    async def sync(follower: SessionMirror) -> None:
        try:
            await follower.sync_once()
        except Exception as exc:
            failures.append(f"{follower.key}: {type(exc).__name__}: {exc}")
            log.error("session not mirrored", session=str(follower.key), error=str(exc))
        finally:
            progress.done += 1

    async def worker() -> None:
        while queue:
            await sync(queue.pop())

    async with anyio.create_task_group() as tg:
        for _ in range(min(len(queue), 2 * int(limiter.total_tokens))):
            tg.start_soon(worker)
        for task in tasks:
            tg.start_soon(task.mirror_attachments)
    return failures


def harness_roots(name: str, settings: Settings, env: Mapping[str, str]) -> list[Path]:
    harness = REGISTRY[name]()
    if name in settings.roots:
        return [settings.roots[name]]
    return harness.default_roots(env, Path(env.get("HOME") or Path.home()))


class Daemon:
    """One running tracemirrord: the shared context, the harness tasks, the heartbeat, the control
    socket."""

    def __init__(
        self, settings: Settings, env: Mapping[str, str] | None = None, config_path: Path | None = None
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.env = dict(os.environ if env is None else env)
        inner = build_store(settings)
        self.identity = Identity(
            version=__version__,
            agent_id=settings.agent_id,
            project=settings.project,
            bucket=inner.url,
            instance=uuid.uuid4().hex[:12],
            host="[host]" if settings.anonymize else socket.gethostname(),  # meta.json, heartbeat
            redaction=settings.redact,
            single_writer=settings.single_writer,
        )
        redactor: Redactor | AnonymizingRedactor = build_redactor(settings)
        if settings.anonymize:
            redactor = anonymize.for_this_machine(redactor, settings.state_dir)
        self.telemetry = Telemetry(self.identity, live_settings(settings), redactor.rule_names)
        # written through the guard: proven before the first write, left alone while it refuses us
        self.guard = GuardedStore(
            CountingStore(inner, self.telemetry),
            probe_key=layout.probe_key(settings.project, settings.agent_id),
            probe_body=self._probe_body,
            single_writer=settings.single_writer,
            on_recovered=self._store_recovered,
        )
        self.store = self.guard
        self.checkpoint = Checkpointer(
            settings.state_dir / "checkpoint.sqlite3", bucket=self.store.url, project=settings.project
        )
        max_age = settings.backfill_max_age_s
        self.ctx = MirrorContext(
            store=self.store,
            checkpoint=self.checkpoint,
            redactor=redactor,
            project=settings.project,
            agent_id=settings.agent_id,
            instance=self.identity.instance,
            host=self.identity.host,
            flush_interval_s=settings.flush_interval,
            part_max_bytes=settings.part_max_bytes,
            meta_interval_s=settings.meta_interval,
            max_line_bytes=settings.max_line_bytes,
            limiter=anyio.CapacityLimiter(settings.upload_concurrency),
            telemetry=self.telemetry,
            backfill_cutoff=None if max_age is None else time.time() - max_age,
            lease_ttl_s=settings.lease_ttl,
        )
        home = Path(self.env["HOME"]) if self.env.get("HOME") else Path.home()
        self.session_filter = SessionFilter(settings.include, settings.exclude, home=home)
        self.tasks = [self._new_task(name) for name in settings.harnesses]
        self.notifier = Notifier(self.env)
        self._lock_fd: int | None = None
        self._work: anyio.abc.TaskGroup | None = None
        self._stopping: anyio.Event | None = None
        self._reload_lock = anyio.Lock()

    def _probe_body(self) -> bytes:
        """What the conditional-write probe writes: who probed and when (nothing secret)."""
        doc = {"probe": "conditional writes", "agent_id": self.identity.agent_id}
        doc |= {"instance": self.identity.instance, "at": utc_now_iso()}
        return json.dumps(doc, separators=(",", ":")).encode()

    def _store_recovered(self) -> None:
        """The store answers again: wake every session now rather than at its own backoff."""
        for task in self.tasks:
            task.nudge_all()

    def _new_task(self, name: str) -> HarnessTask:
        """A harness task for ``name`` (config accepts registered names only)."""
        roots = harness_roots(name, self.settings, self.env)
        return HarnessTask(
            REGISTRY[name](),
            roots,
            self.ctx,
            self.settings.scan_interval,
            watch=self.settings.watch,
            rescan_interval_s=self.settings.rescan_interval,
            session_filter=self.session_filter,
        )

    # ---------- start and stop ----------

    def _lock_state_dir(self) -> None:
        state_dir = self.settings.state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            with contextlib.suppress(OSError):
                os.chmod(state_dir, 0o700)
            fd = os.open(state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise DaemonError(
                f"state dir {state_dir} cannot be used: {exc.strerror or exc} (TRACEMIRROR_STATE_DIR)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DaemonError(
                f"another tracemirrord (pid {holder}) is running with state dir {state_dir}; "
                "stop it first or give this one its own TRACEMIRROR_STATE_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    async def open(self) -> None:
        self._lock_state_dir()
        # the lock proves every earlier daemon on this state dir is gone: their leases are ours
        self.ctx.predecessors = record_instance(self.settings.state_dir, self.identity.instance)
        await self.checkpoint.open()
        if self.checkpoint.last_error:
            log.warning("checkpoint reset", error=self.checkpoint.last_error)
            self.telemetry.failed("checkpoint", self.checkpoint.last_error, retry=False)
            if self.checkpoint.in_memory:
                self.telemetry.checkpoint.state = "memory"
                self.telemetry.checkpoint.last_error = self.checkpoint.last_error
        if self.settings.single_writer:
            log.warning(
                "single-writer mode (TRACEMIRROR_SINGLE_WRITER=true): sessions are not protected "
                "from a second daemon if the store ignores conditional writes"
            )
        try:
            await self.store.check()
            self.ctx.health.ok()
            await self.guard.verify()
        except ConditionalWritesIgnored as exc:
            raise DaemonConfigError(str(exc)) from None
        except StoreError as exc:
            self.ctx.health.failed(exc)  # the first write probes once the store answers

    async def close(self) -> None:
        for task in self.tasks:
            with contextlib.suppress(Exception):
                await task.harness.close()
        with contextlib.suppress(Exception):
            await self.checkpoint.close()
        with contextlib.suppress(Exception):
            await self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _bind_control(self) -> socket.socket:
        path = self.settings.socket_path
        try:
            return bind_unix(path, private_directory=self.settings.socket is None)
        except (SocketInUse, OSError) as exc:
            raise DaemonError(
                f"control socket {path}: {exc}; set TRACEMIRROR_SOCKET to another path"
            ) from None

    def _bind_metrics(self) -> socket.socket | None:
        if not self.settings.metrics_addr:
            return None
        host, port = parse_metrics_addr(self.settings.metrics_addr)
        try:
            return bind_tcp(host, port)
        except OSError as exc:
            raise DaemonError(f"metrics address {host}:{port}: {exc.strerror or exc}") from None

    async def run_forever(self) -> int:
        """Run until SIGTERM/SIGINT; drain; exit code 0."""
        early_signals.daemon_starting()  # also when run in-process, without __main__
        stopping = self._stopping = anyio.Event()
        metrics = self._bind_metrics()  # first: a refused metrics address leaves no socket behind
        try:
            control = self._bind_control()
        except BaseException:
            if metrics is not None:
                metrics.close()
            raise
        log.info(
            "tracemirrord started",
            version=__version__,
            bucket=self.store.url,
            project=self.settings.project,
            agent_id=self.settings.agent_id,
            harnesses=[t.name for t in self.tasks],
            redact=self.settings.redact,
            socket=str(self.settings.socket_path),
            metrics=self.settings.metrics_addr,
        )
        if not self.settings.redact:
            log.warning("redaction is OFF (TRACEMIRROR_REDACT=false): secrets are uploaded as they are")
        api = ControlApi(self.snapshot, self.flush, self.reload)
        try:
            async with anyio.create_task_group() as outer:
                keep = functools.partial(self._keep_running, stopping=stopping)
                outer.start_soon(keep, "signals", self._watch_signals, stopping, outer.cancel_scope)
                outer.start_soon(keep, "control socket", serve, control, api.handle)
                if metrics is not None:
                    outer.start_soon(keep, "metrics", serve, metrics, api.metrics_only)
                outer.start_soon(keep, "service notify", self._service_notify, stopping)
                outer.start_soon(keep, "store watch", self.guard.watch)
                drained = anyio.Event()
                async with anyio.create_task_group() as work:
                    work.start_soon(keep, "heartbeat", self._heartbeat, stopping, drained)
                    async with anyio.create_task_group() as harnesses:
                        self._work = harnesses
                        for task in self.tasks:
                            harnesses.start_soon(self._supervise, task, stopping)
                    self._work = None
                    drained.set()
                outer.cancel_scope.cancel()
        finally:
            unlink_socket(self.settings.socket_path)
        log.info("tracemirrord stopped")
        return 0

    async def run_once(self) -> int:
        """Mirror everything pending once; 0 when all of it landed, 1 otherwise."""
        if self.ctx.health.state != "ok":
            log.error(
                "bucket not usable; nothing mirrored", bucket=self.store.url, error=self.ctx.health.last_error
            )
            return 1
        failures: list[str] = []
        progress = OnceProgress()
        async with anyio.create_task_group() as reporter:
            reporter.start_soon(self._report_progress, progress)
            failures += await sync_newest_first(self.tasks, self.ctx.limiter, progress)
            reporter.cancel_scope.cancel()
        sessions = sum(len(t.followers) for t in self.tasks)
        if failures:
            log.error("mirroring incomplete", failed=len(failures), sessions=sessions)
            return 1
        log.info(
            "everything pending is mirrored",
            sessions=sessions,
            sessions_done=progress.done,
            elapsed_s=progress.elapsed_s,
            bucket=self.store.url,
        )
        return 0

    async def _report_progress(self, progress: OnceProgress) -> None:
        """A bar on a terminal, else a log line every PROGRESS_EVERY_S, so a first run over months
        of history does not look stuck."""
        if not sys.stderr.isatty():
            while True:
                await anyio.sleep(PROGRESS_EVERY_S)
                backfill = self.telemetry.backfill
                progress.log("mirroring pending sessions", backfill.bytes_done, backfill.bytes_total)
        bar = ProgressBar(sys.stderr)

        def draw() -> None:
            backfill = self.telemetry.backfill
            elapsed = time.monotonic() - progress.started
            bar.draw(
                backfill.sessions_done,
                backfill.sessions_total,
                backfill.bytes_done,
                backfill.bytes_total,
                elapsed,
            )

        try:
            while True:
                draw()
                await anyio.sleep(BAR_EVERY_S)
        finally:  # cancelled when everything landed: the last state, then a line end
            draw()
            bar.close()

    async def _watch_signals(self, stopping: anyio.Event, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            if early_signals.pending() and not stopping.is_set():
                log.info("stopping: flushing what is held", signal="SIGTERM (during start-up)")
                stopping.set()
                self.guard.stop_within()
            async for signum in signals:
                if signum == signal.SIGHUP:
                    if not stopping.is_set():
                        await self.reload()
                    continue
                if not stopping.is_set():
                    log.info("stopping: flushing what is held", signal=signal.Signals(signum).name)
                    self.notifier.stopping("flushing what is held")
                    stopping.set()
                    self.guard.stop_within()  # a silent store cannot hold the stop
                else:
                    log.warning("second signal: exiting without waiting for the flush")
                    scope.cancel()
                    return

    async def _keep_running(
        self,
        name: str,
        run: Callable[..., Awaitable[object]],
        *args: object,
        stopping: anyio.Event,
    ) -> None:
        """Run one long-lived task until it returns; an exception is logged (its traceback once per
        distinct error), counted (``errors{kind="task"}``) and the task started again with backoff,
        so no single task takes the daemon down. After the stop began it gets one more try (the
        heartbeat still owes its "stopped")."""
        backoff = Backoff(base_s=1.0, cap_s=60.0)
        seen: set[str] = set()
        tries_after_stop = 0
        while True:
            started = time.monotonic()
            try:
                await run(*args)
                return
            except Exception as exc:
                if time.monotonic() - started > STABLE_RUN_S:
                    backoff.reset()
                message = describe_failure(exc)
                self.telemetry.failed("task", f"task {name} failed: {message}")
                delay = backoff.next()
                emit = log.debug if message in seen else log.exception
                seen.add(message)
                emit("task failed; restarting", task=name, error=message, retry_in_s=round(delay, 1))
            if stopping.is_set():
                tries_after_stop += 1
                if tries_after_stop > 1:
                    log.error("task failed during the stop; not restarted", task=name)
                    return
                continue
            with anyio.move_on_after(timeout_s(delay)):
                await stopping.wait()

    async def _supervise(self, task: HarnessTask, stopping: anyio.Event) -> None:
        """Run one harness task, restarting it with backoff; it stops with the daemon or on its own
        (a reload that removed the harness)."""
        backoff = Backoff(base_s=1.0, cap_s=60.0)
        async with anyio.create_task_group() as relay:
            relay.start_soon(_relay, stopping, task.stopping)
            while not task.stopping.is_set():
                started = time.monotonic()
                try:
                    await task.run(task.stopping)
                    break
                except Exception as exc:
                    if time.monotonic() - started > STABLE_RUN_S:
                        backoff.reset()
                    delay = backoff.next()
                    task.state, task.error = "error", describe_failure(exc)
                    self.telemetry.failed("harness", f"harness {task.name}: {task.error}")
                    task.first_scan_done.set()  # READY must not wait on a harness that cannot start
                    log.exception(
                        "harness task failed; restarting",
                        harness=task.name,
                        error=task.error,
                        retry_in_s=round(delay, 1),
                    )
                    with anyio.move_on_after(timeout_s(delay)):
                        await task.stopping.wait()
            relay.cancel_scope.cancel()
        with contextlib.suppress(Exception):
            await task.harness.close()

    # ---------- what the control socket, the heartbeat and systemd see ----------

    def snapshot(self, *, parked: bool = True) -> Status:
        self.telemetry.conditional_writes = self.guard.conditional_writes
        return self.telemetry.snapshot(self.tasks, self.ctx.health, parked=parked)

    async def flush(self, timeout_s: float) -> FlushResult:
        """Put everything held or pending now and wait until it landed (``tracemirrorctl flush``)."""
        started = time.monotonic()
        waits = [
            (f, f.request_flush())
            for task in self.tasks
            for f in task.followers.values()
            if not f.parked and not f.finished
        ]
        with anyio.move_on_after(timeout_s):  # once: no rounding needed
            for _, event in waits:
                await event.wait()
        pending = [f"{f.key}: {f.last_error or 'still flushing'}" for f, event in waits if not event.is_set()]
        return FlushResult(
            flushed=not pending,
            sessions=len(waits),
            pending=pending,
            elapsed_s=round(time.monotonic() - started, 3),
        )

    async def _heartbeat(self, stopping: anyio.Event, drained: anyio.Event) -> None:
        """``agents/<agent-id>.json`` every heartbeat interval and at stop (once every follower has
        drained, so "stopped" is the last word); a failure is logged and retried sooner, and never
        stops the daemon."""
        beats = HeartbeatWriter(
            self.store,
            layout.agent_key(self.settings.project, self.settings.agent_id),
            self.settings.agent_id,
            self.identity.instance,
            self.ctx.predecessors,
        )
        backoff = Backoff(base_s=2.0, cap_s=self.settings.heartbeat_interval)
        failing = False
        await self._first_discoveries(stopping, 10.0)  # the first heartbeat names what was found
        while True:
            final = stopping.is_set()
            try:
                status = self.snapshot(parked=False)
                body = layout.render_heartbeat(
                    self.settings.agent_id,
                    status="stopped" if final else "running",
                    started_at=status.started_at,
                    heartbeat=utc_now_iso(),
                    summary=f"tracemirrord {__version__}: {summary_line(status)}",
                    extra=heartbeat_fields(status, self.settings.heartbeat_interval),
                )
                await beats.write(body)
                self.telemetry.agent_id_shared_with = beats.other.describe() if beats.other else None
                self.ctx.health.ok()
                self.telemetry.counters.heartbeats += 1
                if failing:
                    log.info("heartbeat written again")
                failing = False
                backoff.reset()
                delay = self.settings.heartbeat_interval
            except Exception as exc:
                if isinstance(exc, StoreError):
                    self.ctx.health.failed(exc)
                message = describe_failure(exc)
                self.telemetry.failed("heartbeat", f"heartbeat not written: {message}")
                (log.debug if failing else log.warning)("heartbeat not written; will retry", error=message)
                failing = True
                delay = backoff.next()
            if final:
                return
            with anyio.move_on_after(timeout_s(delay)):
                await stopping.wait()
            if stopping.is_set():
                with anyio.move_on_after(timeout_s(DRAIN_WAIT_S)):
                    await drained.wait()

    async def _service_notify(self, stopping: anyio.Event) -> None:
        """systemd: READY=1 once every harness has been discovered once, then WATCHDOG=1 and a
        one-line STATUS= from this loop (a hung event loop stops the pings, and systemd restarts us)."""
        await self._first_discoveries(stopping, 60.0)
        self.notifier.ready(summary_line(self.snapshot(parked=False)))
        log.info("ready", sessions=sum(len(t.followers) for t in self.tasks))
        if not self.notifier.enabled:  # not under systemd: nothing to ping, no timer to wake for
            await stopping.wait()
            return
        interval = self.notifier.watchdog_interval_s or 10.0
        while not stopping.is_set():
            with anyio.move_on_after(timeout_s(min(interval, 10.0))):
                await stopping.wait()
            if stopping.is_set():
                return
            self.notifier.watchdog()
            self.notifier.status(summary_line(self.snapshot(parked=False)))

    async def _first_discoveries(self, stopping: anyio.Event, timeout_s: float) -> None:
        """Wait until every harness has discovered its sessions once (or stopping, or the timeout)."""

        async def scanned(scope: anyio.CancelScope) -> None:
            for task in list(self.tasks):
                await task.first_scan_done.wait()
            scope.cancel()

        async def stopped(scope: anyio.CancelScope) -> None:
            await stopping.wait()
            scope.cancel()

        with anyio.move_on_after(timeout_s):  # once: no rounding needed
            async with anyio.create_task_group() as race:
                race.start_soon(scanned, race.cancel_scope)
                race.start_soon(stopped, race.cancel_scope)

    # ---------- SIGHUP ----------

    async def reload(self) -> ReloadResult:
        """Read the configuration again and apply what can change while running; a configuration that
        is bad, or changes what needs a restart, is refused and the running one stays."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                result = await self._reload()
            finally:
                self.notifier.ready_after_reload(summary_line(self.snapshot(parked=False)))
            if result.applied:
                self.telemetry.counters.reloads += 1
                log.info("configuration reloaded", changes=result.changes or ["nothing changed"])
            else:
                self.telemetry.failed("reload", f"reload refused: {result.error}", retry=False)
                log.error("configuration reload refused; the running configuration stays", error=result.error)
            return result

    async def _reload(self) -> ReloadResult:
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            return ReloadResult(applied=False, error="; ".join(" ".join(p.split()) for p in exc.problems))
        fixed = restart_only_changes(self.settings, new)
        if fixed:
            return ReloadResult(
                applied=False, error=f"{', '.join(fixed)} cannot change while running; restart tracemirrord"
            )
        old = self.settings
        changes = apply_live_settings(self.ctx, old, new)
        self.settings = new
        self.telemetry.settings = live_settings(new)
        self.identity.redaction = new.redact
        for task in self.tasks:
            task.scan_interval_s = new.scan_interval
            task.rescan_interval_s = new.rescan_interval
        wanted = {name: harness_roots(name, new, self.env) for name in new.harnesses}
        for task in list(self.tasks):
            if task.name not in wanted:
                changes.append(f"harness {task.name} stopped")
            elif wanted[task.name] != task.roots:
                changes.append(f"harness {task.name} roots changed")
            else:
                continue
            task.stopping.set()  # its followers flush what they hold and release their leases
            self.tasks.remove(task)
        running = {t.name for t in self.tasks}
        for name in new.harnesses:
            if name in running:
                continue
            task = self._new_task(name)
            self.tasks.append(task)
            if self._work is not None and self._stopping is not None:
                self._work.start_soon(self._supervise, task, self._stopping)
            if f"harness {name} roots changed" not in changes:
                changes.append(f"harness {name} started")
        return ReloadResult(applied=True, changes=changes)


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _relay(source: anyio.Event, target: anyio.Event) -> None:
    await source.wait()
    target.set()
