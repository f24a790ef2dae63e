"""``tracemirrord``: the command line, wiring settings, logging and the daemon together.

Exit codes: 0 success (or a clean stop on SIGTERM/SIGINT); 1 a runtime failure (``--once`` could
not mirror everything, ``--check`` could not reach the bucket, another daemon holds the state dir);
2 bad configuration or usage, or a store that ignores conditional writes outside single-writer mode.
"""

from __future__ import annotations

import sys

from tracemirrord import early_signals

# before the slow imports below (harnesses, the rule set): a SIGTERM now must not kill us unflushed
early_signals.install(daemon=not {"--once", "--check"} & set(sys.argv[1:]))

import argparse
import os
from pathlib import Path

import anyio
import structlog

from tracemirrord import __version__
from tracemirrord.config import (
    ConfigError,
    Settings,
    build_redactor,
    default_config_file,
    load_settings,
    log_redactor,
)
from tracemirrord.ctl.status import filter_summary
from tracemirrord.harnesses import REGISTRY
from tracemirrord.harnesses.base import Discovery, Harness
from tracemirrord.logs import configure_logging, secret_free
from tracemirrord.privacy import filter_counts
from tracemirrord.store.base import StoreError
from tracemirrord.store.guard import unusable_message
from tracemirrord.store.probe import ProbeReport
from tracemirrord.supervisor import Daemon, DaemonConfigError, DaemonError, describe_failure, harness_roots
from tracemirrord.writer import limit_malloc_arenas

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

_EPILOG = """\
configuration (environment over TOML file over defaults; see docs/configuration.md):
  TRACEMIRROR_BUCKET          s3://NAME[/PREFIX] or file:///DIR (default: the embedded bucket,
                              $XDG_DATA_HOME/tracemirror/bucket)
  TRACEMIRROR_PROJECT         top-level prefix in the bucket (default: default)
  TRACEMIRROR_HARNESSES       comma list (default: all of them; see "harnesses" below)
  TRACEMIRROR_REDACT          redact secrets before upload (default: true)
  TRACEMIRROR_BACKFILL        all | none | an age such as 7d (default: all)
  TRACEMIRROR_EXCLUDE         comma list of globs on a session's cwd or path never to mirror, e.g.
                              ~/clients/acme,*/private (docs/privacy-filters.md)
  TRACEMIRROR_INCLUDE         comma list of globs: when set, only sessions matching one are mirrored
  TRACEMIRROR_STATE_DIR       local checkpoint (default: $XDG_STATE_HOME/tracemirror)
  TRACEMIRROR_SOCKET          control socket for tracemirrorctl (default: $XDG_RUNTIME_DIR/tracemirror/
                              ctl.sock, else ctl.sock in the state dir)
  TRACEMIRROR_METRICS_ADDR    serve Prometheus metrics on HOST:PORT, loopback only (default: off)
  TRACEMIRROR_HEARTBEAT_INTERVAL  how often <project>/agents/<agent id>.json is written (default: 60s)
  TRACEMIRROR_S3__ENDPOINT_URL and AWS_* variables for S3-compatible stores
  TRACEMIRROR_SINGLE_WRITER   accept a store that ignores conditional writes, promising that one
                              daemon writes each session (default: false; see docs/s3.md)

harnesses (where each agent keeps its sessions, and the variables that move it):
{harnesses}

signals: SIGTERM/SIGINT flush what is held and exit 0 (a second one exits at once);
  SIGHUP reads the configuration again (see docs/configuration.md, "Reloading").

examples:
  tracemirrord                                 mirror into the embedded local bucket
  tracemirrorctl status                        what the running daemon is doing
  TRACEMIRROR_BUCKET=s3://my-bucket/traces tracemirrord
  tracemirrord --check                         show what would be mirrored where, then exit
  tracemirrord --once                          mirror everything pending, then exit
"""


def _harness_help() -> str:
    """One line per registered harness: its name, kind and default root (from the registry alone)."""
    home = Path("~")
    lines = []
    for name, cls in REGISTRY.items():
        roots = ", ".join(str(r) for r in cls().default_roots({}, home))
        moved = f" ({', '.join(cls.root_env)})" if cls.root_env else ""
        lines.append(f"  {name:<12} {cls.kind:<9} {roots}{moved}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tracemirrord",
        description=(
            "Mirror AI coding-agent session transcripts, with secrets "
            "redacted, into S3-compatible storage you own. Runs in the foreground until SIGTERM or "
            "SIGINT, then flushes what it holds and exits 0."
        ),
        epilog=_EPILOG.format(harnesses=_harness_help()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"TOML config file (default: {default_config_file()} if it exists)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--once", action="store_true", help="mirror everything pending, then exit (0: all landed)"
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="validate the config, show what would be followed and where, exit",
    )
    parser.add_argument("--version", action="version", version=f"tracemirrord {__version__}")
    return parser.parse_args(argv)


def print_check(settings: Settings, daemon: Daemon) -> list[tuple[Harness, Discovery]]:
    """What would be mirrored where; returns each listed harness and what it found."""
    out = sys.stdout
    listed: list[tuple[Harness, Discovery]] = []
    print(f"tracemirrord {__version__}", file=out)
    print(f"bucket:      {daemon.store.url}", file=out)
    print(f"project:     {settings.project}", file=out)
    print(f"agent id:    {settings.agent_id}", file=out)
    print(f"state dir:   {settings.state_dir}", file=out)
    print(f"socket:      {settings.socket_path}", file=out)
    print(f"metrics:     {settings.metrics_addr or 'off (TRACEMIRROR_METRICS_ADDR)'}", file=out)
    if settings.redact:
        redactor = build_redactor(settings)
        scan = "hyperscan" if redactor.native else "pure Python (no hyperscan wheel here: slower)"
        print(f"redaction:   on ({len(redactor.rule_names)} rules; keyword scan: {scan})", file=out)
    else:
        print("redaction:   OFF: secrets would be uploaded as they are", file=out)
    print(f"backfill:    {settings.backfill}", file=out)
    writers = "one (single-writer mode, TRACEMIRROR_SINGLE_WRITER=true)" if settings.single_writer else "any"
    print(f"writers:     {writers}", file=out)
    print(
        f"flush:       every {settings.flush_interval:g}s, parts up to {settings.part_max_bytes} bytes",
        file=out,
    )
    print("harnesses:", file=out)
    for name in settings.harnesses:
        roots = harness_roots(name, settings, os.environ)
        found = [r for r in roots if r.exists()]
        where = ", ".join(str(r) for r in roots)
        if not found:
            print(f"  {name:<12} {'missing (will be picked up when it appears)':<44} {where}", file=out)
            continue
        harness = REGISTRY[name]()
        try:
            discovery = harness.discover_blocking(found)
        except Exception as exc:  # a harness that cannot even be listed is reported, not fatal
            error = secret_free(f"ERROR: {type(exc).__name__}: {exc}")
            print(f"  {name:<12} {error:<44} {where}", file=out)
            continue
        print(f"  {name:<12} {f'{len(discovery.sessions)} sessions':<44} {where}", file=out)
        for problem in discovery.refused:
            print(f"  {'':<12} not followed: {secret_free(str(problem))}", file=out)
        listed.append((harness, discovery))
    if daemon.session_filter.active:
        patterns = [p.label for p in (*daemon.session_filter.include, *daemon.session_filter.exclude)]
        print(f"privacy filter: {'; '.join(patterns)}", file=out)
    return listed


async def print_filter_check(
    settings: Settings, daemon: Daemon, listed: list[tuple[Harness, Discovery]]
) -> None:
    """Per harness, how many sessions the privacy filter leaves out and by which pattern."""
    for harness, discovery in listed:
        counts = await filter_counts(
            daemon.session_filter,
            discovery.sessions,
            lambda ref, h=harness: h.open_source(ref, max_line_bytes=settings.max_line_bytes),
        )
        print(f"  {harness.name:<12} {filter_summary(counts)}", file=sys.stdout)


async def _check(settings: Settings) -> int:
    daemon = Daemon(settings)
    try:
        listed = print_check(settings, daemon)
        if daemon.session_filter.active:
            await print_filter_check(settings, daemon, listed)
        try:
            await daemon.store.check()
            report = await daemon.guard.probe()
        except StoreError as exc:
            print(f"store:       UNREACHABLE: {exc}", file=sys.stdout)
            return EXIT_FAILURE
        return print_store_verdict(settings, daemon.store.url, report)
    finally:
        await daemon.store.close()


def print_store_verdict(settings: Settings, url: str, report: ProbeReport) -> int:
    """The probe's lines of ``--check`` and its exit code: a store that ignores conditional writes is
    refused (2) unless single-writer mode is on."""
    out = sys.stdout
    print(f"conditional writes: {report.describe()}", file=out)
    if report.enforced:
        print("store:       ok", file=out)
        return EXIT_OK
    if report.swap_accepted and settings.single_writer:
        print(
            "store:       ok in single-writer mode (TRACEMIRROR_SINGLE_WRITER=true): "
            "only one tracemirrord may write each session",
            file=out,
        )
        return EXIT_OK
    print(f"store:       REFUSED: {unusable_message(url, report)}", file=out)
    return EXIT_CONFIG


async def _run(settings: Settings, once: bool, config_path: Path | None) -> int:
    daemon = Daemon(settings, config_path=config_path)
    try:
        await daemon.open()
        return await (daemon.run_once() if once else daemon.run_forever())
    finally:
        await daemon.close()


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush into the closed pipe is silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _backend_options() -> dict[str, bool]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"tracemirrord: {secret_free(problem)}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format, redactor=log_redactor(settings))
    try:
        if args.check:
            return anyio.run(_check, settings, backend_options=_backend_options())
        limit_malloc_arenas()  # before any worker thread allocates (see its comment)
        return anyio.run(_run, settings, args.once, args.config, backend_options=_backend_options())
    except DaemonConfigError as exc:
        print(f"tracemirrord: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except DaemonError as exc:
        print(f"tracemirrord: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `--check | head`: the reader had enough, which is not a failure
        _quiet_stdout()
        return EXIT_OK
    except Exception as exc:  # a last net: the traceback only through the secret-free log renderer
        structlog.get_logger("tracemirrord").exception("tracemirrord failed")
        print(f"tracemirrord: failed: {secret_free(describe_failure(exc))}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
