"""``tracemirrorctl status --bucket``: every daemon writing to this bucket and project, from the bucket alone.

No local daemon is asked: the view is built from the heartbeats in ``<project>/agents/`` (ours say
``"kind": "tracemirrord"``; other tools' heartbeats share the prefix and are listed apart) and, unless
``--no-sessions``, from the sessions' meta.json files (who wrote each, and when it last uploaded).

A heartbeat is *silent* when its daemon says it is running but has not written one for three
heartbeat intervals (180 s when the interval is not given): the process died without its last word,
or the machine lost the bucket. Exit 0 when at least one tracemirrord has a heartbeat here and every
running one is fresh and healthy; 1 otherwise (also when the bucket cannot be read).

Heavy modules are imported inside the functions (``tracemirrorctl status`` without ``--bucket``
loads none of them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tracemirrord.control.schema import EXIT_DEGRADED, EXIT_HEALTHY, HEARTBEAT_KIND, unix_time

if TYPE_CHECKING:
    from tracemirrord.config import Settings
    from tracemirrord.store.base import ObjectStore

SILENT_INTERVALS = 3  # a running daemon is silent after this many missed heartbeat intervals
SILENT_DEFAULT_S = 180.0  # ... or after this long when its heartbeat does not say its interval
GET_CONCURRENCY = 16  # heartbeat and meta.json GETs in flight at once
DEFAULT_SESSIONS_LIMIT = 2000  # meta.json files read at most (the most recently written first)


def configure_bucket_status(parser: argparse.ArgumentParser) -> None:
    """The flags ``status --bucket`` adds to the status verb (``--bucket`` and ``--json`` are its own)."""
    parser.add_argument(
        "--no-sessions",
        action="store_true",
        help="with --bucket: read only the heartbeats, not each session's meta.json (a big bucket)",
    )
    parser.add_argument(
        "--sessions-limit",
        type=int,
        metavar="N",
        default=DEFAULT_SESSIONS_LIMIT,
        help="with --bucket: read at most N meta.json files, the newest first (default: %(default)s)",
    )


def run_bucket_status(args: argparse.Namespace) -> int:
    """Print the team view (or ``--json``) and return 0 when every running tracemirrord is fine, else 1."""
    from tracemirrord.ctl.bucket import run_on_bucket

    limit = getattr(args, "sessions_limit", DEFAULT_SESSIONS_LIMIT)
    quiet = getattr(args, "quiet", False)
    read_sessions = not getattr(args, "no_sessions", False) and limit > 0 and not quiet  # counts only shown

    async def work(store: ObjectStore, settings: Settings) -> int:
        view = await team_view(store, settings.project, read_sessions=read_sessions, sessions_limit=limit)
        if quiet:
            pass  # the exit code tells
        elif getattr(args, "json", False):
            print(json.dumps(view.to_json(), indent=2, ensure_ascii=False))
        else:
            print(render(view))
        return EXIT_HEALTHY if view.healthy else EXIT_DEGRADED

    return run_on_bucket(args, work)


# ---------- the view ----------


@dataclass
class Daemon:
    """One tracemirrord as its heartbeat describes it."""

    agent_id: str
    key: str
    doc: dict[str, Any]
    age_s: float | None  # seconds since its last heartbeat (None: unreadable time)
    silent_after_s: float

    @property
    def status(self) -> str:
        return _text(self.doc.get("status")) or "unknown"

    @property
    def silent(self) -> bool:
        return self.status == "running" and (self.age_s is None or self.age_s > self.silent_after_s)

    @property
    def degraded(self) -> bool:
        return self.status == "running" and not self.silent and self.doc.get("health") == "degraded"

    @property
    def state(self) -> str:
        """running, stopped or silent (a running status whose heartbeat stopped coming)."""
        return "silent" if self.silent else self.status

    def problems(self) -> list[str]:
        if self.silent:
            return [f"{self.agent_id}: silent, last heartbeat {_ago(self.age_s)}"]
        if self.degraded:
            listed = [p for p in self.doc.get("problems") or [] if isinstance(p, str)]
            return [f"{self.agent_id}: degraded: {'; '.join(listed) or 'no reason given'}"]
        return []

    def to_json(self, now: datetime) -> dict[str, Any]:
        doc = self.doc
        recent = []
        for entry in _list(doc.get("recent_sessions")):
            if not isinstance(entry, dict):
                continue
            flushed = _text(entry.get("last_flush_at"))
            recent.append(
                {
                    "harness": _text(entry.get("harness")),
                    "session_id": _text(entry.get("session_id")),
                    "state": _text(entry.get("state")),
                    "last_flush_at": flushed,
                    "last_flush_age_s": _round(_age_s(flushed, now)),
                }
            )
        return {
            "agent_id": self.agent_id,
            "key": self.key,
            "status": self.status,
            "state": self.state,
            "health": _text(doc.get("health")),
            "store": _text(doc.get("store")),
            "host": _text(doc.get("host")),
            "version": _text(doc.get("version")),
            "pid": _int(doc.get("pid")),
            "instance": _text(doc.get("instance")),
            "started_at": _text(doc.get("started_at")),
            "heartbeat": _text(doc.get("heartbeat")),
            "heartbeat_age_s": _round(self.age_s),
            "heartbeat_interval_s": _float(doc.get("heartbeat_interval_s")),
            "silent_after_s": self.silent_after_s,
            "sessions": _int(doc.get("sessions")),
            "lag_s": _float(doc.get("lag_s")),
            "problems": [p for p in _list(doc.get("problems")) if isinstance(p, str)],
            "harnesses": {str(k): str(v) for k, v in _dict(doc.get("harnesses")).items()},
            "recent_sessions": recent,
            "totals": {str(k): v for k, v in _dict(doc.get("totals")).items() if _int(v) is not None},
            "summary": _text(doc.get("summary")),
        }


@dataclass
class OtherAgent:
    """A heartbeat another tool (a tracecraft agent) wrote in the same prefix."""

    agent_id: str
    key: str
    doc: dict[str, Any]
    age_s: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.agent_id,
            "key": self.key,
            "status": _text(self.doc.get("status")),
            "heartbeat": _text(self.doc.get("heartbeat")),
            "heartbeat_age_s": _round(self.age_s),
            "summary": _text(self.doc.get("summary")),
        }


@dataclass
class Holdings:
    """What one agent id holds in the bucket, from the meta.json files read."""

    agent_id: str
    sessions: int = 0
    leased: int = 0  # sessions whose meta.json names this agent as the current writer
    last_uploaded_at: str | None = None
    last_session: str | None = None


@dataclass
class TeamView:
    bucket: str
    project: str
    now: datetime
    daemons: list[Daemon] = field(default_factory=list)
    others: list[OtherAgent] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    holdings: list[Holdings] | None = None  # None: meta.json files not read (--no-sessions)
    meta_read: int = 0
    meta_total: int = 0

    @property
    def problems(self) -> list[str]:
        if not self.daemons:
            return ["no tracemirrord has written a heartbeat here yet"]
        return [p for d in self.daemons for p in d.problems()]

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        sessions = None
        if self.holdings is not None:
            with_heartbeat = {d.agent_id for d in self.daemons} | {o.agent_id for o in self.others}
            sessions = {
                "meta_read": self.meta_read,
                "meta_total": self.meta_total,
                "complete": self.meta_read == self.meta_total,
                "by_agent": [
                    {
                        "agent_id": h.agent_id,
                        "sessions": h.sessions,
                        "leased": h.leased,
                        "last_uploaded_at": h.last_uploaded_at,
                        "last_upload_age_s": _round(_age_s(h.last_uploaded_at, self.now)),
                        "last_session": h.last_session,
                        "has_heartbeat": h.agent_id in with_heartbeat,
                    }
                    for h in self.holdings
                ],
            }
        return {
            "bucket": self.bucket,
            "project": self.project,
            "checked_at": self.now.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "healthy": self.healthy,
            "problems": self.problems,
            "daemons": [d.to_json(self.now) for d in self.daemons],
            "other_agents": [o.to_json() for o in self.others],
            "unreadable": self.unreadable,
            "sessions": sessions,
        }


async def team_view(
    store: ObjectStore,
    project: str,
    *,
    read_sessions: bool = True,
    sessions_limit: int = DEFAULT_SESSIONS_LIMIT,
) -> TeamView:
    """Every heartbeat under ``<project>/agents/`` and, if asked, who holds the sessions."""
    now = datetime.now(UTC)
    view = TeamView(store.url, project, now)
    prefix = f"{project}/agents/"
    keys = [
        info.key
        for info in await store.list(prefix)
        if info.key.endswith(".json") and "/" not in info.key[len(prefix) :]
    ]
    bodies = await _get_all(store, keys)
    for key, body in zip(keys, bodies, strict=True):
        if body is None:
            continue  # deleted since the listing
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            view.unreadable.append(key)
            continue
        agent_id = _text(doc.get("id")) or key[len(prefix) :].removesuffix(".json")
        age = _age_s(_text(doc.get("heartbeat")), now)
        if doc.get("kind") == HEARTBEAT_KIND:
            interval = _float(doc.get("heartbeat_interval_s"))
            silent_after = SILENT_INTERVALS * interval if interval and interval > 0 else SILENT_DEFAULT_S
            view.daemons.append(Daemon(agent_id, key, doc, age, silent_after))
        else:
            view.others.append(OtherAgent(agent_id, key, doc, age))
    if read_sessions:
        await _read_holdings(store, project, view, sessions_limit)
    return view


async def _get_all(store: ObjectStore, keys: list[str]) -> list[bytes | None]:
    """The bodies of ``keys`` (None where gone), ``GET_CONCURRENCY`` requests at a time."""
    from tracemirrord.store.base import NotFound

    limit = asyncio.Semaphore(GET_CONCURRENCY)

    async def one(key: str) -> bytes | None:
        async with limit:
            try:
                return (await store.get(key)).body
            except NotFound:
                return None

    return list(await asyncio.gather(*(one(k) for k in keys)))


async def _read_holdings(store: ObjectStore, project: str, view: TeamView, limit: int) -> None:
    """Count sessions per writing agent from meta.json (at most ``limit`` of them, the newest first)."""
    from tracemirrord.layout import META_NAME

    metas = [info for info in await store.list(f"{project}/sessions/") if info.key.endswith("/" + META_NAME)]
    metas.sort(key=lambda info: info.last_modified or 0.0, reverse=True)
    view.meta_total = len(metas)
    chosen = [info.key for info in metas[:limit]]
    view.meta_read = len(chosen)
    by_agent: dict[str, Holdings] = {}
    for key, body in zip(chosen, await _get_all(store, chosen), strict=True):
        try:
            doc = json.loads(body) if body is not None else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            continue
        agent_id = _text(doc.get("agent_id")) or "(unknown)"
        held = by_agent.setdefault(agent_id, Holdings(agent_id))
        held.sessions += 1
        writer = doc.get("writer")
        if isinstance(writer, dict) and writer.get("agent_id") == agent_id:
            held.leased += 1
        uploaded = _text(doc.get("last_uploaded_at"))
        if uploaded and (held.last_uploaded_at is None or _when(uploaded) > _when(held.last_uploaded_at)):
            held.last_uploaded_at = uploaded
            harness, session_id = _text(doc.get("harness")), _text(doc.get("session_id"))
            held.last_session = f"{harness}/{session_id}" if harness and session_id else key
    view.holdings = sorted(by_agent.values(), key=lambda h: (-h.sessions, h.agent_id))


# ---------- the text ----------


def render(view: TeamView) -> str:
    """The team view for a person: one block per tracemirrord, then other agents and the sessions."""
    lines = [f"bucket {view.bucket}, project {view.project}"]
    if not view.daemons:
        lines.append("no tracemirrord has written a heartbeat here yet")
    for daemon in view.daemons:
        lines.append("")
        lines.extend(_daemon_lines(daemon, view))
    if view.others:
        lines.append("")
        lines.append("other agents (not tracemirrord):")
        for other in view.others:
            status = _text(other.doc.get("status")) or "unknown"
            lines.append(f"  {other.agent_id}  {status}  heartbeat {_ago(other.age_s)}")
    if view.unreadable:
        lines.append("")
        lines.extend(f"unreadable heartbeat {key}" for key in view.unreadable)
    if view.holdings is not None:
        lines.append("")
        lines.extend(_holdings_lines(view))
    lines.append("")
    lines.append(_summary(view))
    return "\n".join(lines)


def _daemon_lines(daemon: Daemon, view: TeamView) -> list[str]:
    doc = daemon.doc
    if daemon.silent:
        head = f"SILENT (last heartbeat {_ago(daemon.age_s)})"
    else:
        head = daemon.status
        if daemon.status == "running":
            head += "  DEGRADED" if daemon.degraded else f"  {_text(doc.get('health')) or 'health unknown'}"
        head += f"  heartbeat {_ago(daemon.age_s)}"
    lines = [f"tracemirrord {daemon.agent_id}  {head}"]
    facts = []
    for label, value in (("host", doc.get("host")), ("version", doc.get("version")), ("pid", doc.get("pid"))):
        if value is not None:
            facts.append(f"{label} {value}")
    if _text(doc.get("store")):
        facts.append(f"store {doc['store']}")
    sessions = _int(doc.get("sessions"))
    if sessions is not None:
        facts.append(f"{sessions} session{'s' if sessions != 1 else ''} followed")
    lag = _float(doc.get("lag_s"))
    facts.append(f"lag {lag:.1f}s" if lag is not None else "lag -")
    lines.append("  " + ", ".join(facts))
    harnesses = _dict(doc.get("harnesses"))
    if harnesses and daemon.status == "running":
        lines.append("  harnesses: " + ", ".join(f"{k} {v}" for k, v in harnesses.items()))
    held = next((h for h in view.holdings or [] if h.agent_id == daemon.agent_id), None)
    if held is not None:
        lines.append("  in the bucket: " + _holding_text(held, view.now))
    recent = [e for e in _list(doc.get("recent_sessions")) if isinstance(e, dict)]
    if recent:
        lines.append("  recent sessions:")
        for entry in recent:
            name = f"{entry.get('harness')}/{entry.get('session_id')}"
            flushed_at = _text(entry.get("last_flush_at"))
            flushed = f"flushed {_ago(_age_s(flushed_at, view.now))}" if flushed_at else "nothing flushed yet"
            lines.append(f"    {name}  {entry.get('state')}  {flushed}")
    problems = [p for p in _list(doc.get("problems")) if isinstance(p, str)]
    if problems and daemon.status == "running":
        lines.append("  problems:")
        lines.extend(f"    {p}" for p in problems)
    return lines


def _holding_text(held: Holdings, now: datetime) -> str:
    text = f"{held.sessions} session{'s' if held.sessions != 1 else ''}"
    if held.leased:
        text += f" ({held.leased} being written)"
    if held.last_uploaded_at:
        text += f", last upload {_ago(_age_s(held.last_uploaded_at, now))} ({held.last_session})"
    return text


def _holdings_lines(view: TeamView) -> list[str]:
    assert view.holdings is not None
    read = f"{view.meta_read} meta.json"
    if view.meta_read < view.meta_total:
        read = f"the newest {view.meta_read} of {view.meta_total} meta.json"
    lines = [f"sessions by writer (from {read}):"]
    if not view.holdings:
        lines.append("  none")
    known = {d.agent_id for d in view.daemons} | {o.agent_id for o in view.others}
    for held in view.holdings:
        note = "" if held.agent_id in known else "  (no heartbeat)"
        lines.append(f"  {held.agent_id}  {_holding_text(held, view.now)}{note}")
    return lines


def _summary(view: TeamView) -> str:
    if not view.daemons:
        return "not healthy: no tracemirrord has written a heartbeat here yet"
    states: dict[str, int] = {}
    for daemon in view.daemons:
        word = "degraded" if daemon.degraded else daemon.state
        states[word] = states.get(word, 0) + 1
    counts = ", ".join(f"{n} {word}" for word, n in sorted(states.items()))
    total = len(view.daemons)
    head = f"{total} tracemirrord{'s' if total != 1 else ''} ({counts})"
    return f"{head}: healthy" if view.healthy else f"{head}: NOT healthy"


# ---------- lenient field access: a heartbeat is another machine's word, never trusted to be well formed


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


def _when(text: str | None) -> datetime:
    """An ISO 8601 time as an aware UTC datetime (naive means UTC); the epoch when unreadable."""
    return datetime.fromtimestamp(unix_time(text) or 0.0, UTC)


def _age_s(text: str | None, now: datetime) -> float | None:
    """Seconds from ``text`` to ``now`` (a clock ahead of ours counts as 0); None when unreadable."""
    then = unix_time(text)
    return None if then is None else max(0.0, now.timestamp() - then)


def _ago(age_s: float | None) -> str:
    """``12s ago``, ``14m ago``, ``3h ago``, ``2d ago``; ``at an unreadable time`` when unknown."""
    if age_s is None:
        return "at an unreadable time"
    seconds = int(age_s)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
