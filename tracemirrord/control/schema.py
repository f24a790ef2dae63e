"""What the daemon and ``tracemirrorctl`` say to each other over the control socket.

The one module both sides share (design.md section 7): state names, the status document and its
parts, the HTTP paths, the exit codes, and where the socket is. It imports the standard library
only, so ``tracemirrorctl status`` loads nothing else of the daemon.

Wire format: plain HTTP/1.1 over a unix socket, one request per connection, JSON bodies
(``Content-Type: application/json``), except ``/v1/metrics`` (Prometheus text).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

# ---------- state names (design.md section 7), typed once ----------

StoreState = Literal["ok", "unreachable"]
HarnessState = Literal["running", "idle", "error", "missing"]
SessionStateName = Literal["following", "idle", "blocked", "ended", "error"]
Health = Literal["healthy", "degraded"]

STORE_STATES: tuple[str, ...] = get_args(StoreState)
HARNESS_STATES: tuple[str, ...] = get_args(HarnessState)
SESSION_STATES: tuple[str, ...] = get_args(SessionStateName)

# A session whose oldest pending byte is older than this (outside a backfill) makes the daemon
# degraded: at the default flush interval of 1 s, a minute means something is wrong.
LAGGING_AFTER_S = 60.0

# ---------- exit codes of tracemirrorctl ----------

EXIT_HEALTHY = 0
EXIT_DEGRADED = 1  # also: a verb that found a problem (verify: a mismatch; cat: a broken chain)
EXIT_NO_DAEMON = 2  # no daemon answers on the socket; also bad usage
EXIT_USAGE = 2

# ---------- HTTP paths ----------

PATH_STATUS = "/v1/status"  # GET [?parked=0: leave parked sessions out of "sessions"] -> Status
PATH_SESSIONS = "/v1/sessions"  # GET ?harness=&cwd=&max_age_s= -> {"sessions": [SessionStatus]}
PATH_FLUSH = "/v1/flush"  # POST {"timeout_s": float} -> FlushResult
PATH_METRICS = "/v1/metrics"  # GET -> Prometheus text exposition
PATH_RELOAD = "/v1/reload"  # POST -> ReloadResult (the same as SIGHUP)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# ---------- the heartbeat our daemons write (agents/<agent-id>.json, beside tracecraft's) ----------

HEARTBEAT_KIND = "tracemirrord"  # the "kind" field that tells our heartbeats from other tools'
HEARTBEAT_RECENT_SESSIONS = 20  # the sessions a heartbeat names (most recently flushed first)


def _from_dict(cls: type, doc: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from ``doc``, ignoring fields a newer daemon added."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass
class StoreStatus:
    state: StoreState = "ok"
    last_error: str | None = None
    last_ok_at: str | None = None  # ISO 8601 UTC of the last request that succeeded
    # the start-up probe's verdict: "enforced", "not enforced" (single-writer mode), None: not probed yet
    conditional_writes: str | None = None


@dataclass
class CheckpointStatus:
    """The local checkpoint (a cache of the bucket): ``failing`` while saves fail (disk full, locked,
    corrupt), ``memory`` when it was locked at start and this run caches in memory."""

    state: Literal["ok", "failing", "memory"] = "ok"
    last_error: str | None = None


UNDECIDED = "undecided"  # HarnessStatus.filtered: sessions waiting for their first records to name a cwd


@dataclass
class HarnessStatus:
    name: str
    root: str  # the first root, as design.md names it; every root is in ``roots``
    state: HarnessState
    sessions: int
    error: str | None = None
    roots: list[str] = field(default_factory=list)
    parked: int = 0  # sessions idle long enough to cost no task (still counted in ``sessions``)
    following: str = "polling"  # "notifications" (inotify) or "polling" (watch.py)
    polling_because: str | None = None  # why notifications are not used
    excluded: int = 0  # sessions the privacy filter left out (never followed, never uploaded)
    filtered: dict[str, int] = field(default_factory=dict)  # per pattern (and "undecided"), when set


@dataclass
class SessionStatus:
    harness: str
    session_id: str
    source_path: str
    state: SessionStateName
    cursor: int
    behind_bytes: int  # what the source holds beyond the bucket's copy (rows, for a rows source)
    parts: int
    last_flush_at: str | None
    lag_s: float | None  # age of the oldest source byte not yet in the bucket; 0 when none
    redactions: dict[str, int] = field(default_factory=dict)
    cursor_unit: str = "bytes"
    generation: int = 0
    cwd: str | None = None
    parked: bool = False
    error: str | None = None
    modified_at: str | None = None  # the source's last change as last seen
    bytes_uploaded: int = 0  # every part of the session, as the bucket holds them


@dataclass
class Totals:
    sessions: int = 0
    parts: int = 0
    bytes_uploaded: int = 0
    redactions: int = 0


@dataclass
class Backfill:
    """The catch-up over what was written while no daemon ran (first start, or after a stop)."""

    running: bool = False
    sessions_total: int = 0
    sessions_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    started_at: str | None = None
    finished_at: str | None = None


@dataclass
class Counters:
    """Monotonic counters since the daemon started (the metrics' ``_total`` series)."""

    bytes_read: int = 0  # source bytes taken into parts
    bytes_uploaded: int = 0  # request bodies sent to the store
    requests: dict[str, int] = field(default_factory=dict)  # by operation: put, get, head, list
    request_errors: dict[str, int] = field(default_factory=dict)  # by error kind
    parts_written: int = 0
    retries: int = 0  # a session step or a heartbeat tried again after a failure
    redactions: dict[str, int] = field(default_factory=dict)  # by rule
    errors: dict[str, int] = field(default_factory=dict)  # by kind (store, lease, format, internal ...)
    heartbeats: int = 0
    reloads: int = 0


@dataclass
class Status:
    """``GET /v1/status``: design.md section 7's fields, then ours."""

    version: str
    pid: int
    agent_id: str
    bucket: str
    uptime_s: float
    store: StoreStatus
    harnesses: list[HarnessStatus]
    sessions: list[SessionStatus]
    totals: Totals
    project: str = "default"
    instance: str = ""
    host: str = ""
    started_at: str = ""
    redaction: bool = True
    single_writer: bool = False  # TRACEMIRROR_SINGLE_WRITER: one writer per session, vouched for by the user
    health: Health = "healthy"
    problems: list[str] = field(default_factory=list)  # why it is degraded, one line each
    warnings: list[str] = field(default_factory=list)  # worth saying loudly, not degraded (redaction off)
    last_error: str | None = None
    backfill: Backfill = field(default_factory=Backfill)
    counters: Counters = field(default_factory=Counters)
    settings: dict[str, Any] = field(default_factory=dict)  # flush interval, part size ... (no secrets)
    checkpoint: CheckpointStatus = field(default_factory=CheckpointStatus)

    def to_json(self) -> dict[str, Any]:
        """The document as plain JSON types (shallow copies: ``asdict``'s deep copy of ten thousand
        sessions costs a second)."""
        doc = self._head()
        doc["sessions"] = [dict(vars(s)) for s in self.sessions]
        return doc

    def json_chunks(self) -> list[bytes]:
        """The document encoded as JSON (what ``to_json`` holds, in the same order), in pieces: the
        sessions are encoded a few hundred at a time, so ten thousand of them never exist at once as
        dicts, as one string and as its bytes (that was 14 MiB of the daemon's peak RSS)."""
        chunks: list[bytes] = []
        text = "{"
        for n, (name, value) in enumerate(self._head().items()):
            text += f"{',' if n else ''}{_dumps(name)}:"
            if name != "sessions":
                text += _dumps(value)
                continue
            chunks.append(f"{text}[".encode())
            sessions = self.sessions
            for start in range(0, len(sessions), _SESSIONS_PER_CHUNK):
                piece = ",".join(_dumps(vars(s)) for s in sessions[start : start + _SESSIONS_PER_CHUNK])
                chunks.append(f"{',' if start else ''}{piece}".encode())
            text = "]"
        chunks.append(f"{text}}}".encode())
        return chunks

    def _head(self) -> dict[str, Any]:
        doc = dict(vars(self))
        for name in ("store", "totals", "backfill", "counters", "checkpoint"):
            doc[name] = dict(vars(doc[name]))
        doc["harnesses"] = [dict(vars(h)) for h in self.harnesses]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Status:
        doc = dict(doc)
        doc["store"] = _from_dict(StoreStatus, doc.get("store") or {})
        doc["harnesses"] = [_from_dict(HarnessStatus, h) for h in doc.get("harnesses") or []]
        doc["sessions"] = [_from_dict(SessionStatus, s) for s in doc.get("sessions") or []]
        doc["totals"] = _from_dict(Totals, doc.get("totals") or {})
        doc["backfill"] = _from_dict(Backfill, doc.get("backfill") or {})
        doc["counters"] = _from_dict(Counters, doc.get("counters") or {})
        doc["checkpoint"] = _from_dict(CheckpointStatus, doc.get("checkpoint") or {})
        return _from_dict(cls, doc)


def session_from_json(doc: dict[str, Any]) -> SessionStatus:
    return _from_dict(SessionStatus, doc)


@dataclass
class FlushResult:
    """``POST /v1/flush``: every held record put and meta.json written, or what is still pending."""

    flushed: bool
    sessions: int  # sessions that had something to flush
    pending: list[str] = field(default_factory=list)  # "<harness>/<session>: reason" still not landed
    elapsed_s: float = 0.0


@dataclass
class ReloadResult:
    applied: bool
    changes: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class ErrorBody:
    """Any non-2xx answer: one line a person can act on."""

    error: str


def unix_time(iso: str | None) -> float | None:
    """An ISO 8601 time (``Z`` or an offset; naive means UTC) as unix seconds; None when absent or
    unreadable. Every time in the status document and the heartbeat is written this way."""
    if not iso:
        return None
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# ---------- where the socket is ----------

# sockaddr_un holds 108 bytes on Linux (104 on macOS): deep state dirs (CI's temporary directories,
# a long $HOME) overflow it. On Linux a socket is then reached through /proc/self/fd/<directory fd>.
SUN_PATH_MAX = 100


@contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for ``path`` that fits in sockaddr_un (bind or connect inside the ``with``)."""
    text = os.fsdecode(path)
    if len(text.encode()) <= SUN_PATH_MAX or not Path("/proc/self/fd").is_dir():
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_PATH", 0) | getattr(os, "O_DIRECTORY", 0))
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _xdg(env: dict[str, str] | os._Environ[str], var: str, fallback: str) -> Path:
    value = env.get(var)
    return Path(value) if value else Path(env.get("HOME") or Path.home()) / fallback


def default_socket_path(env: dict[str, str] | os._Environ[str] | None = None) -> Path:
    """``$XDG_RUNTIME_DIR/tracemirror/ctl.sock``, else ``<state dir>/ctl.sock`` (design.md section 3)."""
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "tracemirror" / "ctl.sock"
    state = env.get("TRACEMIRROR_STATE_DIR")
    state_dir = Path(state) if state else _xdg(env, "XDG_STATE_HOME", ".local/state") / "tracemirror"
    return state_dir / "ctl.sock"


def socket_path(
    explicit: Path | None = None,
    config_file: Path | None = None,
    env: dict[str, str] | os._Environ[str] | None = None,
) -> Path:
    """The socket a client should dial, by the daemon's own precedence: ``--socket``, then
    ``TRACEMIRROR_SOCKET``, then the config file's ``socket`` (or its ``state_dir``), then the default.
    Reads the TOML with the standard library: the client needs none of the daemon's settings code."""
    env = os.environ if env is None else env
    if explicit is not None:
        return explicit
    if env.get("TRACEMIRROR_SOCKET"):
        return Path(env["TRACEMIRROR_SOCKET"])
    if config_file is None:
        config_home = _xdg(env, "XDG_CONFIG_HOME", ".config")
        candidate = config_home / "tracemirror" / "config.toml"
        config_file = candidate if candidate.is_file() else None
    if config_file is not None:
        try:
            doc = tomllib.loads(config_file.read_text())
        except (OSError, ValueError):
            doc = {}
        if isinstance(doc.get("socket"), str):
            return Path(doc["socket"]).expanduser()
        if isinstance(doc.get("state_dir"), str) and not env.get("XDG_RUNTIME_DIR"):
            if not env.get("TRACEMIRROR_STATE_DIR"):
                return Path(doc["state_dir"]).expanduser() / "ctl.sock"
    return default_socket_path(env)


_SESSIONS_PER_CHUNK = 500


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
