"""Many sessions active at once: lag p50/p99 with 100 sessions appending 10 lines/s each.

Standalone (not a pytest module). Design goal (shared/docs/design.md section 9): 100 sessions active
at once, 10 lines/s each, lag p99 under 2 s. What runs, each as its own process:

- ``tracemirrord`` at default settings into the embedded bucket (``file://``; only the bucket, HOME
  and XDG dirs are set);
- a writer that appends Claude-Code-shaped lines (300-1500 bytes) to ``--sessions`` session files,
  ``--rate`` lines/s each, spread evenly in time, and logs each line's id and append time;
- a reader that every ``--poll-ms`` stats the next expected part of every session (part keys are fixed
  by session and seq, ``layout.format_part_key``), reads the parts that appeared and logs when each
  line id first became readable.

The sessions are created (one line each) before the daemon starts, so start-up discovery is not in
the window; the window starts once every session's first part is readable. Lag is
``readable - appended`` (CLOCK_MONOTONIC, shared by all processes on Linux), including up to one poll
interval of the reader. At the end every session's copy is reassembled and compared with its source.

    .venv/bin/python benchmarks/bench_many.py [--sessions 100] [--rate 10] [--seconds 60] [--poll-ms 50]

Results print as Markdown tables and are saved to ``benchmarks/out/many-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_live import (  # noqa: E402
    HARNESS,
    PROJECT,
    LiveLines,
    append_line,
    default_env,
    read_jsonl,
    seen_ids,
    wait_until,
)
from daemon import Daemon, read_back  # noqa: E402
from sessions import make_session  # noqa: E402
from sysinfo import (  # noqa: E402
    busy_cores,
    code_version,
    cpu_seconds,
    cpu_ticks,
    machine,
    percentile,
    sleep_until,
    status_kib,
    table,
    wait_quiet,
)

from tracemirrord import layout  # noqa: E402
from tracemirrord.model import SessionKey  # noqa: E402

OUT_DIR = BENCH_DIR / "out"
GOAL_LAG_P99_S = 2.0


def session_ids(n: int, seed: int) -> list[str]:
    return [str(uuid.UUID(int=(seed * 1_000_003 + i) % (1 << 128), version=4)) for i in range(n)]


# ---------- the writer and reader processes ----------


def run_writer(spec: dict[str, Any]) -> None:
    """Append to every session at ``rate`` lines/s, staggered; log (session, id, appended_at, bytes)."""
    lines = LiveLines("bench-many", spec["seed"])
    fds = [os.open(p, os.O_WRONLY | os.O_APPEND) for p in spec["paths"]]
    n = len(fds)
    total = int(spec["seconds"] * spec["rate"]) * n
    interval = 1.0 / (spec["rate"] * n)
    start = spec["start_at"]
    log: list[tuple[int, str, float, int]] = []
    try:
        for i in range(total):
            line_id, line = lines.next()
            sleep_until(start + i * interval)
            log.append((i % n, line_id, append_line(fds[i % n], line), len(line)))
    finally:
        for fd in fds:
            os.close(fd)
        Path(spec["log"]).write_text("".join(json.dumps(row) + "\n" for row in log))


def run_reader(spec: dict[str, Any]) -> None:
    """Watch for each session's next part file; log when each line id first became readable."""
    root = Path(spec["bucket_dir"])
    keys = [SessionKey(HARNESS, sid) for sid in spec["session_ids"]]
    next_seq = [0] * len(keys)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    interval = spec["poll_ms"] / 1000
    with open(spec["log"], "a", buffering=1) as out:
        next_poll = time.monotonic()
        while not stopping:
            for i, key in enumerate(keys):
                while True:
                    path = root / layout.format_part_key(PROJECT, key, next_seq[i])
                    try:
                        body = path.read_bytes()
                    except FileNotFoundError:
                        break
                    seen = time.monotonic()
                    ids = [json.loads(line).get("uuid") for line in body.splitlines() if line.strip()]
                    out.write(json.dumps({"session": i, "seq": next_seq[i], "seen": seen, "ids": ids}) + "\n")
                    next_seq[i] += 1
            next_poll += interval
            now = time.monotonic()
            next_poll = max(next_poll, now)
            time.sleep(next_poll - now)


def spawn_role(role: str, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--role", role, "--spec", json.dumps(spec)])


# ---------- the run ----------


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = OUT_DIR / "many-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bucket_dir = work / "bucket"
    env = default_env(work, f"file://{bucket_dir}")
    home = Path(env["HOME"])
    ids = session_ids(args.sessions, args.seed)
    sessions = [make_session(home, HARNESS, sid) for sid in ids]
    warm = LiveLines("bench-many-warm", args.seed + 1)
    warm_ids = []
    for s in sessions:
        line_id, line = warm.next()
        warm_ids.append(line_id)
        s.path.write_bytes(line)

    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "code": code_version()}
    reader_log, writer_log = work / "reader.jsonl", work / "writer.jsonl"
    daemon = Daemon(env, work / "daemon.log").start()
    reader = writer = None
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        reader = spawn_role(
            "reader",
            {
                "bucket_dir": str(bucket_dir),
                "session_ids": ids,
                "poll_ms": args.poll_ms,
                "log": str(reader_log),
            },
        )
        started = time.monotonic()
        wait_until(lambda: set(warm_ids) <= set(seen_ids(reader_log)), 120, "every session's first part")
        result["startup"] = {"all_first_parts_s": time.monotonic() - started}
        time.sleep(2.0)  # let the first meta.json writes settle
        idle_before = wait_quiet()
        ticks0 = cpu_ticks()
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        reader_cpu0 = cpu_seconds(reader.pid)
        paths = [str(s.path) for s in sessions]
        writer = spawn_role(
            "writer",
            {
                "paths": paths,
                "rate": args.rate,
                "seconds": args.seconds,
                "seed": args.seed + 2,
                "start_at": t0 + 0.5,
                "log": str(writer_log),
            },
        )
        peak_rss = 0
        while writer.poll() is None:
            time.sleep(1.0)
            peak_rss = max(peak_rss, status_kib(pid, "VmRSS"))
        if writer.returncode != 0:
            raise RuntimeError(f"writer exited with {writer.returncode}")
        written = read_jsonl(writer_log)
        line_ids = [row[1] for row in written]
        t1 = wait_until(lambda: set(line_ids) <= set(seen_ids(reader_log)), 120, "the last lines")
        cpu1 = cpu_seconds(pid)
        machine_cores = busy_cores(ticks0, cpu_ticks(), t1 - t0)
        others_cpu_pct = {"reader": (cpu_seconds(reader.pid) - reader_cpu0) / (t1 - t0) * 100}
        rss = {"VmHWM_kib": status_kib(pid, "VmHWM"), "VmRSS_kib": status_kib(pid, "VmRSS")}
    finally:
        for proc in (writer, reader):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        if daemon.alive():
            try:
                daemon.stop(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill9()

    identical = 0
    parts = 0
    for s in sessions:
        copy = read_back(f"file://{bucket_dir}", SessionKey(HARNESS, s.session_id), PROJECT)
        parts += len(copy.parts)
        identical += b"".join(copy.generations.values()) == s.path.read_bytes()
    seen = seen_ids(reader_log)
    lags = sorted(seen[row[1]] - row[2] for row in written)
    source_bytes = sum(row[3] for row in written)
    window_s = t1 - t0
    metas = sum(1 for _ in bucket_dir.glob(f"{PROJECT}/sessions/{HARNESS}/*/meta.json"))
    result.update(
        window={
            "seconds": window_s,
            "lines": len(written),
            "source_bytes": source_bytes,
            "source_kb_per_s": source_bytes / window_s / 1000,
        },
        lag_s={
            "p50": percentile(lags, 50),
            "p95": percentile(lags, 95),
            "p99": percentile(lags, 99),
            "max": lags[-1],
            "over_goal": sum(1 for lag in lags if lag > GOAL_LAG_P99_S),
        },
        daemon={
            "cpu_pct_of_one_core": (cpu1 - cpu0) / window_s * 100,
            "peak_rss_sampled_kib": peak_rss,
            **rss,
        },
        other_processes_cpu_pct=others_cpu_pct,
        copy={"sessions_identical": identical, "sessions": len(sessions), "parts": parts, "meta_json": metas},
        goal_ok=percentile(lags, 99) < GOAL_LAG_P99_S,
    )
    result["machine"].update(busy_cores_before_window=idle_before, busy_cores_in_window=machine_cores)
    return result


def report(r: dict[str, Any]) -> str:
    m, w, lag, d = r["machine"], r["window"], r["lag_s"], r["daemon"]
    a = r["args"]
    return "\n".join(
        [
            f"machine: {m['nproc']} x {m['cpu_model']}, {m['ram_gib']} GiB RAM, Python {m['python']}, "
            f"{m['date_utc']}, tracemirror at {r['code']}",
            f"{a['sessions']} sessions x {a['rate']} lines/s into the embedded bucket; "
            f"window {w['seconds']:.1f} s, {w['lines']} lines, {w['source_kb_per_s']:.1f} KB/s; "
            "all cores busy in the window: "
            f"{m['busy_cores_in_window']:.2f} of {m['nproc']}",
            "start-up: every session's first part readable "
            f"{r['startup']['all_first_parts_s']:.2f} s after spawn",
            "",
            table(
                ["lag (append -> readable)", "p50", "p95", "p99", "max", "goal"],
                [
                    [
                        "seconds",
                        f"{lag['p50']:.3f}",
                        f"{lag['p95']:.3f}",
                        f"{lag['p99']:.3f}",
                        f"{lag['max']:.3f}",
                        f"p99 < {GOAL_LAG_P99_S} ({'met' if r['goal_ok'] else 'MISSED'})",
                    ]
                ],
            ),
            "",
            table(
                ["daemon", "value"],
                [
                    ["CPU in the window", f"{d['cpu_pct_of_one_core']:.1f}% of one core"],
                    ["peak RSS (VmHWM)", f"{d['VmHWM_kib'] / 1024:.1f} MiB"],
                    ["reader CPU", f"{r['other_processes_cpu_pct']['reader']:.1f}% of one core"],
                ],
            ),
            "",
            f"copy check: {r['copy']}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100, help="sessions at once (default 100)")
    parser.add_argument("--rate", type=float, default=10.0, help="lines/s per session (default 10)")
    parser.add_argument("--seconds", type=float, default=60.0, help="writer's duration (default 60)")
    parser.add_argument("--poll-ms", type=float, default=50.0, help="reader poll interval (default 50)")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--role", choices=("writer", "reader"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "writer":
        run_writer(json.loads(args.spec))
        return
    if args.role == "reader":
        run_reader(json.loads(args.spec))
        return
    result = run(args)
    print(report(result))
    OUT_DIR.mkdir(exist_ok=True)
    path = OUT_DIR / f"many-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nsaved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
