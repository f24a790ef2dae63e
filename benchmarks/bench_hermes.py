"""hermes: lag, CPU and memory with 5,000 rows/s across 50 sessions of one state.db, then idle CPU.

Standalone (not a pytest module). What runs, each as its own process:

- ``tracemirrord`` at default settings, hermes only, into the embedded bucket (``file://``);
- a writer that inserts hermes-shaped message rows (tests/hermes_writer.py) round-robin into
  ``--sessions`` sessions of one WAL ``state.db``, ``--rate`` rows/s in total, committing every
  ``--batch`` rows (hermes commits per message; batching keeps the Python writer on schedule), and
  logs each row id with its commit time;
- a reader that every ``--poll-ms`` looks for each session's next part (``layout.format_part_key``)
  and logs when each row id first became readable.

Lag is ``readable - committed`` (CLOCK_MONOTONIC, shared by all processes on Linux), including up
to one poll interval of the reader. Goal: lag p99 <= 1.5 s. Then the writer stops, and the daemon's
CPU is measured over ``--idle-seconds`` with the database idle (goal: under 0.1% of one core).

    .venv/bin/python benchmarks/bench_hermes.py [--sessions 50] [--rate 5000] [--seconds 30]

Results print as Markdown tables and are saved to ``benchmarks/out/hermes-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_live import PROJECT, default_env, read_jsonl, seen_ids, wait_until  # noqa: E402
from daemon import Daemon, read_back  # noqa: E402
from hermes_writer import add_session, connect, create_db, insert, message  # noqa: E402
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
HARNESS = "hermes"
GOAL_LAG_P99_S = 1.5
GOAL_IDLE_CPU_PCT = 0.1


def session_ids(n: int) -> list[str]:
    return [f"20261127_0900{i // 60:02d}_{i:06x}" for i in range(n)]


# ---------- the writer and reader processes ----------


def run_writer(spec: dict[str, Any]) -> None:
    """Insert ``rate`` rows/s round-robin over the sessions, a commit every ``batch`` rows; log each."""
    conn = connect(Path(spec["db"]))
    rng = random.Random(spec["seed"])
    sessions = spec["sessions"]
    counts = dict.fromkeys(sessions, 1)
    total = int(spec["seconds"] * spec["rate"])
    batch = spec["batch"]
    interval = batch / spec["rate"]
    log: list[tuple[int, str, float]] = []
    k = 0
    for n in range(0, total, batch):
        sleep_until(spec["start_at"] + (n // batch) * interval)
        conn.execute("BEGIN IMMEDIATE")
        ids = []
        for _ in range(min(batch, total - n)):
            sid = sessions[k % len(sessions)]
            ids.append((insert(conn, message(sid, counts[sid], rng))["id"], sid))
            counts[sid] += 1
            k += 1
        conn.execute("COMMIT")
        committed = time.monotonic()
        log.extend((rowid, sid, committed) for rowid, sid in ids)
    conn.close()
    Path(spec["log"]).write_text("".join(json.dumps(row) + "\n" for row in log))


def run_reader(spec: dict[str, Any]) -> None:
    """Watch for each session's next part; log when each row id first became readable."""
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
                    try:
                        body = (root / layout.format_part_key(PROJECT, key, next_seq[i])).read_bytes()
                    except FileNotFoundError:
                        break
                    seen = time.monotonic()
                    ids = [json.loads(line)["id"] for line in body.splitlines() if line.strip()]
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
    work = OUT_DIR / "hermes-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bucket_dir = work / "bucket"
    env = default_env(work, f"file://{bucket_dir}")
    env.update(HERMES_HOME=str(work / "home" / ".hermes"), TRACEMIRROR_HARNESSES=HARNESS)
    db = work / "home" / ".hermes" / "state.db"
    create_db(db)
    ids = session_ids(args.sessions)
    conn = connect(db)
    rng = random.Random(args.seed)
    warm_ids = []
    for sid in ids:
        add_session(conn, sid)
        warm_ids.append(insert(conn, message(sid, 0, rng))["id"])
    writer_conn_kept = conn  # the agent keeps its connection open, as hermes does

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
        time.sleep(2.0)
        idle_before = wait_quiet()
        ticks0 = cpu_ticks()
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        writer = spawn_role(
            "writer",
            {
                "db": str(db),
                "sessions": ids,
                "rate": args.rate,
                "batch": args.batch,
                "seconds": args.seconds,
                "seed": args.seed + 1,
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
        row_ids = [row[0] for row in written]
        t1 = wait_until(lambda: set(row_ids) <= set(seen_ids(reader_log)), 120, "the last rows")
        cpu1 = cpu_seconds(pid)
        machine_cores = busy_cores(ticks0, cpu_ticks(), t1 - t0)
        rss = {"VmHWM_kib": status_kib(pid, "VmHWM"), "VmRSS_kib": status_kib(pid, "VmRSS")}
        reader.terminate()
        reader.wait(10)
        time.sleep(5.0)  # meta.json and checkpoint writes of the burst settle
        idle_machine0 = wait_quiet()
        icpu0, i0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle_seconds)
        idle_cpu_pct = (cpu_seconds(pid) - icpu0) / (time.monotonic() - i0) * 100
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
        writer_conn_kept.close()

    identical = parts = 0
    by_session: dict[str, list[int]] = {sid: [wid] for sid, wid in zip(ids, warm_ids, strict=True)}
    for rowid, sid, _ in written:
        by_session[sid].append(rowid)
    for sid in ids:
        copy = read_back(f"file://{bucket_dir}", SessionKey(HARNESS, sid), PROJECT)
        parts += len(copy.parts)
        got = [json.loads(line)["id"] for data in copy.generations.values() for line in data.splitlines()]
        identical += got == by_session[sid]
    seen = seen_ids(reader_log)
    lags = sorted(seen[row[0]] - row[2] for row in written)
    window_s = t1 - t0
    result.update(
        window={"seconds": window_s, "rows": len(written), "rows_per_s": len(written) / window_s},
        lag_s={
            "p50": percentile(lags, 50),
            "p95": percentile(lags, 95),
            "p99": percentile(lags, 99),
            "max": lags[-1],
        },
        daemon={
            "cpu_pct_of_one_core": (cpu1 - cpu0) / window_s * 100,
            "peak_rss_sampled_kib": peak_rss,
            "idle_cpu_pct_of_one_core": idle_cpu_pct,
            **rss,
        },
        copy={"sessions_identical": identical, "sessions": len(ids), "parts": parts},
        goal_lag_ok=percentile(lags, 99) <= GOAL_LAG_P99_S,
    )
    result["machine"].update(
        busy_cores_before_window=idle_before,
        busy_cores_in_window=machine_cores,
        busy_cores_before_idle=idle_machine0,
    )
    return result


def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    """A database idle for two hours (every row that old), fully mirrored: the daemon's CPU."""
    work = OUT_DIR / "hermes-idle-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bucket_dir = work / "bucket"
    env = default_env(work, f"file://{bucket_dir}")
    env.update(HERMES_HOME=str(work / "home" / ".hermes"), TRACEMIRROR_HARNESSES=HARNESS)
    db = work / "home" / ".hermes" / "state.db"
    create_db(db)
    ids = session_ids(args.sessions)
    conn = connect(db)
    rng = random.Random(args.seed + 7)
    last: dict[str, int] = {}
    for sid in ids:
        add_session(conn, sid, started_at=time.time() - 7300)
        for i in range(20):
            values = message(sid, i, rng)
            values["timestamp"] = time.time() - 7200 + i
            last[sid] = insert(conn, values)["id"]
    for path in (db, db.with_name(db.name + "-wal")):  # last written two hours ago, like its rows
        if path.exists():
            os.utime(path, (time.time() - 7200, time.time() - 7200))
    daemon = Daemon(env, work / "daemon.log").start()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid

        def mirrored() -> bool:
            for sid in ids:
                prefix = bucket_dir / PROJECT / "sessions" / HARNESS / sid
                parts = sorted(prefix.glob("part-*.jsonl")) if prefix.exists() else []
                if not parts or json.loads(parts[-1].read_bytes().splitlines()[-1])["id"] != last[sid]:
                    return False
            return True

        wait_until(mirrored, 120, "the idle database mirrored", interval_s=0.5)
        time.sleep(5.0)
        before = wait_quiet()
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle_seconds)
        pct = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
    finally:
        if daemon.alive():
            daemon.stop(timeout=30)
        conn.close()
    return {"cpu_pct_of_one_core": pct, "busy_cores_before": before, "ok": pct < GOAL_IDLE_CPU_PCT}


def report(r: dict[str, Any]) -> str:
    m, w, lag, d, a = r["machine"], r["window"], r["lag_s"], r["daemon"], r["args"]
    return "\n".join(
        [
            f"machine: {m['nproc']} x {m['cpu_model']}, {m['ram_gib']} GiB RAM, Python {m['python']}, "
            f"{m['date_utc']}, tracemirror at {r['code']}",
            f"{a['sessions']} hermes sessions, {a['rate']:.0f} rows/s in total "
            f"(a commit every {a['batch']} rows) "
            f"into the embedded bucket; window {w['seconds']:.1f} s, {w['rows']} rows; all cores busy in the "
            f"window: {m['busy_cores_in_window']:.2f} of {m['nproc']}",
            "",
            table(
                ["lag (commit -> readable)", "p50", "p95", "p99", "max", "goal"],
                [
                    [
                        "seconds",
                        f"{lag['p50']:.3f}",
                        f"{lag['p95']:.3f}",
                        f"{lag['p99']:.3f}",
                        f"{lag['max']:.3f}",
                        f"p99 <= {GOAL_LAG_P99_S} ({'met' if r['goal_lag_ok'] else 'MISSED'})",
                    ]
                ],
            ),
            "",
            table(
                ["daemon", "value"],
                [
                    ["CPU in the window", f"{d['cpu_pct_of_one_core']:.1f}% of one core"],
                    ["peak RSS (VmHWM)", f"{d['VmHWM_kib'] / 1024:.1f} MiB"],
                    [
                        f"CPU in the {a['idle_seconds']:.0f} s after the burst (sessions active "
                        "< 5 min ago: the scheduler probes each every 0.25 s)",
                        f"{d['idle_cpu_pct_of_one_core']:.3f}% of one core",
                    ],
                    [
                        f"CPU with an idle database ({a['sessions']} sessions idle 2 h, mirrored; "
                        f"{a['idle_seconds']:.0f} s)",
                        f"{r['idle']['cpu_pct_of_one_core']:.3f}% of one core (goal < {GOAL_IDLE_CPU_PCT}%: "
                        f"{'met' if r['idle']['ok'] else 'MISSED'})",
                    ],
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
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--rate", type=float, default=5000.0, help="rows/s in total (default 5000)")
    parser.add_argument("--batch", type=int, default=10, help="rows per commit (default 10)")
    parser.add_argument("--seconds", type=float, default=30.0, help="writer's duration (default 30)")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="idle measurement (default 30)")
    parser.add_argument("--poll-ms", type=float, default=50.0, help="reader poll interval (default 50)")
    parser.add_argument("--seed", type=int, default=20261127)
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
    result["idle"] = run_idle(args)
    print(report(result))
    OUT_DIR.mkdir(exist_ok=True)
    path = OUT_DIR / f"hermes-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nsaved {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
