"""``tracemirrorctl redact FILE|-``: what the daemon would upload of a transcript, before trusting it.

The same Redactor and rules the daemon runs (the config file's ``[redaction]`` included), line
by line over complete lines (a last line without its newline is redacted too: a file given by
hand has no writer still appending). ``--report`` prints which rules fired on which lines, never
the secrets themselves.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import BinaryIO

from tracemirrord.control.schema import EXIT_DEGRADED, EXIT_HEALTHY
from tracemirrord.ctl.common import CtlError, Verb, load_settings_for

CHUNK_LINES = 512  # lines redacted per call: the engine's per-call cost is amortised, memory bounded
MAX_LINE_NUMBERS = 12  # line numbers listed per rule in the report (then "and N more")


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="a transcript (JSONL or text); - reads stdin")
    parser.add_argument(
        "--report",
        action="store_true",
        help="print a table of rule, count and line numbers instead of the redacted text",
    )
    parser.add_argument(
        "--fail-on-secret",
        action="store_true",
        help="exit 1 when anything was redacted (for a pre-commit hook or a CI check)",
    )


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    for line in stream:
        yield line if line.endswith(b"\n") else line + b"\n"


def _chunks(stream: BinaryIO) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for line in _lines(stream):
        chunk.append(line)
        if len(chunk) >= CHUNK_LINES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_redact(args: argparse.Namespace) -> int:
    from tracemirrord.redact import Redactor

    # The daemon's rule set, with the config file's [redaction] rules, allowlist and disabled
    # rules; redaction is on here even where the daemon has it off (this verb is the check).
    redactor = Redactor(load_settings_for(args).redaction.rule_set())
    try:
        stream: BinaryIO = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    except OSError as exc:
        raise CtlError(f"cannot read {args.file}: {exc.strerror or exc}", 2) from None
    found: dict[str, list[int]] = {}
    total = 0
    lines = 0
    out = sys.stdout.buffer
    with stream:
        for chunk in _chunks(stream):
            if args.report:  # line by line, to say where
                for line in chunk:
                    lines += 1
                    for rule, count in redactor.redact(line).counts.items():
                        found.setdefault(rule, []).extend([lines] * count)
                        total += count
                continue
            result = redactor.redact(b"".join(chunk))
            lines += len(chunk)
            total += sum(result.counts.values())
            out.write(result.data)
    if args.report:
        _print_report(found, lines, total)
    elif total:
        print(f"tracemirrorctl: {total} redacted in {lines} lines (--report for where)", file=sys.stderr)
    return EXIT_DEGRADED if args.fail_on_secret and total else EXIT_HEALTHY


def _print_report(found: dict[str, list[int]], lines: int, total: int) -> None:
    if not found:
        print(f"nothing to redact in {lines} lines")
        return
    width = max(len("RULE"), *(len(rule) for rule in found))
    print(f"{'RULE':<{width}}  {'COUNT':>5}  LINES")
    for rule in sorted(found, key=lambda r: (-len(found[r]), r)):
        where = sorted(set(found[rule]))
        listed = ", ".join(str(n) for n in where[:MAX_LINE_NUMBERS])
        if len(where) > MAX_LINE_NUMBERS:
            listed += f" and {len(where) - MAX_LINE_NUMBERS} more"
        print(f"{rule:<{width}}  {len(found[rule]):>5}  {listed}")
    print(f"{total} redactions in {lines} lines")


VERBS: tuple[Verb, ...] = (
    Verb(
        "redact",
        "print a transcript as the daemon would upload it (secrets redacted); --report: where",
        _configure,
        run_redact,
    ),
)
