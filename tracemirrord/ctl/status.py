"""Verbs that ask the running daemon over its socket: status, sessions, flush, metrics, reload.

They use ``control.schema`` and ``ctl.client`` only (``status --bucket`` hands over to ctl/team.py,
which reads the bucket instead of asking a daemon).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from urllib.parse import urlencode

from tracemirrord.control.schema import (
    EXIT_DEGRADED,
    EXIT_HEALTHY,
    PATH_FLUSH,
    PATH_METRICS,
    PATH_RELOAD,
    PATH_SESSIONS,
    PATH_STATUS,
    UNDECIDED,
    FlushResult,
    ReloadResult,
    SessionStatus,
    Status,
    session_from_json,
    socket_path,
    unix_time,
)
from tracemirrord.ctl.client import Client
from tracemirrord.ctl.common import CtlError, Verb, config_path

SHOWN_SESSIONS = 15
MAX_FLUSH_WAIT_S = 300.0  # the daemon's own bound (control/api.py)


def client_for(args: argparse.Namespace, timeout: float | None = None) -> Client:
    path = socket_path(getattr(args, "socket", None), config_path(args))
    return Client(path, timeout) if timeout else Client(path)


# ---------- status ----------


def _configure_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the status document as JSON")
    parser.add_argument(
        "--bucket",
        action="store_true",
        help="every daemon writing to this bucket and project, read from the bucket (no daemon needed)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing; the exit code tells")
    from tracemirrord.ctl import team

    configure = getattr(team, "configure_bucket_status", None)
    if configure is not None:
        configure(parser)


def run_status(args: argparse.Namespace) -> int:
    if args.bucket:
        from tracemirrord.ctl import team

        return team.run_bucket_status(args)
    # people see the sessions that are doing something: no need to ship ten thousand parked ones
    target = PATH_STATUS if args.json else PATH_STATUS + "?parked=0"
    status = Status.from_json(client_for(args).get_json(target))
    code = EXIT_DEGRADED if status.health != "healthy" else EXIT_HEALTHY
    if args.quiet:
        return code
    if args.json:
        json.dump(status.to_json(), sys.stdout, indent=2)
        print()
    else:
        sys.stdout.write(render_status(status))
    return code


def render_status(status: Status, now: float | None = None) -> str:
    """The human summary: who, where, health, harnesses, the busiest sessions, problems."""
    now = time.time() if now is None else now
    out = []
    health = "healthy" if status.health == "healthy" else "DEGRADED"
    out.append(
        f"tracemirrord {status.version} (pid {status.pid}) on {status.host or '?'} "
        f"as {status.agent_id}: {health}"
    )
    store = "ok" if status.store.state == "ok" else f"UNREACHABLE ({status.store.last_error})"
    out.append(f"  bucket     {status.bucket}  project {status.project}")
    out.append(f"  store      {store}")
    out.append(f"  uptime     {_duration(status.uptime_s)}")
    out.append(f"  redaction  {'on' if status.redaction else 'OFF: secrets are uploaded as they are'}")
    b = status.backfill
    if b.running:
        share = f" ({100 * b.bytes_done / b.bytes_total:.0f}%)" if b.bytes_total else ""
        out.append(
            f"  backfill   {b.sessions_done}/{b.sessions_total} sessions, "
            f"{human_size(b.bytes_done)} of {human_size(b.bytes_total)}{share}"
        )
    elif b.finished_at:
        out.append(
            f"  backfill   done: {_n(b.sessions_total, 'session')}, "
            f"{human_size(b.bytes_total)} ({b.finished_at})"
        )
    t = status.totals
    out.append(
        f"  totals     {_n(t.sessions, 'session')}, {_n(t.parts, 'part')}, {human_size(t.bytes_uploaded)} "
        "in the bucket, "
        f"{_n(t.redactions, 'redaction')}"
    )
    out.append("harnesses:")
    for h in status.harnesses:
        detail = f"  {h.error}" if h.error else ""
        parked = f" ({h.parked} parked)" if h.parked else ""
        word = "session " if h.sessions == 1 else "sessions"
        out.append(f"  {h.name:<12} {h.state:<8} {h.sessions:>5} {word}{parked}  {h.root}{detail}")
        if h.filtered:
            out.append(f"  {'':<12} privacy filter: {filter_summary(h.filtered)}")
    shown = _busiest(status.sessions)
    active = sum(1 for s in status.sessions if s.state == "following")
    out.append(f"sessions: {status.totals.sessions} ({active} active)")
    if shown:
        out.append(_session_header())
        out.extend(_session_row(s, now) for s in shown)
        if status.totals.sessions > len(shown):
            out.append(f"  ... {status.totals.sessions - len(shown)} more: tracemirrorctl sessions")
    if status.last_error:
        out.append(f"last error: {status.last_error}")
    for warning in status.warnings:
        out.append(f"WARNING: {warning}")
    if status.problems:
        out.append("problems:")
        out.extend(f"  - {p}" for p in status.problems)
    return "\n".join(out) + "\n"


def filter_summary(counts: dict[str, int]) -> str:
    """``3 excluded (exclude ~/clients/*: 2, not included: 1)``, and those still undecided."""
    undecided = counts.get(UNDECIDED, 0)
    left_out = {label: n for label, n in counts.items() if label != UNDECIDED}
    parts = ", ".join(f"{label}: {n}" for label, n in left_out.items())
    text = f"{sum(left_out.values())} excluded ({parts})"
    return text + (f", {undecided} undecided (waiting for a cwd)" if undecided else "")


def _busiest(sessions: list[SessionStatus]) -> list[SessionStatus]:
    """What a person wants first: sessions in trouble, then behind, then most recently flushed."""

    def rank(s: SessionStatus) -> tuple[int, float, str]:
        trouble = 0 if s.state in ("error", "blocked") else 1
        return (trouble, -(s.lag_s or 0.0) - s.behind_bytes, _neg(s.last_flush_at))

    return sorted((s for s in sessions if not s.parked), key=rank)[:SHOWN_SESSIONS]


def _neg(iso: str | None) -> str:
    # sort newest first inside a stable ascending sort: invert the characters' order
    return "".join(chr(0x10FFFF - ord(c)) for c in iso) if iso else "\U0010ffff"


def _session_header() -> str:
    return (
        f"  {'HARNESS':<12} {'SESSION':<38} {'STATE':<10} {'BEHIND':>9} {'LAG':>7} {'PARTS':>6}  LAST FLUSH"
    )


def _session_row(s: SessionStatus, now: float) -> str:
    behind = human_size(s.behind_bytes) if s.cursor_unit == "bytes" else f"{s.behind_bytes} {s.cursor_unit}"
    lag = "-" if s.lag_s is None else f"{s.lag_s:.1f}s"
    row = (
        f"  {s.harness:<12} {_clip(s.session_id, 38):<38} {s.state:<10} {behind:>9} {lag:>7} "
        f"{s.parts:>6}  {_ago(s.last_flush_at, now)}"
    )
    if s.error and s.state in ("error", "blocked"):
        row += f"  ({_clip(s.error, 80)})"
    return row


def _n(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def human_size(n: float) -> str:
    """Bytes as a person reads them: ``0 B``, ``84.6 KiB``, ``1.2 GiB`` (status and the --once bar)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _ago(iso: str | None, now: float) -> str:
    if not iso:
        return "never"
    then = unix_time(iso)
    return iso if then is None else f"{_duration(max(0.0, now - then))} ago"


# ---------- sessions ----------


def _configure_sessions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--harness", metavar="NAME", help="only this harness's sessions")
    parser.add_argument("--cwd", metavar="DIR|GLOB", help="only sessions run in DIR (or below it), or a glob")
    parser.add_argument(
        "--max-age", metavar="AGE", help="only sessions changed within AGE (e.g. 30m, 2h, 7d)"
    )
    parser.add_argument(
        "--state", choices=("following", "idle", "blocked", "ended", "error"), help="only this state"
    )
    parser.add_argument("--json", action="store_true", help="print the sessions as JSON")


def parse_age_s(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise CtlError(f"--max-age {text!r} is not an age (examples: 90s, 30m, 2h, 7d)", 2) from None


def run_sessions(args: argparse.Namespace) -> int:
    query = {"harness": args.harness, "cwd": args.cwd, "state": args.state}
    if args.max_age:
        query["max_age_s"] = str(parse_age_s(args.max_age))
    target = PATH_SESSIONS + "?" + urlencode({k: v for k, v in query.items() if v})
    sessions = [session_from_json(s) for s in client_for(args).get_json(target).get("sessions", [])]
    if args.json:
        json.dump([vars(s) for s in sessions], sys.stdout, indent=2)
        print()
        return EXIT_HEALTHY
    now = time.time()
    print(_session_header() + "  CWD")
    for s in sorted(sessions, key=lambda s: (s.harness, _neg(s.last_flush_at))):
        print(_session_row(s, now) + f"  {s.cwd or '-'}")
    print(_n(len(sessions), "session"))
    return EXIT_HEALTHY


# ---------- flush ----------


def _configure_flush(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_flush_timeout,
        default=30.0,
        metavar="SECONDS",
        help=f"how long to wait, at most {MAX_FLUSH_WAIT_S:g} (default: 30)",
    )


def _flush_timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_FLUSH_WAIT_S:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_FLUSH_WAIT_S:g}")
    return value


def run_flush(args: argparse.Namespace) -> int:
    code, doc = client_for(args).post_json(PATH_FLUSH, {"timeout_s": args.timeout}, timeout=args.timeout + 10)
    if not isinstance(doc, dict) or "flushed" not in doc:
        raise CtlError(f"tracemirrord answered {code}: {doc.get('error') if isinstance(doc, dict) else doc}")
    result = FlushResult(**doc)
    if result.flushed:
        what = "1 session is" if result.sessions == 1 else f"{result.sessions} sessions are"
        print(f"flushed: {what} in the bucket ({result.elapsed_s:.2f}s)")
        return EXIT_HEALTHY
    print(f"not everything landed within {args.timeout:g}s; still pending:", file=sys.stderr)
    for line in result.pending:
        print(f"  {line}", file=sys.stderr)
    return EXIT_DEGRADED


# ---------- metrics, reload ----------


def run_metrics(args: argparse.Namespace) -> int:
    code, body = client_for(args).request("GET", PATH_METRICS)
    if code != 200:
        raise CtlError(f"tracemirrord answered {code} for the metrics")
    sys.stdout.write(body.decode())
    return EXIT_HEALTHY


def run_reload(args: argparse.Namespace) -> int:
    code, doc = client_for(args).post_json(PATH_RELOAD, {})
    result = ReloadResult(**doc) if isinstance(doc, dict) and "applied" in doc else None
    if result is None:
        raise CtlError(f"tracemirrord answered {code} to the reload")
    if not result.applied:
        raise CtlError(f"reload refused, the running configuration stays: {result.error}")
    print("reloaded: " + ("; ".join(result.changes) if result.changes else "nothing changed"))
    return EXIT_HEALTHY


VERBS: tuple[Verb, ...] = (
    Verb(
        "status",
        "what the daemon is doing (exit 0 healthy, 1 degraded, 2 no daemon)",
        _configure_status,
        run_status,
    ),
    Verb("sessions", "the sessions the daemon follows, filtered", _configure_sessions, run_sessions),
    Verb("flush", "put everything pending now and wait until it landed", _configure_flush, run_flush),
    Verb("metrics", "the Prometheus metrics, as a scrape would get them", lambda p: None, run_metrics),
    Verb("reload", "read the configuration again (the same as SIGHUP)", lambda p: None, run_reload),
)
