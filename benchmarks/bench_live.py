"""Live mirroring of one active session into S3: lag, bytes on the wire, CPU and memory of the daemon.

Standalone (not a pytest module). What runs, each as its own process:

- moto's S3 server on loopback (tests/s3server.py ``MotoServer``);
- ``tracemirrord`` at default settings (only the bucket, HOME and XDG dirs are set), talking to moto
  through ``BytesCountingProxy`` (in this process), so every byte it sends or receives is counted;
- a writer that appends Claude-Code-shaped lines (300-1500 bytes, a few KB/s) to one session at
  ``--rate`` lines/s for ``--seconds``, each carrying a unique ``uuid`` and logging its append time;
- a reader that polls the bucket directly at moto (not through the proxy) every ``--poll-ms``,
  lists the session's new parts, fetches them and logs when each line id first became readable.

Start-up (daemon start to first heartbeat, then session discovery and the first lines) is measured
apart; the window starts once warm-up lines are in the bucket, with the proxy counters reset, and ends
when the last line written is readable. Lag is ``readable - appended`` (CLOCK_MONOTONIC, shared by all
processes on Linux); the readable time is when the listing that first showed the line's part came
back, so it includes up to one poll interval of the reader.

    .venv/bin/python benchmarks/bench_live.py [--seconds 120] [--rate 10] [--poll-ms 50]

Results print as Markdown tables and are saved to ``benchmarks/out/live-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from corpus import Pools, SessionWriter  # noqa: E402
from daemon import Daemon, read_back  # noqa: E402
from s3server import BytesCountingProxy, MotoServer, RequestRecord, s3_subprocess_env, sync_s3_client  # noqa: E402
from sessions import make_session, record  # noqa: E402
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
PROJECT = "default"
HARNESS = "claude-code"
WARMUP_LINES = 5
GOAL_LAG_P99_S = 1.5
GOAL_BYTES_PER_SOURCE_BYTE = 1.2


# ---------- the line generator shared by the writer and the warm-up ----------


class LiveLines:
    """The lines one session appends, each with a unique id that the reader finds in the bucket.

    ``realistic``: Claude Code lines of 300-1500 bytes (mode about 700) from ``corpus.py``, the id is
    a fresh ``uuid``. ``tests``: ``tests/sessions.py`` ``record()`` lines (about 300-700 bytes), the
    id is their ``uuid`` field ``u-<index>``; ``first`` keeps the warm-up's and the writer's apart.
    """

    def __init__(self, session_id: str, seed: int, shape: str = "realistic", first: int = 0) -> None:
        self.rng = random.Random(seed)
        self.session_id = session_id
        self.shape = shape
        self.index = first
        self.writer = SessionWriter(HARNESS, session_id, self.rng, Pools.build(self.rng, image_bytes=4096))

    def next(self) -> tuple[str, bytes]:
        self.index += 1
        if self.shape == "tests":
            return f"u-{self.index}", record(HARNESS, self.session_id, self.index, self.rng)
        target = int(self.rng.triangular(300, 1500, 700))
        line_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        for _ in range(20):  # some shapes (a tool_use) have a size of their own: draw again if out of range
            line = self.writer.claude_line(max(20, target - 430), uid=line_id)
            if 300 <= len(line) <= 1500:
                break
        return line_id, line


def default_env(work: Path, bucket: str) -> dict[str, str]:
    """The daemon's environment: its own HOME and XDG dirs, the bucket, JSON logs; nothing else set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACEMIRROR_", "AWS_", "XDG_"))}
    for name in ("CLAUDE_CONFIG_DIR", "CODEX_HOME", "PI_CODING_AGENT_DIR"):
        env.pop(name, None)
    (work / "home").mkdir(exist_ok=True)
    env.update(
        HOME=str(work / "home"),
        XDG_DATA_HOME=str(work / "data"),
        XDG_STATE_HOME=str(work / "state"),
        XDG_CONFIG_HOME=str(work / "config"),
        TRACEMIRROR_BUCKET=bucket,
        TRACEMIRROR_LOG_FORMAT="json",
    )
    return env


def append_line(fd: int, line: bytes) -> float:
    """Append one whole line in one write, as agents do; returns the monotonic time it was written."""
    written = os.write(fd, line)
    assert written == len(line)
    return time.monotonic()


# ---------- the writer and reader processes ----------


def run_writer(spec: dict[str, Any]) -> None:
    """Append ``rate`` lines/s for ``seconds`` to ``path``; log (id, appended_at, bytes) per line."""
    lines = LiveLines(spec["session_id"], spec["seed"], spec["shape"], first=1_000_000)
    fd = os.open(spec["path"], os.O_WRONLY | os.O_APPEND)
    log: list[tuple[str, float, int]] = []
    start, interval = spec["start_at"], 1.0 / spec["rate"]
    try:
        for i in range(int(spec["seconds"] * spec["rate"])):
            line_id, line = lines.next()
            sleep_until(start + i * interval)
            log.append((line_id, append_line(fd, line), len(line)))
    finally:
        os.close(fd)
        Path(spec["log"]).write_text("".join(json.dumps(row) + "\n" for row in log))


def run_reader(spec: dict[str, Any]) -> None:
    """Poll the session's parts at the S3 server; log when each line id first became readable."""
    client = sync_s3_client(spec["endpoint_url"])
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    interval = spec["poll_ms"] / 1000
    last_key = ""
    with open(spec["log"], "a", buffering=1) as out:
        next_poll = time.monotonic()
        while not stopping:
            params: dict[str, Any] = {"Bucket": spec["bucket"], "Prefix": spec["prefix"]}
            if last_key:
                params["StartAfter"] = last_key
            listed_at_start = time.monotonic()
            keys = [item["Key"] for item in client.list_objects_v2(**params).get("Contents", [])]
            listed_at = time.monotonic()
            for key in keys:
                body = client.get_object(Bucket=spec["bucket"], Key=key)["Body"].read()
                fetched_at = time.monotonic()
                ids = [json.loads(line).get("uuid") for line in body.splitlines() if line.strip()]
                row = {
                    "part": key,
                    "list_start": listed_at_start,
                    "seen": listed_at,
                    "fetched": fetched_at,
                    "bytes": len(body),
                    "ids": ids,
                }
                out.write(json.dumps(row) + "\n")
                last_key = key
            next_poll += interval
            now = time.monotonic()
            if next_poll < now:
                next_poll = now
            time.sleep(next_poll - now)


# ---------- measuring ----------


@dataclass
class Sample:
    """The counters at one moment of the window."""

    t: float
    bytes_up: int
    bytes_down: int
    requests: int
    cpu_s: float


def classify(record: RequestRecord) -> str:
    """Which kind of request this is, from its method and target."""
    path, _, query = record.target.partition("?")
    if record.method == "PUT":
        if "/part-" in path:
            return "PUT part"
        if path.endswith("/meta.json"):
            return "PUT meta.json"
        if "/agents/" in path:
            return "PUT heartbeat"
        return "PUT other"
    if record.method == "GET" and ("list-type=2" in query or "prefix=" in query):
        return "LIST"
    return record.method + (" meta.json" if path.endswith("/meta.json") else "")


def header_sizes(head: bytes) -> list[tuple[str, int]]:
    """Bytes per header line of a request head (request line first), largest first."""
    lines = head.decode("latin-1").split("\r\n")
    sizes = [("(request line)", len(lines[0]) + 2)]
    sizes += [(line.split(":", 1)[0], len(line) + 2) for line in lines[1:] if line]
    sizes.append(("(blank line)", 2))
    return sorted(sizes, key=lambda item: -item[1])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def seen_ids(reader_log: Path) -> dict[str, float]:
    """Line id -> when it first became readable, from the reader's log."""
    seen: dict[str, float] = {}
    for row in read_jsonl(reader_log):
        for line_id in row["ids"]:
            seen.setdefault(line_id, row["seen"])
    return seen


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> float:
    """Poll ``predicate`` until true; returns the monotonic time it became true (RuntimeError on timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(interval_s)
    raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def moto_pid(moto: MotoServer) -> int:
    """The moto server's pid (MotoServer keeps its Popen private)."""
    process = getattr(moto, "_process", None)
    return int(process.pid) if process is not None else os.getpid()


def spawn_role(role: str, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--role", role, "--spec", json.dumps(spec)])


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = OUT_DIR / "live-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "code": code_version()}

    with MotoServer(work / "moto.log") as moto, BytesCountingProxy(moto.endpoint_url) as proxy:
        bucket = moto.create_bucket()
        s3 = moto.client()
        env = default_env(work, f"s3://{bucket}")
        env.update(s3_subprocess_env(proxy.endpoint_url))
        home = Path(env["HOME"])

        # ---- start-up: spawn to first heartbeat ----
        spawned = time.monotonic()
        daemon = Daemon(env, work / "daemon.log").start()
        reader: subprocess.Popen[bytes] | None = None
        writer: subprocess.Popen[bytes] | None = None
        try:
            assert daemon.proc is not None
            pid = daemon.proc.pid
            heartbeat_at = wait_until(
                lambda: s3.list_objects_v2(Bucket=bucket, Prefix=f"{PROJECT}/agents/").get("KeyCount", 0) > 0,
                60,
                "the daemon's first heartbeat",
            )
            startup = {
                "to_first_heartbeat_s": heartbeat_at - spawned,
                "cpu_s": cpu_seconds(pid),
                "rss_kib": status_kib(pid, "VmRSS"),
                "bytes_up": proxy.bytes_up,
                "requests": proxy.requests,
            }

            # ---- discovery and warm-up: a new session file, a few lines, all readable ----
            session_id = str(uuid.UUID(int=random.Random(args.seed).getrandbits(128), version=4))
            session = make_session(home, HARNESS, session_id)
            key = SessionKey(HARNESS, session_id)
            reader_log = work / "reader.jsonl"
            reader = spawn_role(
                "reader",
                {
                    "endpoint_url": moto.endpoint_url,
                    "bucket": bucket,
                    "prefix": layout.session_prefix(PROJECT, key) + "part-",
                    "poll_ms": args.poll_ms,
                    "log": str(reader_log),
                },
            )
            warm = LiveLines(session_id, args.seed + 1, args.lines)
            fd = os.open(session.path, os.O_WRONLY | os.O_APPEND)
            warm_appended: dict[str, float] = {}
            warm_bytes = 0
            try:
                for _ in range(WARMUP_LINES):
                    line_id, line = warm.next()
                    warm_appended[line_id] = append_line(fd, line)
                    warm_bytes += len(line)
                    time.sleep(1 / args.rate)
            finally:
                os.close(fd)
            wait_until(lambda: set(warm_appended) <= set(seen_ids(reader_log)), 60, "the warm-up lines")
            seen = seen_ids(reader_log)
            first_id = next(iter(warm_appended))
            startup["new_session_first_line_lag_s"] = seen[first_id] - warm_appended[first_id]
            startup["bytes_up_incl_warmup"] = proxy.bytes_up
            startup["requests_incl_warmup"] = proxy.requests
            time.sleep(1.0)  # let the warm-up's flush (and its meta.json) finish before the window

            # ---- the window ----
            writer_log = work / "writer.jsonl"
            idle_before = wait_quiet()
            proxy.reset_counters()
            ticks0 = cpu_ticks()
            others = {"moto": moto_pid(moto), "reader": reader.pid, "benchmark (proxy)": os.getpid()}
            others0 = {name: cpu_seconds(p) for name, p in others.items()}
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            samples = [Sample(0.0, 0, 0, 0, 0.0)]
            writer = spawn_role(
                "writer",
                {
                    "path": str(session.path),
                    "session_id": session_id,
                    "rate": args.rate,
                    "seconds": args.seconds,
                    "seed": args.seed + 2,
                    "shape": args.lines,
                    "start_at": t0 + 0.5,
                    "log": str(writer_log),
                },
            )
            while writer.poll() is None:
                time.sleep(1.0)
                samples.append(
                    Sample(
                        time.monotonic() - t0,
                        proxy.bytes_up,
                        proxy.bytes_down,
                        proxy.requests,
                        cpu_seconds(pid) - cpu0,
                    )
                )
            if writer.returncode != 0:
                raise RuntimeError(f"writer exited with {writer.returncode}")
            written = read_jsonl(writer_log)
            ids = [row[0] for row in written]
            t1 = wait_until(lambda: set(ids) <= set(seen_ids(reader_log)), 60, "the last lines")
            cpu1 = cpu_seconds(pid)
            machine_cores = busy_cores(ticks0, cpu_ticks(), t1 - t0)
            others_pct = {
                name: (cpu_seconds(p) - others0[name]) / (t1 - t0) * 100 for name, p in others.items()
            }
            bytes_up, bytes_down, log = proxy.bytes_up, proxy.bytes_down, proxy.request_log
            samples.append(Sample(t1 - t0, bytes_up, bytes_down, len(log), cpu1 - cpu0))
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

        # ---- check the copy: parts in order, bytes as written (no secrets were planted) ----
        copy = read_back(f"s3://{bucket}", key, PROJECT, s3_subprocess_env(moto.endpoint_url))
        source = session.path.read_bytes()
        mirrored = b"".join(copy.generations.values())
        result["copy"] = {
            "identical": mirrored == source,
            "source_bytes": len(source),
            "mirrored_bytes": len(mirrored),
            "parts": len(copy.parts),
            "generations": len(copy.generations),
        }
        meta_sizes = [r.body_bytes for r in log if classify(r) == "PUT meta.json"]

    seen = seen_ids(reader_log)
    lags = sorted(seen[row[0]] - row[1] for row in written)
    source_bytes = sum(row[2] for row in written)
    window_s = t1 - t0
    result["startup"] = startup
    result["window"] = {
        "seconds": window_s,
        "lines": len(written),
        "source_bytes": source_bytes,
        "source_bytes_per_s": source_bytes / window_s,
        "mean_line_bytes": source_bytes / max(1, len(written)),
    }
    result["lag_s"] = {
        "p50": percentile(lags, 50),
        "p95": percentile(lags, 95),
        "p99": percentile(lags, 99),
        "max": lags[-1],
        "min": lags[0],
        "mean": sum(lags) / len(lags),
        "over_goal": sum(1 for lag in lags if lag > GOAL_LAG_P99_S),
    }
    split: dict[str, dict[str, int]] = {}
    for request in log:
        kind = split.setdefault(classify(request), {"count": 0, "head_bytes": 0, "body_bytes": 0})
        kind["count"] += 1
        kind["head_bytes"] += request.head_bytes
        kind["body_bytes"] += request.body_bytes
    part_puts = [r for r in log if classify(r) == "PUT part"]
    result["wire"] = {
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "requests": len(log),
        "bytes_up_per_source_byte": bytes_up / source_bytes,
        "bytes_down_per_source_byte": bytes_down / source_bytes,
        "requests_per_min": len(log) / window_s * 60,
        "split": split,
        "part_put_head_bytes": header_sizes(part_puts[len(part_puts) // 2].head) if part_puts else [],
        "meta_json_bodies": meta_sizes,
        "unparsed_bytes_up": bytes_up - sum(r.head_bytes + r.body_bytes for r in log),
    }
    result["timeline"] = per_interval(samples, written, t0, args.interval)
    result["daemon"] = {
        "cpu_s": cpu1 - cpu0,
        "cpu_pct_of_one_core": (cpu1 - cpu0) / window_s * 100,
        **rss,
    }
    result["other_processes_cpu_pct"] = others_pct
    ours = (cpu1 - cpu0) / window_s + sum(others_pct.values()) / 100
    result["machine"].update(
        busy_cores_before_window=idle_before,
        busy_cores_in_window=machine_cores,
        other_load_cores_in_window=max(0.0, machine_cores - ours),
    )
    result["goals"] = {
        "lag_p99_ok": result["lag_s"]["p99"] <= GOAL_LAG_P99_S,
        "bytes_per_source_byte_ok": result["wire"]["bytes_up_per_source_byte"] <= GOAL_BYTES_PER_SOURCE_BYTE,
    }
    parts_per_window = Counter(row["part"] for row in read_jsonl(reader_log))
    result["reader"] = {"parts_seen": len(parts_per_window), "poll_ms": args.poll_ms}
    return result


def per_interval(
    samples: list[Sample], written: list[Any], t0: float, interval_s: float
) -> list[dict[str, float]]:
    """Bytes up per source byte, requests and CPU in consecutive intervals of the window (is it flat?)."""
    marks = [samples[0]]
    for s in samples[1:-1]:
        if s.t - marks[-1].t >= interval_s:
            marks.append(s)
    marks.append(samples[-1])
    rows = []
    for a, b in itertools.pairwise(marks):
        rows.append(
            {
                "from_s": round(a.t, 1),
                "to_s": round(b.t, 1),
                "source_bytes": sum(row[2] for row in written if a.t <= row[1] - t0 < b.t),
                "bytes_up": b.bytes_up - a.bytes_up,
                "requests": b.requests - a.requests,
                "cpu_pct": (b.cpu_s - a.cpu_s) / (b.t - a.t) * 100,
            }
        )
    return rows


# ---------- report ----------


def report(r: dict[str, Any]) -> str:
    m, w, lag, wire, d, st = r["machine"], r["window"], r["lag_s"], r["wire"], r["daemon"], r["startup"]
    out = [
        f"machine: {m['nproc']} x {m['cpu_model']}, {m['ram_gib']} GiB RAM, "
        f"Python {m['python']}, {m['date_utc']}, tracemirror at {r['code']}",
        f"other load on the machine in the window: {m['other_load_cores_in_window']:.2f} cores "
        f"(all processes: {m['busy_cores_in_window']:.2f} of {m['nproc']})",
        f"window: {w['seconds']:.1f} s, {w['lines']} lines, {w['source_bytes']} source bytes "
        f"({w['source_bytes_per_s'] / 1000:.2f} KB/s, mean line {w['mean_line_bytes']:.0f} B)",
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
                    f"p99 <= {GOAL_LAG_P99_S} ({'met' if r['goals']['lag_p99_ok'] else 'MISSED'})",
                ]
            ],
        ),
        "",
        table(
            ["wire", "value"],
            [
                [
                    "bytes up / source byte",
                    f"{wire['bytes_up_per_source_byte']:.3f} (goal <= {GOAL_BYTES_PER_SOURCE_BYTE}: "
                    f"{'met' if r['goals']['bytes_per_source_byte_ok'] else 'MISSED'})",
                ],
                ["bytes up", wire["bytes_up"]],
                [
                    "bytes down",
                    f"{wire['bytes_down']} ({wire['bytes_down_per_source_byte']:.3f} / source byte)",
                ],
                ["requests", f"{wire['requests']} ({wire['requests_per_min']:.1f} / min)"],
            ],
        ),
        "",
        table(
            ["request kind", "count", "/ min", "head bytes", "body bytes", "share of bytes up"],
            [
                [
                    kind,
                    s["count"],
                    f"{s['count'] / w['seconds'] * 60:.1f}",
                    s["head_bytes"],
                    s["body_bytes"],
                    f"{(s['head_bytes'] + s['body_bytes']) / wire['bytes_up'] * 100:.1f}%",
                ]
                for kind, s in sorted(wire["split"].items(), key=lambda kv: -kv[1]["count"])
            ],
        ),
        "",
        table(
            ["daemon", "value"],
            [
                ["CPU in the window", f"{d['cpu_s']:.2f} s = {d['cpu_pct_of_one_core']:.2f}% of one core"],
                [
                    "peak RSS (VmHWM)",
                    f"{d['VmHWM_kib'] / 1024:.1f} MiB (VmRSS at end {d['VmRSS_kib'] / 1024:.1f} MiB)",
                ],
                [
                    "start-up: spawn -> first heartbeat",
                    f"{st['to_first_heartbeat_s']:.2f} s, CPU {st['cpu_s']:.2f} s",
                ],
                ["new session: first line lag (discovery)", f"{st['new_session_first_line_lag_s']:.2f} s"],
                [
                    "other processes, CPU % of one core",
                    ", ".join(f"{k} {v:.1f}" for k, v in r["other_processes_cpu_pct"].items()),
                ],
            ],
        ),
        "",
        table(
            ["interval", "source bytes", "bytes up", "up / source", "requests", "CPU %"],
            [
                [
                    f"{row['from_s']:.0f}-{row['to_s']:.0f} s",
                    row["source_bytes"],
                    row["bytes_up"],
                    f"{row['bytes_up'] / row['source_bytes']:.3f}" if row["source_bytes"] else "-",
                    row["requests"],
                    f"{row['cpu_pct']:.2f}",
                ]
                for row in r["timeline"]
            ],
        ),
        "",
        "bytes per header line of a typical part PUT: "
        + ", ".join(f"{name} {size}" for name, size in wire["part_put_head_bytes"]),
        f"meta.json bodies PUT in the window (bytes): {wire['meta_json_bodies']}",
        f"copy check: {r['copy']}",
    ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="how long the writer appends (default 120)"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="lines per second (default 10)")
    parser.add_argument("--poll-ms", type=float, default=50.0, help="reader poll interval (default 50)")
    parser.add_argument(
        "--interval", type=float, default=30.0, help="timeline interval in seconds (default 30)"
    )
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument(
        "--lines", choices=("realistic", "tests"), default="realistic", help="line generator (see LiveLines)"
    )
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
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = OUT_DIR / f"live-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nsaved {path.relative_to(ROOT)}")
    with contextlib.suppress(Exception):
        sys.stdout.flush()


if __name__ == "__main__":
    main()
