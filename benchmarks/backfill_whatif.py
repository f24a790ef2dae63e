"""Where the backfill's time goes: ``tracemirrord --once`` on the cached history under a few variants.

A diagnostic companion to ``bench_backfill.py`` (run that first: it builds the cached history). Each
variant runs ``--repeat`` times, interleaved with the others, on a quiet machine; the median wall time
is reported. Nothing in the daemon changes: variants are settings, or a shim that starts the same
daemon with ``os.fsync`` replaced by a no-op (to price the fsyncs of the embedded bucket).

    .venv/bin/python benchmarks/backfill_whatif.py [--mb 300] [--sessions 200] [--repeat 3]
        [--variants default,redact-off,no-fsync,...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backfill import OUT_DIR, ROOT, RUN_DIR, daemon_env, history, set_quiet_wait, timed_once
from sysinfo import machine, table

NO_FSYNC = (
    "-c",
    "import os, runpy, sys; os.fsync = lambda fd: None; sys.argv = ['tracemirrord', *sys.argv[1:]]; "
    "runpy.run_module('tracemirrord', run_name='__main__', alter_sys=True)",
)


def parts_in_flight_shim(parts: int) -> tuple[str, ...]:
    """The daemon with ``writer.PARTS_IN_FLIGHT`` (the bytes-in-flight budget, in parts) changed."""
    return (
        "-c",
        f"import runpy, sys; import tracemirrord.writer as w; w.PARTS_IN_FLIGHT = {parts}; "
        "sys.argv = ['tracemirrord', *sys.argv[1:]]; "
        "runpy.run_module('tracemirrord', run_name='__main__', alter_sys=True)",
    )


# name -> (extra environment, python arguments instead of "-m tracemirrord", empty HOME?)
VARIANTS: dict[str, tuple[dict[str, str], tuple[str, ...], bool]] = {
    "default": ({}, (), False),
    "redact-off": ({"TRACEMIRROR_REDACT": "false"}, (), False),
    "no-fsync": ({}, NO_FSYNC, False),
    "no-fsync+redact-off": ({"TRACEMIRROR_REDACT": "false"}, NO_FSYNC, False),
    "upload_concurrency=16": ({"TRACEMIRROR_UPLOAD_CONCURRENCY": "16"}, (), False),
    "upload_concurrency=1": ({"TRACEMIRROR_UPLOAD_CONCURRENCY": "1"}, (), False),
    "part_max_bytes=16MiB": ({"TRACEMIRROR_PART_MAX_BYTES": "16MiB"}, (), False),
    "part_max_bytes=1MiB": ({"TRACEMIRROR_PART_MAX_BYTES": "1MiB"}, (), False),
    # glibc's allocator: a fixed mmap threshold (big buffers go back to the system when freed,
    # instead of the dynamic threshold moving them into the heap), and fewer per-thread arenas
    "mmap_threshold=128KiB": ({"MALLOC_MMAP_THRESHOLD_": "131072"}, (), False),
    "mmap_threshold=1MiB": ({"MALLOC_MMAP_THRESHOLD_": str(2**20)}, (), False),
    "arena_max=1": ({"MALLOC_ARENA_MAX": "1"}, (), False),
    "arena_max=2": ({"MALLOC_ARENA_MAX": "2"}, (), False),
    "arena_max=2+mmap_threshold=1MiB": (
        {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(2**20)},
        (),
        False,
    ),
    # glibc's default number of arenas (8 per core): undoes writer.limit_malloc_arenas
    "arena_max=16": ({"MALLOC_ARENA_MAX": "16"}, (), False),
    "upload_concurrency=2": ({"TRACEMIRROR_UPLOAD_CONCURRENCY": "2"}, (), False),
    "parts_in_flight=1": ({}, parts_in_flight_shim(1), False),
    "parts_in_flight=4": ({}, parts_in_flight_shim(4), False),
    "parts_in_flight=4+upload_concurrency=16": (
        {"TRACEMIRROR_UPLOAD_CONCURRENCY": "16"},
        parts_in_flight_shim(4),
        False,
    ),
    "empty HOME": ({}, (), True),
}


def tree_shim(tree: str) -> tuple[str, ...]:
    """Python arguments that run the daemon from another copy of the code (``git archive`` of a
    commit), ahead of this checkout, for before/after runs interleaved in one invocation."""
    return (
        "-c",
        f"import runpy, sys; sys.path.insert(0, {tree!r}); sys.argv = ['tracemirrord', *sys.argv[1:]]; "
        "runpy.run_module('tracemirrord', run_name='__main__', alter_sys=True)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=300.0)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma list of: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--quiet-wait", type=float, default=180.0, help="s to wait for a quiet machine")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a variant NAME running the daemon code under PATH (e.g. a git archive of the commit before)",
    )
    args = parser.parse_args()
    set_quiet_wait(args.quiet_wait)
    for spec in args.tree:
        name, _, tree = spec.partition("=")
        VARIANTS[name] = ({}, tree_shim(str(Path(tree).resolve())), False)
    args.regenerate = False
    home, specs = history(args)
    source_bytes = sum(s.bytes for s in specs)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(unknown)}")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for attempt in range(args.repeat):
        for name in names:
            extra, python_args, empty = VARIANTS[name]
            shutil.rmtree(RUN_DIR, ignore_errors=True)
            RUN_DIR.mkdir(parents=True)
            run_home = RUN_DIR / "empty-home" if empty else home
            run_home.mkdir(exist_ok=True)
            env = {**daemon_env(run_home, RUN_DIR, True), **extra}
            timing = timed_once(env, OUT_DIR / "whatif.log", python_args=python_args)
            runs[name].append(timing)
            print(f"{name} #{attempt + 1}: {timing['wall_s']:.2f} s (exit {timing['exit_code']})", flush=True)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    rows = []
    medians: dict[str, dict[str, Any]] = {}
    for name in names:
        ordered = sorted(runs[name], key=lambda t: t["wall_s"])
        t = medians[name] = ordered[len(ordered) // 2]
        mb_s = "-" if VARIANTS[name][2] else f"{source_bytes / 1e6 / t['wall_s']:.1f}"
        rows.append(
            [
                name,
                f"{t['wall_s']:.2f} ({', '.join(format(r['wall_s'], '.2f') for r in runs[name])})",
                mb_s,
                f"{t.get('user_s', float('nan')):.2f} / {t.get('sys_s', float('nan')):.2f}",
                f"{t.get('max_rss_kib', t['polled_peak_rss_kib']) / 1024:.0f}",
                f"{t.get('other_load_cores', float('nan')):.2f}",
            ]
        )
    m = machine()
    print(f"\nmachine: {m['nproc']} x {m['cpu_model']}, Python {m['python']}, {m['date_utc']}")
    print(f"history: {source_bytes / 1e6:.1f} MB in {len(specs)} sessions\n")
    print(
        table(
            [
                "variant",
                "wall s, median (all)",
                "MB/s",
                "CPU user / sys s",
                "peak RSS MiB",
                "other load, cores",
            ],
            rows,
        )
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = OUT_DIR / f"whatif-{stamp}.json"
    path.write_text(json.dumps({"machine": m, "source_bytes": source_bytes, "runs": runs}, indent=2))
    print(f"\nsaved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
