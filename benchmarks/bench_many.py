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
        [--store local|s3]

``--store s3``: the daemon mirrors into moto's S3 server (its own process, tests/s3server.py) through
the counting proxy in "pass" mode (in this process). There is no reader process then (a hundred
sessions' next part polled every 50 ms would be thousands of requests a second to moto, on the same
cores): a line is readable when moto answered the PUT of the part holding it, which the proxy sees
(the first byte of the answer, per connection, in order). The parts are read back afterwards to
know which lines each holds.

Results print as Markdown tables and are saved to ``benchmarks/out/many-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import collections
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
from s3server import BytesCountingProxy, MotoServer, s3_subprocess_env  # noqa: E402
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


class PartTimingProxy(BytesCountingProxy):
    """The counting proxy, noting when the S3 server began to answer each PUT of a part: from then
    the part is readable in the bucket. Answers come back on a connection in the order of its
    requests (no pipelining), so each connection keeps a queue of its requests' targets."""

    def __init__(self, upstream_url: str) -> None:
        super().__init__(upstream_url, mode="pass")
        self._queues: dict[object, collections.deque[tuple[str, str]]] = {}
        self.landed: dict[str, float] = {}  # request path (no query) -> monotonic time of its 2xx

    def _upward(self, data: bytes, parser: Any, client: Any, upstream: Any) -> bool:
        if not getattr(parser, "_timed", False):
            feed, queue = parser.feed, self._queues.setdefault(client, collections.deque())

            def timed_feed(chunk: bytes) -> list[Any]:
                records = feed(chunk)
                queue.extend((r.method, r.target.split("?")[0]) for r in records)
                return records

            parser.feed, parser._timed = timed_feed, True
        return super()._upward(data, parser, client, upstream)

    def _downward(self, data: bytes, client: Any) -> bool:
        if data.startswith(b"HTTP/1."):
            queue = self._queues.get(client)
            if queue:
                method, path = queue.popleft()
                if method == "PUT" and "/part-" in path and data[9:10] == b"2":
                    self.landed[path] = time.monotonic()
        return super()._downward(data, client)


def spawn_role(role: str, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--role", role, "--spec", json.dumps(spec)])


def landed_ids(
    bucket: str, ids: list[str], landed: dict[str, float], s3_env: dict[str, str] | None
) -> dict[str, float]:
    """Line id -> when the PUT of the part holding it was answered (the parts read back)."""
    out: dict[str, float] = {}
    for session_id in ids:
        key = SessionKey(HARNESS, session_id)
        copy = read_back(bucket, key, PROJECT, s3_env)
        data = copy.generations.get(0, b"")
        for part in copy.parts:
            at = landed.get(f"/{bucket[5:]}/{layout.format_part_key(PROJECT, key, part.seq)}")
            if at is None:
                continue  # landed before the proxy's counters were reset (the warm-up)
            for line in data[part.start : part.end].splitlines():
                if line.strip():
                    out.setdefault(json.loads(line).get("uuid"), at)
    return out


def moto_pid(moto: MotoServer) -> int:
    """The moto server's pid (MotoServer keeps its Popen private)."""
    process = getattr(moto, "_process", None)
    return int(process.pid) if process is not None else os.getpid()


# ---------- the run ----------


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = OUT_DIR / "many-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if args.store == "local":
        return measure(args, work, f"file://{work / 'bucket'}", None, None)
    with MotoServer(work / "moto.log") as moto, PartTimingProxy(moto.endpoint_url) as proxy:
        return measure(args, work, f"s3://{moto.create_bucket()}", moto, proxy)


def measure(
    args: argparse.Namespace,
    work: Path,
    bucket: str,
    moto: MotoServer | None,
    proxy: PartTimingProxy | None,
) -> dict[str, Any]:
    """One run into ``bucket``: the embedded one (a reader process polls its files) or moto's
    (``proxy`` notes when each part landed)."""
    bucket_dir = work / "bucket"
    env = default_env(work, bucket)
    if args.upload_concurrency:
        env["TRACEMIRROR_UPLOAD_CONCURRENCY"] = str(args.upload_concurrency)
    s3_env = s3_subprocess_env(moto.endpoint_url) if moto is not None else None
    if proxy is not None:
        env.update(s3_subprocess_env(proxy.endpoint_url))
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
    first_parts = [f"/{bucket[5:]}/{layout.format_part_key(PROJECT, SessionKey(HARNESS, i), 0)}" for i in ids]

    def seen() -> dict[str, float]:
        """Line id -> when it became readable (S3: read back to map parts to lines)."""
        if proxy is None:
            return seen_ids(reader_log)
        return landed_ids(bucket, ids, proxy.landed, s3_env)

    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        if proxy is None:
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
        if proxy is None:
            wait_until(lambda: set(warm_ids) <= set(seen_ids(reader_log)), 120, "every session's first part")
        else:
            wait_until(lambda: all(p in proxy.landed for p in first_parts), 120, "every session's first part")
        result["startup"] = {"all_first_parts_s": time.monotonic() - started}
        time.sleep(2.0)  # let the first meta.json writes settle
        idle_before = wait_quiet(max_wait_s=args.quiet_wait)
        ticks0 = cpu_ticks()
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        others = {"reader": reader.pid} if reader is not None else {}
        if moto is not None:
            others = {"moto": moto_pid(moto), "benchmark (proxy)": os.getpid()}
        others0 = {name: cpu_seconds(p) for name, p in others.items()}
        if proxy is not None:
            proxy.reset_counters()
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
        if proxy is None:
            t1 = wait_until(lambda: set(line_ids) <= set(seen_ids(reader_log)), 120, "the last lines")
        else:  # wait for the parts to stop coming (reading the bucket back each time costs too much)
            count = -1
            while count != len(proxy.landed):
                count = len(proxy.landed)
                time.sleep(3.0)  # more than the flush interval: a part still to come has come
            t1 = max(proxy.landed.values())
        cpu1 = cpu_seconds(pid)
        machine_cores = busy_cores(ticks0, cpu_ticks(), t1 - t0)
        others_cpu_pct = {
            name: (cpu_seconds(p) - others0[name]) / (t1 - t0) * 100 for name, p in others.items()
        }
        rss = {"VmHWM_kib": status_kib(pid, "VmHWM"), "VmRSS_kib": status_kib(pid, "VmRSS")}
        wire = {"requests": proxy.requests, "bytes_up": proxy.bytes_up} if proxy is not None else {}
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
        copy = read_back(bucket, SessionKey(HARNESS, s.session_id), PROJECT, s3_env)
        parts += len(copy.parts)
        identical += b"".join(copy.generations.values()) == s.path.read_bytes()
    seen_at = seen()
    missing = [row[1] for row in written if row[1] not in seen_at]
    if missing:
        raise RuntimeError(f"{len(missing)} lines never became readable, e.g. {missing[:3]}")
    lags = sorted(seen_at[row[1]] - row[2] for row in written)
    source_bytes = sum(row[3] for row in written)
    window_s = t1 - t0
    if moto is None:
        metas = sum(1 for _ in bucket_dir.glob(f"{PROJECT}/sessions/{HARNESS}/*/meta.json"))
    else:
        pages = moto.client().get_paginator("list_objects_v2")
        listed = pages.paginate(Bucket=bucket[5:], Prefix=f"{PROJECT}/sessions/")
        metas = sum(1 for page in listed for o in page.get("Contents", []) if o["Key"].endswith("/meta.json"))
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
        store={"kind": args.store, **wire},
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
            f"{a['sessions']} sessions x {a['rate']} lines/s into "
            + ("the embedded bucket; " if a.get("store", "local") == "local" else "moto's S3 server; ")
            + f"window {w['seconds']:.1f} s, {w['lines']} lines, {w['source_kb_per_s']:.1f} KB/s; "
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
                    *[
                        [f"{name} CPU", f"{pct:.1f}% of one core"]
                        for name, pct in r["other_processes_cpu_pct"].items()
                    ],
                    *[[f"proxy: {k}", str(v)] for k, v in r.get("store", {}).items() if k != "kind"],
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
    parser.add_argument(
        "--store", choices=("local", "s3"), default="local", help="the embedded bucket, or moto's S3 server"
    )
    parser.add_argument(
        "--upload-concurrency", type=int, default=0, help="TRACEMIRROR_UPLOAD_CONCURRENCY (default: unset)"
    )
    parser.add_argument("--quiet-wait", type=float, default=180.0, help="s to wait for a quiet machine first")
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
