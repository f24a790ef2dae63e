"""Redaction time of hostile lines at two sizes, so linear (or worse) scaling shows (standalone).

Each case is one line built at size S and 2S; the time to redact it with the default rules is
measured in a child process with a time limit (a quadratic engine would otherwise never return),
and printed with MB/s and the ratio of the two times (about 2 when linear, about 4 when quadratic).

    .venv/bin/python benchmarks/bench_redact_hostile.py [--scale 1.0] [--timeout 120] [--only NAME ...]
    .venv/bin/python benchmarks/bench_redact_hostile.py --engine-root /tmp/redact-before   # another tree
    .venv/bin/python benchmarks/bench_redact_hostile.py --rules [--show 15]   # each rule on its own

``--rules`` times each default rule alone on lines made of one of its keywords followed by 16 KiB
of one filler byte (a space, a tab, a letter, a digit, ``-``, ``\\n`` escapes, ...), and of the
keyword and one filler byte repeated over 16 KiB: a pattern that backtracks over its window shows
up as a slow rule here.

``--engine-root`` imports ``tracemirrord`` from another checkout (a ``git worktree`` of an older
commit), so the same lines can be timed before and after a change.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_TOKEN = "ghp_" + "".join(random.Random(7).choice("abcdefghijkLMNOPQ0123456789") for _ in range(36))


def _json_line(text: bytes) -> bytes:
    return b'{"type":"tool_result","content":"' + text + b'"}\n'


def _nested(size: int) -> bytes:
    """A secret in JSON nested in JSON strings, as deep as needed to reach about ``size`` bytes."""
    doc = json.dumps({"env": {"GITHUB_TOKEN": _TOKEN}, "note": 'a "quoted" \\ path'})
    while True:
        outer = json.dumps({"content": doc})
        if len(outer) > size:
            return outer.encode() + b"\n"
        doc = outer


def _image_next_to_secret(size: int) -> bytes:
    data = base64.b64encode(random.Random(3).randbytes(size * 3 // 4)).decode()
    akia = "AKIA" + "Q" * 12 + "2345"
    return _json_line((akia + " " + data + "\\n" + _TOKEN).encode())


# name -> (what it is, size S in bytes, builder of a line of about that size)
CASES: dict[str, tuple[str, int, Callable[[int], bytes]]] = {
    "backslashes": ("a JSON string of backslashes", 1_000_000, lambda n: _json_line(b"\\" * (n // 2 * 2))),
    "backslashes-slash": (
        "backslashes then an escaped slash (\\\\...\\/)",
        1_000_000,
        lambda n: _json_line(b"\\" * (n // 2 * 2) + b"\\/" + _TOKEN.encode()),
    ),
    "backslash-quote-raw": ('\\\\" repeated, not JSON', 1_000_000, lambda n: b'\\\\"' * (n // 3) + b"\n"),
    "backslash-quote-json": (
        '\\\\\\" repeated in a JSON string',
        1_000_000,
        lambda n: _json_line(b'\\\\\\"' * (n // 4)),
    ),
    "sk-proj-run": (
        "sk-proj- repeated (100,000 x at S)",
        800_000,
        lambda n: _json_line(b"sk-proj-" * (n // 8)),
    ),
    "akia-run": ("AKIA repeated (100,000 x at S)", 400_000, lambda n: _json_line(b"AKIA" * (n // 4))),
    "a-line": ("one character, a", 10_000_000, lambda n: b"a" * n + b"\n"),
    "A-line": ("one character, A (a keyword's first byte)", 10_000_000, lambda n: b"A" * n + b"\n"),
    "quote-line": ('one character, "', 10_000_000, lambda n: b'"' * n + b"\n"),
    "u002d-run": (
        "\\u002d repeated in a JSON string",
        1_000_000,
        lambda n: _json_line(b"\\u002d" * (n // 6)),
    ),
    "nested-json": ("a secret in JSON nested in JSON strings, deep", 1_000_000, _nested),
    "image-and-secret": ("base64 image data between two secrets", 1_000_000, _image_next_to_secret),
    "aws-secret-spaces": (
        "aws_secret_access_key then spaces (a rule's backtracking)",
        100_000,
        lambda n: b"aws_secret_access_key" + b" " * n + b"x\n",
    ),
    "pem-no-end": (
        "a PEM header then base64 with no END",
        1_000_000,
        lambda n: _json_line(b"-----BEGIN RSA PRIVATE KEY-----\\n" + b"QUJD" * (n // 4)),
    ),
}


FILLERS = (
    b" ",
    b"\t",
    b"a",
    b"A",
    b"0",
    b"f",
    b"-",
    b"_",
    b"/",
    b"=",
    b".",
    b":",
    b"+",
    b"%",
    b"\\n",
    b"\\\\",
)


def rule_child(name: str, engine_root: str) -> None:
    """Time default rule ``name`` alone on its hostile lines; print the slowest as JSON."""
    sys.path.insert(0, engine_root)
    from tracemirrord.redact import Redactor  # imported here: from the tree chosen at run time
    from tracemirrord.rules import DEFAULT_RULES

    rule = next(rule for rule in DEFAULT_RULES if rule.name == name)
    redactor = Redactor([rule])
    worst = (0.0, "")
    for kw in rule.keywords:
        for filler in FILLERS:
            run = filler * (16384 // len(filler))
            repeated = (kw.encode() + filler) * (16384 // (len(kw) + len(filler)))
            for what, line in (("run", kw.encode() + run), ("repeated", repeated)):
                print(json.dumps({"running": f"{kw!r} + {what} of {filler.decode()!r}"}), flush=True)
                t = time.perf_counter()
                redactor.redact(line + b"\n")
                seconds = time.perf_counter() - t
                if seconds > worst[0]:
                    worst = (seconds, f"{kw!r} + {what} of {filler.decode()!r}")
    print(json.dumps({"rule": rule.name, "seconds": worst[0], "line": worst[1]}))


def rules_main(engine_root: str, timeout: float, show: int, only: list[str] | None) -> None:
    """Each default rule in its own child process; print the slowest ones. A child still running
    after ``timeout`` is stopped; its row names the line it was on."""
    sys.path.insert(0, engine_root)
    from tracemirrord.rules import DEFAULT_RULES

    rows = []
    for rule in DEFAULT_RULES:
        if only and rule.name not in only:
            continue
        cmd = [sys.executable, __file__, "--rule-child", rule.name, "--engine-root", engine_root]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        except subprocess.TimeoutExpired as exc:
            done = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            last = json.loads(done.strip().splitlines()[-1]) if done.strip() else {"running": "?"}
            line = f"stopped after {timeout:.0f} s, on {last['running']}"
            rows.append({"rule": rule.name, "seconds": float("inf"), "line": line})
        print(f"  {rows[-1]['rule']}: {rows[-1]['seconds']:.3f} s", file=sys.stderr, flush=True)
    rows.sort(key=lambda row: -row["seconds"])
    print(f"{len(rows)} rules; slowest hostile line per rule (16 KiB each), the {show} slowest:")
    print("| rule | seconds | line |")
    print("|---|---|---|")
    for row in rows[:show]:
        print(f"| {row['rule']} | {row['seconds']:.3f} | {row['line']} |")


def child(name: str, size: int, engine_root: str) -> None:
    """Time one redaction in this process and print the result as JSON."""
    sys.path.insert(0, engine_root)
    from tracemirrord.redact import Redactor  # imported here: from the tree chosen at run time

    line = CASES[name][2](size)
    redactor = Redactor()
    t = time.perf_counter()
    result = redactor.redact(line)
    seconds = time.perf_counter() - t
    print(json.dumps({"bytes": len(line), "seconds": seconds, "counts": result.counts}))


def run(name: str, size: int, engine_root: str, timeout: float) -> dict[str, object] | None:
    """One case in a child process; None if it did not finish within ``timeout`` seconds."""
    cmd = [sys.executable, __file__, "--child", name, str(size), "--engine-root", engine_root]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout
    except subprocess.TimeoutExpired:
        return None
    return json.loads(out.strip().splitlines()[-1])


def keywords_main(engine_root: str, repeat: int, show: int) -> None:
    """Time every keyword of the default set repeated ``repeat`` times, alone and with a separator.

    Runs in this process with the engine from ``engine_root``. A rule whose token run backtracks
    over its window at each occurrence shows here as tens of microseconds per byte.
    """
    sys.path.insert(0, engine_root)
    from tracemirrord.redact import Redactor
    from tracemirrord.rules import DEFAULT_RULES

    redactor = Redactor()
    rows = []
    for kw in sorted({kw for rule in DEFAULT_RULES for kw in rule.keywords}):
        for sep in (b"", b" ", b"a", b"0"):
            line = b'{"content":"' + (kw.encode() + sep) * repeat + b'"}\n'
            started = time.perf_counter()
            redactor.redact(line)
            rows.append(((time.perf_counter() - started) / len(line) * 1e6, kw, sep, len(line)))
    rows.sort(reverse=True)
    print(f"{len(rows)} lines (each keyword x{repeat}, alone and followed by ' ', 'a', '0')", end="")
    print(f"; the {show} slowest:")
    print("| keyword | separator | bytes | us per byte |")
    print("|---|---|---|---|")
    for us, kw, sep, size in rows[:show]:
        print(f"| `{kw}` | {sep.decode()!r} | {size} | {us:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine-root", default=str(ROOT), help="checkout whose tracemirrord is timed")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size S by this")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a run is given up")
    parser.add_argument("--only", nargs="*", help="case (or with --rules, rule) names to run (default: all)")
    parser.add_argument("--rules", action="store_true", help="time each default rule on its own")
    parser.add_argument("--show", type=int, default=15, help="with --rules/--keywords: how many to list")
    parser.add_argument(
        "--keywords", type=int, metavar="N", help="time every keyword repeated N times in one line"
    )
    parser.add_argument("--child", nargs=2, metavar=("NAME", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--rule-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.engine_root)
        return
    if args.rule_child is not None:
        rule_child(args.rule_child, args.engine_root)
        return
    if args.keywords:
        keywords_main(args.engine_root, args.keywords, args.show)
        return
    if args.rules:
        rules_main(args.engine_root, args.timeout, args.show, args.only)
        return

    print(f"engine: {args.engine_root}")
    print("| case | what | bytes (S / 2S) | seconds (S / 2S) | MB/s (S / 2S) | time ratio |")
    print("|---|---|---|---|---|---|")
    for name, (what, base, _) in CASES.items():
        if args.only and name not in args.only:
            continue
        results = []
        for size in (int(base * args.scale), int(base * args.scale) * 2):
            results.append(run(name, size, args.engine_root, args.timeout))
            if results[-1] is None:
                break  # the double size would time out too
        cells = []
        for r in results:
            if r is None:
                cells.append((">" + f"{args.timeout:.0f}", "-", "-"))
            else:
                b, s = int(r["bytes"]), float(r["seconds"])  # type: ignore[arg-type]
                cells.append((f"{s:.3f}", f"{b / 1e6:.2f} MB", f"{b / s / 1e6:.1f}"))
        while len(cells) < 2:
            cells.append(("not run", "-", "-"))
        ratio = "-"
        if all(r is not None for r in results) and len(results) == 2:
            ratio = f"{float(results[1]['seconds']) / max(float(results[0]['seconds']), 1e-9):.1f}"  # type: ignore[index,arg-type]
        print(
            f"| {name} | {what} | {cells[0][1]} / {cells[1][1]} | {cells[0][0]} / {cells[1][0]} "
            f"| {cells[0][2]} / {cells[1][2]} | {ratio} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
