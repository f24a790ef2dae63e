"""The control socket's routes: what each path answers, from the daemon's telemetry snapshot."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from tracemirrord.control.schema import (
    METRICS_CONTENT_TYPE,
    PATH_FLUSH,
    PATH_METRICS,
    PATH_RELOAD,
    PATH_SESSIONS,
    PATH_STATUS,
    FlushResult,
    ReloadResult,
    SessionStatus,
    Status,
    unix_time,
)
from tracemirrord.control.server import Request, Response

MAX_FLUSH_TIMEOUT_S = 300.0


class ControlApi:
    """Routes requests to the daemon's snapshot, flush and reload (handed in, so this module needs
    nothing of the supervisor)."""

    def __init__(
        self,
        snapshot: Callable[..., Status],
        flush: Callable[[float], Awaitable[FlushResult]],
        reload: Callable[[], Awaitable[ReloadResult]],
    ) -> None:
        self._snapshot = snapshot
        self._flush = flush
        self._reload = reload

    async def metrics_only(self, request: Request) -> Response:
        """The loopback TCP address: any local user can reach it, so it serves the metrics alone
        (no session ids, paths or working directories; no flush or reload)."""
        if (request.method, request.path) in (("GET", "/metrics"), ("GET", PATH_METRICS)):
            return await self.handle(request)
        return Response.error(404, "only GET /metrics is served here")

    async def handle(self, request: Request) -> Response:
        route = (request.method, request.path)
        if route == ("GET", PATH_STATUS):
            parked = request.query.get("parked", "1") not in ("0", "false", "no")
            return Response.of_pieces(self._snapshot(parked=parked).json_chunks())
        if route == ("GET", PATH_SESSIONS):
            try:
                chosen = select_sessions(self._snapshot().sessions, request.query)
            except ValueError as exc:
                return Response.error(400, str(exc))
            return Response.of_json({"sessions": [dict(vars(s)) for s in chosen]})
        if route in (("GET", PATH_METRICS), ("GET", "/metrics")):
            from tracemirrord.control.metrics import render_metrics

            return Response(200, render_metrics(self._snapshot()), METRICS_CONTENT_TYPE)
        if route == ("POST", PATH_FLUSH):
            try:
                timeout = float(request.json().get("timeout_s", 30.0))
            except (ValueError, TypeError) as exc:
                return Response.error(400, f"bad flush request: {exc}")
            result = await self._flush(min(max(timeout, 0.1), MAX_FLUSH_TIMEOUT_S))
            return Response.of_json(asdict(result), 200 if result.flushed else 504)
        if route == ("POST", PATH_RELOAD):
            result = await self._reload()
            return Response.of_json(asdict(result), 200 if result.applied else 409)
        known = {PATH_STATUS, PATH_SESSIONS, PATH_METRICS, PATH_FLUSH, PATH_RELOAD}
        if request.path in known:
            return Response.error(405, f"{request.method} is not allowed on {request.path}")
        return Response.error(404, f"no such path {request.path}")


def select_sessions(sessions: list[SessionStatus], query: dict[str, str]) -> list[SessionStatus]:
    """The sessions matching ``harness``, ``state``, ``cwd`` (a glob, or a directory prefix) and
    ``max_age_s`` (changed or flushed within that many seconds)."""
    harness = query.get("harness")
    state = query.get("state")
    cwd = query.get("cwd")
    max_age = float(query["max_age_s"]) if query.get("max_age_s") else None
    now = time.time()
    chosen = []
    for session in sessions:
        if harness and session.harness != harness:
            continue
        if state and session.state != state:
            continue
        if cwd and not _cwd_matches(session.cwd, cwd):
            continue
        if max_age is not None:
            seen = max(_epoch(session.modified_at), _epoch(session.last_flush_at))
            if now - seen > max_age:
                continue
        chosen.append(session)
    return chosen


def _cwd_matches(cwd: str | None, pattern: str) -> bool:
    if not cwd:
        return False
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(cwd, pattern)
    prefix = pattern.rstrip("/")
    return cwd == prefix or cwd.startswith(prefix + "/")


def _epoch(iso: str | None) -> float:
    return unix_time(iso) or 0.0
