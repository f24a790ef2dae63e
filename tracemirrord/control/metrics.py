"""Prometheus metrics: the daemon's status snapshot in the text exposition format.

Metrics and ``tracemirrorctl status`` read the same ``schema.Status`` snapshot (the telemetry core
makes it), so the two cannot disagree: this module only translates, it counts nothing itself.

Invariants:

- every label value comes from a bounded set: harness names, state names, cursor units, store
  operations, error kinds, redaction rules. There is no series per session (session ids grow
  without bound and would grow the scraper's memory with them); ``tracemirrorctl sessions`` lists
  sessions.
- the ``schema.Counters`` fields are ``counter`` families (``_total``); everything else is a gauge.
- an enum (harness state, session state) exports every state it knows, 0 when not current, so a
  series does not vanish when its state ends.
- pure: one private registry per render, nothing global; the only I/O is what
  ``ProcessCollector`` reads from ``/proc`` about this process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import get_args

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from tracemirrord.control.schema import (
    HARNESS_STATES,
    METRICS_CONTENT_TYPE,
    SESSION_STATES,
    Counters,
    Status,
    unix_time,
)
from tracemirrord.source import CursorUnit

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = METRICS_CONTENT_TYPE  # generate_latest writes text format 0.0.4, as this names
PREFIX = "tracemirror_"

CURSOR_UNITS: tuple[str, ...] = get_args(CursorUnit)
_METRIC_WORD = re.compile(r"[a-z][a-z0-9_]*")  # a cursor unit that can end a metric name


def render_metrics(status: Status, *, process: bool = True) -> bytes:
    """The whole exposition for ``status``; ``process`` adds this process's CPU, memory and fds
    (``process_*``; off in tests that compare two renders, since CPU time moves between them)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(status))
    if process:
        ProcessCollector(registry=registry)
    return generate_latest(registry)


class _StatusCollector:
    """A prometheus-client collector over one snapshot (a registry collects by calling ``collect``)."""

    def __init__(self, status: Status) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status
        yield from _identity(status)
        yield from _store(status)
        yield from _counters(status.counters)
        yield from _harnesses(status)
        yield from _sessions(status)
        yield from _backfill(status)


# ---------- the families, grouped as the status document is ----------


def _identity(status: Status) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        PREFIX + "build_info",
        "Always 1; the labels name this daemon's version, agent id, project and bucket.",
        labels=("version", "agent_id", "project", "bucket"),
    )
    info.add_metric((status.version, status.agent_id, status.project, status.bucket), 1)
    yield info
    # Absent (not 0) when the snapshot does not say: a 0 would read as "started in 1970".
    yield _gauge(
        "start_time_seconds", "When the daemon started, in unix seconds.", unix_time(status.started_at)
    )
    yield _gauge("uptime_seconds", "Seconds since the daemon started.", status.uptime_s)
    yield _gauge(
        "healthy",
        "1 when the daemon reports itself healthy, 0 when degraded (tracemirrorctl status says why).",
        status.health == "healthy",
    )
    yield _gauge(
        "redaction_enabled", "1 when secrets are redacted before upload, 0 when turned off.", status.redaction
    )
    yield _gauge(
        "single_writer_mode",
        "1 when single-writer mode is on (TRACEMIRROR_SINGLE_WRITER): nothing stops a second writer.",
        status.single_writer,
    )


def _store(status: Status) -> Iterator[Metric]:
    yield _gauge(
        "store_up", "1 when the bucket answers, 0 when it is unreachable.", status.store.state == "ok"
    )
    yield _gauge(
        "store_last_ok_time_seconds",
        "When a request to the bucket last succeeded, in unix seconds (absent before the first).",
        unix_time(status.store.last_ok_at),
    )


def _counters(counters: Counters) -> Iterator[Metric]:
    yield _counter("source_read_bytes", "Source bytes taken into parts.", counters.bytes_read)
    yield _counter("uploaded_bytes", "Request body bytes sent to the bucket.", counters.bytes_uploaded)
    yield _counter_by(
        "store_requests", "Requests made to the bucket, by operation.", "operation", counters.requests
    )
    yield _counter_by(
        "store_request_errors",
        "Requests to the bucket that failed, by kind.",
        "kind",
        counters.request_errors,
    )
    yield _counter("parts_written", "Parts written to the bucket.", counters.parts_written)
    yield _counter(
        "retries",
        "Failed steps to be tried again (session steps, heartbeats, harness scans).",
        counters.retries,
    )
    yield _counter_by("redactions", "Secrets redacted, by rule.", "rule", counters.redactions)
    yield _counter_by(
        "errors", "Failures, by kind (where they happened: harness, heartbeat ...).", "kind", counters.errors
    )
    yield _counter("heartbeats", "Heartbeats written to the bucket.", counters.heartbeats)
    yield _counter(
        "config_reloads", "Configuration reloads applied (SIGHUP or tracemirrorctl).", counters.reloads
    )


def _harnesses(status: Status) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        PREFIX + "harness_state",
        "1 for the state each harness is in, 0 for its other states.",
        labels=("harness", "state"),
    )
    sessions = GaugeMetricFamily(
        PREFIX + "harness_sessions", "Sessions each harness has found.", labels=("harness",)
    )
    parked = GaugeMetricFamily(
        PREFIX + "harness_sessions_parked",
        "Sessions idle long enough to cost no task (also counted in tracemirror_harness_sessions).",
        labels=("harness",),
    )
    filtered = GaugeMetricFamily(
        PREFIX + "harness_sessions_filtered",
        'Sessions the privacy filter left out, per pattern ("undecided": waiting for a cwd).',
        labels=("harness", "pattern"),
    )
    for harness in status.harnesses:
        for name in _with_extra(HARNESS_STATES, (harness.state,)):
            state.add_metric((harness.name, name), 1 if name == harness.state else 0)
        sessions.add_metric((harness.name,), harness.sessions)
        parked.add_metric((harness.name,), harness.parked)
        for pattern, count in harness.filtered.items():
            filtered.add_metric((harness.name, pattern), count)
    yield from (state, sessions, parked, filtered)


def _sessions(status: Status) -> Iterator[Metric]:
    """Sessions summed per harness: counts per state, the worst lag, and what is not yet mirrored."""
    harnesses = _with_extra(tuple(h.name for h in status.harnesses), (s.harness for s in status.sessions))
    states = _with_extra(SESSION_STATES, (s.state for s in status.sessions))
    count = {(h, st): 0 for h in harnesses for st in states}
    lag = dict.fromkeys(harnesses, 0.0)
    units = _with_extra(
        CURSOR_UNITS, (s.cursor_unit for s in status.sessions if _METRIC_WORD.fullmatch(s.cursor_unit))
    )
    behind: dict[str, dict[str, int]] = {unit: {} for unit in units}
    for s in status.sessions:
        count[s.harness, s.state] += 1
        if s.lag_s is not None:
            lag[s.harness] = max(lag[s.harness], s.lag_s)
        if s.cursor_unit in behind:
            per_harness = behind[s.cursor_unit]
            per_harness[s.harness] = per_harness.get(s.harness, 0) + s.behind_bytes

    by_state = GaugeMetricFamily(
        PREFIX + "sessions",
        "Sessions per harness in each state (every state present, 0 when none).",
        labels=("harness", "state"),
    )
    for (harness, state), n in count.items():
        by_state.add_metric((harness, state), n)
    yield by_state

    worst = GaugeMetricFamily(
        PREFIX + "lag_seconds",
        "Per harness, the largest age of a source record not yet in the bucket (0 when none pending).",
        labels=("harness",),
    )
    for harness, seconds in lag.items():
        worst.add_metric((harness,), seconds)
    yield worst

    # One family per cursor unit, never a unit label: a sum of bytes and rows means nothing.
    for unit, per_harness in behind.items():
        family = GaugeMetricFamily(
            f"{PREFIX}behind_{unit}",
            f"What the sources hold beyond the bucket's copy, in {unit}, summed per harness "
            f"over the sessions whose cursor counts {unit}.",
            labels=("harness",),
        )
        for harness in harnesses:
            if harness in per_harness:
                family.add_metric((harness,), per_harness[harness])
        yield family


def _backfill(status: Status) -> Iterator[Metric]:
    backfill = status.backfill
    yield _gauge(
        "backfill_running",
        "1 while the daemon catches up on what was written while it was not running.",
        backfill.running,
    )
    # Totals and progress as separate names (node_md_blocks / node_md_blocks_synced style): a
    # state="total"|"done" label would make sum() add the two.
    yield _gauge("backfill_sessions", "Sessions the backfill has to mirror.", backfill.sessions_total)
    yield _gauge("backfill_sessions_done", "Sessions the backfill has mirrored.", backfill.sessions_done)
    yield _gauge("backfill_bytes", "Source bytes the backfill has to mirror.", backfill.bytes_total)
    yield _gauge("backfill_bytes_done", "Source bytes the backfill has mirrored.", backfill.bytes_done)


# ---------- helpers ----------


def _gauge(name: str, documentation: str, value: float | bool | None) -> GaugeMetricFamily:
    """A gauge without labels; no sample when ``value`` is None (unknown is not 0)."""
    family = GaugeMetricFamily(PREFIX + name, documentation)
    if value is not None:
        family.add_metric((), float(value))
    return family


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    """``name`` without ``_total``: the family adds it to the sample."""
    return CounterMetricFamily(PREFIX + name, documentation, value=value)


def _counter_by(name: str, documentation: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, documentation, labels=(label,))
    for key in sorted(values):
        family.add_metric((key,), values[key])
    return family


def _with_extra(known: tuple[str, ...], seen: Iterable[str]) -> tuple[str, ...]:
    """``known`` in its order, then any value seen that it lacks (sorted), so nothing is dropped."""
    return known + tuple(sorted(set(seen) - set(known)))
