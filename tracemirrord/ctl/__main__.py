"""``tracemirrorctl``: the command line around a running tracemirrord and its bucket.

Exit codes: 0 healthy (or the verb found nothing wrong); 1 degraded, or the verb found a problem
(verify: a gap, an overlap or a mismatch); 2 no daemon reachable, or bad usage. Every error is one
line on stderr, never a traceback, never a credential.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tracemirrord import __version__
from tracemirrord.control.schema import EXIT_DEGRADED, EXIT_USAGE
from tracemirrord.ctl import bucket, redact, status
from tracemirrord.ctl.common import CtlError, Verb

VERBS: tuple[Verb, ...] = (*status.VERBS, *bucket.VERBS, *redact.VERBS)

_EPILOG = """\
exit codes: 0 healthy / nothing wrong, 1 degraded / a problem found, 2 no daemon reachable / bad usage

examples:
  tracemirrorctl status                 what the local daemon is doing
  tracemirrorctl status --json          the same as JSON (docs/tracemirrorctl.md)
  tracemirrorctl status --bucket        every daemon writing to this bucket and project
  tracemirrorctl sessions --harness claude-code --max-age 1d
  tracemirrorctl cat claude-code/SESSION_ID > copy.jsonl
  tracemirrorctl verify                 compare every bucket copy with its source
  tracemirrorctl redact --report FILE   which secrets the daemon would remove from FILE, and where
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tracemirrorctl",
        description="Ask a running tracemirrord what it is doing, or read its bucket directly.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tracemirrorctl {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket", type=Path, metavar="PATH", help="the daemon's control socket (default: as the daemon)"
    )
    common.add_argument(
        "--config", type=Path, metavar="PATH", help="the daemon's TOML config file (default: as the daemon)"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        sub = verbs.add_parser(
            verb.name,
            help=verb.help,
            description=verb.description or verb.help,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        verb.configure(sub)
        sub.set_defaults(run=verb.run)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return int(args.run(args))
    except CtlError as exc:
        print(f"tracemirrorctl: {_one_line(str(exc))}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_USAGE
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug, or an error nobody foresaw: still one line, never a traceback
        from tracemirrord.ctl.common import safe_text

        print(f"tracemirrorctl: {type(exc).__name__}: {_one_line(safe_text(str(exc)))}", file=sys.stderr)
        return EXIT_DEGRADED


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
