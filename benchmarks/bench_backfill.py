"""First start on months of history: ``tracemirrord --once`` into the embedded local bucket, timed.

Standalone (not a pytest module). Generates ``--mb`` MB (default 300) of history in ``--sessions``
sessions (default 200) across claude-code (with a few subagent transcripts), codex (some archived)
and pi, under a HOME of its own: sizes spread log-normally, four big files (20-50 MB at 300 MB),
a few lines of several MB (pasted images, huge tool output), rare secrets, mtimes spread over 90
days. The tree is cached under ``benchmarks/out/backfill-cache/`` (git-ignored); generation is not
timed. Then, for each mode (redaction on, the default; and ``TRACEMIRROR_REDACT=false``):

1. an empty bucket and state dir; ``tracemirrord --once`` under ``/usr/bin/time -v`` (when present)
   with default settings apart from the bucket (``file://...``) and HOME/XDG dirs;
2. MB/s end to end = source bytes / wall time of the whole process (interpreter start included),
   CPU user/sys and peak RSS (``Maximum resident set size``; else VmHWM polled from /proc);
3. the bucket copy is read back with ``tracemirrord.reassemble.reassemble`` (gaps, overlaps and
   sha256 checked): every session's parts must cover its source from byte 0 to its size in one
   generation, total source bytes must match, the copy must have the source's line count, the
   planted secrets must be gone (redaction on) and the copy byte-identical (redaction off).

    .venv/bin/python benchmarks/bench_backfill.py [--mb 300] [--sessions 200] [--modes redact,plain]
        [--verify all|N] [--py-spy] [--store local|s3] [--latency-ms 20] [--concurrency 1,4,8,16]

``--store s3`` mirrors into moto's S3 server instead (a fresh server process for each run, from
``tests/s3server.py``), through the byte- and request-counting loopback proxy; ``--latency-ms``
makes that proxy hold each request that long before forwarding it (its "latency" mode: a laptop's
distance to a cloud region). ``--concurrency`` runs each mode at each ``upload_concurrency``
(default: the daemon's default). moto, the proxy and the daemon share the machine's cores.

``--py-spy`` records a flame graph of the redaction-on run (needs ``pip install py-spy``) into
``benchmarks/out/``. Results print as Markdown tables and are saved to
``benchmarks/out/backfill-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests"))
from corpus import Pools, SessionWriter  # noqa: E402
from s3server import BytesCountingProxy, MotoServer, s3_subprocess_env  # noqa: E402
from sysinfo import PeakRss, busy_cores, code_version, cpu_ticks, machine, table, wait_quiet  # noqa: E402

from tracemirrord.model import SessionKey  # noqa: E402
from tracemirrord.reassemble import reassemble  # noqa: E402
from tracemirrord.store import LocalStore, S3Options, open_store  # noqa: E402
from tracemirrord.store.base import ObjectStore  # noqa: E402

OUT_DIR = BENCH_DIR / "out"
CACHE_DIR = OUT_DIR / "backfill-cache"
RUN_DIR = OUT_DIR / "backfill-run"
PROJECT = "default"
GOAL_MB_S = 100.0
HARNESS_MIX = (("claude-code", 0.6), ("codex", 0.25), ("pi", 0.15))
BIG_FILES_MB_AT_300 = ((50, "claude-code"), (40, "codex"), (30, "claude-code"), (20, "pi"))
LONG_LINES_MB = (2.5, 3.0, 4.0, 5.0, 6.0)
SECRET_RATE = 1 / 2500  # per line
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
# How long a run waits for the machine to be quiet first (others' benchmarks share it; a long one
# would hold every run for the full wait): ``--quiet-wait``.
QUIET_WAIT_S = 180.0


# ---------- the history ----------


@dataclass
class SessionSpec:
    """One generated session file and what the benchmark knows about it."""

    harness: str
    session_id: str
    path: str  # relative to HOME
    bytes: int = 0
    lines: int = 0
    long_lines: int = 0
    secrets: list[tuple[str, str]] = field(default_factory=list)


def session_path(harness: str, session_id: str, when: datetime, rng: random.Random, cwd: str) -> str:
    """Where the harness keeps a session, relative to HOME (Claude subagents and Codex archives too)."""
    stamp = when.strftime("%Y-%m-%dT%H-%M-%S")
    if harness == "claude-code":
        project = re.sub(r"[^A-Za-z0-9]", "-", cwd)
        if "__" in session_id:
            parent, agent = session_id.split("__")
            return f".claude/projects/{project}/{parent}/subagents/{agent}.jsonl"
        return f".claude/projects/{project}/{session_id}.jsonl"
    if harness == "codex":
        name = f"rollout-{stamp}-{session_id}.jsonl"
        if rng.random() < 0.2:
            return f".codex/archived_sessions/{name}"
        return f".codex/sessions/{when:%Y/%m/%d}/{name}"
    folder = "--" + cwd.strip("/").replace("/", "-") + "--"
    return f".pi/agent/sessions/{folder}/{when.strftime('%Y-%m-%dT%H-%M-%S-000Z')}_{session_id}.jsonl"


def plan(total_bytes: int, sessions: int, rng: random.Random) -> list[tuple[str, int, int]]:
    """(harness, target bytes, long lines) per session: a few big files, the rest log-normal."""
    scale = total_bytes / 300e6
    big = [(h, int(mb * 1e6 * scale)) for mb, h in BIG_FILES_MB_AT_300] if sessions >= 8 else []
    rest = total_bytes - sum(size for _, size in big)
    n_rest = sessions - len(big)
    weights = [rng.lognormvariate(0, 1.3) for _ in range(n_rest)]
    harnesses = rng.choices([h for h, _ in HARNESS_MIX], [w for _, w in HARNESS_MIX], k=n_rest)
    small = [(h, max(2000, int(rest * w / sum(weights)))) for h, w in zip(harnesses, weights, strict=True)]
    out = [(h, size, 0) for h, size in big + small]
    # Lines of several MB: two in big files, the others in the largest of the rest.
    hosts = [0, 1, *sorted(range(len(big), len(out)), key=lambda i: -out[i][1])[: len(LONG_LINES_MB) - 2]]
    for i in hosts[: len(LONG_LINES_MB)] if scale >= 0.5 else []:
        h, size, n = out[i]
        out[i] = (h, size, n + 1)
    return out


def generate(home: Path, total_bytes: int, sessions: int, seed: int) -> list[SessionSpec]:
    """Write the history under ``home``; returns what was written (not timed)."""
    rng = random.Random(seed)
    pools = Pools.build(rng)
    specs: list[SessionSpec] = []
    long_sizes = iter(LONG_LINES_MB)
    parents: list[str] = []
    for harness, target, long_lines in plan(total_bytes, sessions, rng):
        session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if harness == "claude-code" and parents and rng.random() < 0.08:
            session_id = f"{rng.choice(parents)}__agent-{rng.getrandbits(32):08x}"
        elif harness == "claude-code":
            parents.append(session_id)
        when = NOW - timedelta(seconds=rng.uniform(0, 90 * 86400))
        writer = SessionWriter(
            harness, session_id.split("__")[0], rng, pools, start=when, secret_rate=SECRET_RATE
        )
        spec = SessionSpec(harness, session_id, session_path(harness, session_id, when, rng, writer.cwd))
        path = home / spec.path
        path.parent.mkdir(parents=True, exist_ok=True)
        long_at = sorted(rng.uniform(0.1, 0.9) * target for _ in range(long_lines))
        with open(path, "wb") as out:
            buf: list[bytes] = []
            while spec.bytes < target:
                if long_at and spec.bytes >= long_at[0]:
                    long_at.pop(0)
                    line = writer.long_line(int(next(long_sizes, 3.0) * 1e6))
                    spec.long_lines += 1
                else:
                    line = writer.line()
                buf.append(line)
                spec.bytes += len(line)
                spec.lines += 1
                if len(buf) >= 256:
                    out.write(b"".join(buf))
                    buf = []
            out.write(b"".join(buf))
        spec.secrets = list(writer.secrets)
        mtime = min(NOW.timestamp(), (writer.clock if writer.clock > when else when).timestamp())
        os.utime(path, (mtime, mtime))
        specs.append(spec)
    return specs


def history(args: argparse.Namespace) -> tuple[Path, list[SessionSpec]]:
    """The cached tree for these arguments, generated first if absent (or ``--regenerate``)."""
    cache = CACHE_DIR / f"{args.mb:g}MB-{args.sessions}s-seed{args.seed}"
    manifest = cache / "manifest.json"
    if manifest.exists() and not args.regenerate:
        specs = [
            SessionSpec(**{**d, "secrets": [tuple(s) for s in d["secrets"]]})
            for d in json.loads(manifest.read_text())
        ]
        print(f"history: cached at {cache.relative_to(ROOT)}")
        return cache / "home", specs
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    specs = generate(cache / "home", int(args.mb * 1e6), args.sessions, args.seed)
    manifest.write_text(json.dumps([asdict(s) for s in specs]))  # written last: marks the cache complete
    print(f"history: generated in {time.perf_counter() - started:.1f} s at {cache.relative_to(ROOT)}")
    return cache / "home", specs


# ---------- one timed run ----------


def set_quiet_wait(seconds: float) -> None:
    """How long each timed run waits for the machine to be quiet (``wait_quiet``)."""
    global QUIET_WAIT_S
    QUIET_WAIT_S = seconds


def daemon_env(
    home: Path, run: Path, redact: bool, bucket: str | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """Default settings except the bucket, HOME and XDG dirs (and redaction for the second mode)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACEMIRROR_", "AWS_", "XDG_"))}
    for name in ("CLAUDE_CONFIG_DIR", "CODEX_HOME", "PI_CODING_AGENT_DIR"):
        env.pop(name, None)
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(run / "data"),
        XDG_STATE_HOME=str(run / "state"),
        XDG_CONFIG_HOME=str(run / "config"),
        TRACEMIRROR_BUCKET=bucket or f"file://{run / 'bucket'}",
        TRACEMIRROR_LOG_FORMAT="json",
    )
    env.update(extra or {})
    if not redact:
        env["TRACEMIRROR_REDACT"] = "false"
    return env


_TIME_FIELDS = {
    "Maximum resident set size (kbytes)": "max_rss_kib",
    "User time (seconds)": "user_s",
    "System time (seconds)": "sys_s",
    "Percent of CPU this job got": "cpu_pct",
    "File system outputs": "fs_outputs",
    "Voluntary context switches": "voluntary_cs",
    "Minor (reclaiming a frame) page faults": "minor_faults",
}


def timed_once(
    env: dict[str, str],
    log_path: Path,
    py_spy: Path | None = None,
    python_args: tuple[str, ...] = (),
    sample: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run ``tracemirrord --once`` on a quiet machine; wall time, exit code, /usr/bin/time's figures.

    ``python_args`` replace ``-m tracemirrord`` (for what-if shims); ``--once`` is always passed.
    """
    command = [sys.executable, *(python_args or ("-m", "tracemirrord")), "--once"]
    time_path = log_path.with_suffix(".time")
    gnu_time = Path("/usr/bin/time")
    if py_spy is not None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        command = [
            spy,
            "record",
            "--threads",
            "--nonblocking",
            "--rate",
            "200",
            "-o",
            str(py_spy),
            "--",
            *command,
        ]
    if gnu_time.exists():
        command = [str(gnu_time), "-v", "-o", str(time_path), *command]
    idle_before = wait_quiet(max_wait_s=QUIET_WAIT_S)
    with open(log_path, "wb") as log:
        ticks = cpu_ticks()
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak = PeakRss(proc.pid)
        while proc.poll() is None:
            peak.sample()
            if sample is not None:
                sample()
            time.sleep(0.02)
        wall = time.perf_counter() - started
        machine_cores = busy_cores(ticks, cpu_ticks(), wall)
    out: dict[str, Any] = {
        "exit_code": proc.returncode,
        "wall_s": wall,
        "polled_peak_rss_kib": peak.peak_kib,
        "machine_busy_cores_before": idle_before,
        "machine_busy_cores": machine_cores,
    }
    if time_path.exists():
        for line in time_path.read_text().splitlines():
            name, _, value = line.strip().rpartition(": ")
            if name in _TIME_FIELDS:
                number = value.rstrip("%")
                out[_TIME_FIELDS[name]] = float(number) if number.replace(".", "").isdigit() else value
    if "user_s" in out:
        out["other_load_cores"] = max(0.0, machine_cores - (out["user_s"] + out["sys_s"]) / wall)
    return out


# ---------- checking the copy ----------


def verify(
    open_bucket: Callable[[], ObjectStore],
    home: Path,
    specs: list[SessionSpec],
    sample: int | None,
    redact: bool,
) -> dict[str, Any]:
    """Reassemble sessions from the bucket and hold them against their sources."""
    chosen = specs if sample is None else random.Random(1).sample(specs, min(sample, len(specs)))

    async def go() -> dict[str, Any]:
        store = open_bucket()
        problems: list[str] = []
        source_bytes = covered = mirrored_bytes = leaked = planted = lines_changed = 0
        redactions: dict[str, int] = {}
        try:
            for spec in chosen:
                key = SessionKey(spec.harness, spec.session_id)
                copy = await reassemble(store, PROJECT, key)
                source = (home / spec.path).read_bytes()
                source_bytes += len(source)
                if list(copy.generations) != [0]:
                    problems.append(f"{key}: generations {list(copy.generations)}")
                    continue
                data = copy.generations[0]
                mirrored_bytes += len(data)
                end = copy.parts[-1].end if copy.parts else 0
                covered += end
                if end != len(source):
                    problems.append(f"{key}: parts end at {end}, source has {len(source)} bytes")
                copy_lines, source_lines = data.count(b"\n"), source.count(b"\n")
                if copy_lines != source_lines:
                    problems.append(f"{key}: {copy_lines} lines, source {source_lines}")
                if not redact and data != source:
                    problems.append(f"{key}: copy differs from source with redaction off")
                for part in copy.parts:
                    for rule, n in part.redactions.items():
                        redactions[rule] = redactions.get(rule, 0) + n
                planted += len(spec.secrets)
                leaked += sum(1 for _, token in spec.secrets if token.encode() in data)
                if redact and data != source:
                    lines_changed += sum(
                        1 for a, b in zip(data.split(b"\n"), source.split(b"\n"), strict=False) if a != b
                    )
        finally:
            await store.close()
        return {
            "sessions_checked": len(chosen),
            "source_bytes": source_bytes,
            "bytes_covered_by_parts": covered,
            "mirrored_bytes": mirrored_bytes,
            "lines_changed_by_redaction": lines_changed,
            "secrets_planted": planted,
            "secrets_found_in_copy": leaked,
            "redactions": dict(sorted(redactions.items())),
            "problems": problems,
            "ok": not problems and covered == source_bytes and (not redact or leaked == 0),
        }

    return asyncio.run(go())


class Target:
    """Where one timed run mirrors to: a fresh embedded bucket, or a fresh moto S3 server (its own
    process) behind the counting proxy, in "latency" mode when ``latency_ms`` is set."""

    def __init__(self, store: str, latency_ms: float) -> None:
        self.store = store
        self.latency_ms = latency_ms
        self.server: MotoServer | None = None
        self.proxy: BytesCountingProxy | None = None
        self.url = f"file://{RUN_DIR / 'bucket'}"
        self.env: dict[str, str] = {}
        self.peak_connections = 0

    def __enter__(self) -> Target:
        if self.store == "s3":
            self.server = MotoServer(OUT_DIR / "backfill-moto.log").start()
            mode = "latency" if self.latency_ms > 0 else "pass"
            self.proxy = BytesCountingProxy(
                self.server.endpoint_url, mode=mode, latency_s=self.latency_ms / 1000
            ).start()
            self.url = f"s3://{self.server.create_bucket()}"
            self.env = s3_subprocess_env(self.proxy.endpoint_url)
        return self

    def __exit__(self, *_: object) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.server is not None:
            self.server.stop()

    def sample(self) -> None:
        """Connections open through the proxy (two sockets each): the uploads running at once."""
        if self.proxy is not None:
            self.peak_connections = max(self.peak_connections, len(self.proxy._connections) // 2)

    def open_bucket(self) -> ObjectStore:
        """A client of the bucket; for S3 straight to the server, not through the proxy."""
        if self.server is None:
            return LocalStore(RUN_DIR / "bucket")
        options = S3Options(
            endpoint_url=self.server.endpoint_url,
            region="us-east-1",
            access_key_id="testing",
            secret_access_key="testing",
        )
        return open_store(self.url, options)

    def stats(self) -> dict[str, Any]:
        if self.server is None:
            return bucket_stats(RUN_DIR / "bucket")
        assert self.proxy is not None
        out: dict[str, Any] = {"parts": 0, "part_bytes": 0, "meta_json": 0, "meta_json_bytes": 0}
        pages = self.server.client().get_paginator("list_objects_v2").paginate(Bucket=self.url[5:])
        for page in pages:
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/meta.json"):
                    out["meta_json"] += 1
                    out["meta_json_bytes"] += obj["Size"]
                elif "/part-" in obj["Key"]:
                    out["parts"] += 1
                    out["part_bytes"] += obj["Size"]
        methods: dict[str, int] = {}
        for record in self.proxy.request_log:
            methods[record.method] = methods.get(record.method, 0) + 1
        out.update(
            requests=self.proxy.requests,
            requests_by_method=methods,
            bytes_up=self.proxy.bytes_up,
            bytes_down=self.proxy.bytes_down,
            peak_connections=self.peak_connections,
        )
        return out


def bucket_stats(bucket: Path) -> dict[str, int]:
    """Objects and bytes in the bucket (parts, meta.json, sidecars)."""
    parts = metas = part_bytes = meta_bytes = hidden_bytes = 0
    for path in bucket.rglob("*"):
        if not path.is_file():
            continue
        size = path.stat().st_size
        rel = path.relative_to(bucket).parts
        if rel[0] == ".tracemirror":
            hidden_bytes += size
        elif path.name == "meta.json":
            metas += 1
            meta_bytes += size
        elif path.name.startswith("part-"):
            parts += 1
            part_bytes += size
    return {
        "parts": parts,
        "part_bytes": part_bytes,
        "meta_json": metas,
        "meta_json_bytes": meta_bytes,
        "sidecar_bytes": hidden_bytes,
    }


# ---------- report ----------


def report(r: dict[str, Any]) -> str:
    m, h = r["machine"], r["history"]
    rows = []
    for mode, run in r["runs"].items():
        t = run["time"]
        rows.append(
            [
                mode,
                f"{t['wall_s']:.2f} ({', '.join(f'{w:.2f}' for w in run['all_wall_s'])})",
                f"{run['mb_per_s']:.1f} (best {run['best_mb_per_s']:.1f})",
                f"{t.get('user_s', float('nan')):.2f} / {t.get('sys_s', float('nan')):.2f}",
                f"{t.get('max_rss_kib', t['polled_peak_rss_kib']) / 1024:.0f}",
                f"{t.get('other_load_cores', float('nan')):.2f}",
                t["exit_code"],
                "ok" if run["verify"]["ok"] else "FAILED",
            ]
        )
    f = r["fixed_cost"]
    rows.append(
        [
            "empty HOME (fixed cost)",
            f"{f['wall_s']:.2f}",
            "-",
            f"{f.get('user_s', float('nan')):.2f} / {f.get('sys_s', float('nan')):.2f}",
            f"{f.get('max_rss_kib', f['polled_peak_rss_kib']) / 1024:.0f}",
            f"{f.get('other_load_cores', float('nan')):.2f}",
            f["exit_code"],
            "-",
        ]
    )
    out = [
        f"machine: {m['nproc']} x {m['cpu_model']}, {m['ram_gib']} GiB RAM, "
        f"Python {m['python']}, {m['date_utc']}, tracemirror at {r['code']}",
        f"history: {h['source_bytes'] / 1e6:.1f} MB in {h['sessions']} sessions ({h['by_harness']}), "
        f"{h['lines']} lines, largest file {h['largest_bytes'] / 1e6:.1f} MB, "
        f"{h['long_lines']} lines of 2.5-6 MB, {h['secrets']} planted secrets",
        "",
        table(
            [
                "mode",
                "wall s, median (all)",
                "MB/s end to end",
                "CPU user / sys s",
                "peak RSS MiB",
                "other load, cores",
                "exit",
                "copy",
            ],
            rows,
        ),
        "",
    ]
    if r["args"].get("store") == "s3":
        out.append(
            f"store: moto S3 server through the counting proxy, {r['args']['latency_ms']:g} ms per request"
        )
        for mode, run in r["runs"].items():
            b = run["bucket"]
            out.append(
                f"{mode}: {b['requests']} requests {b['requests_by_method']}, "
                f"{b['bytes_up'] / 1e6:.1f} MB up, at most {b['peak_connections']} connections at once"
            )
    for mode, run in r["runs"].items():
        v = run["verify"]
        out.append(
            f"{mode}: checked {v['sessions_checked']} sessions, {v['bytes_covered_by_parts']} of "
            f"{v['source_bytes']} source bytes covered by parts, {v['mirrored_bytes']} bytes in the copy, "
            f"{v['lines_changed_by_redaction']} lines changed, secrets planted {v['secrets_planted']} / "
            f"found in copy {v['secrets_found_in_copy']}, redactions {v['redactions']}, "
            f"bucket {run['bucket']}"
        )
        for problem in v["problems"][:10]:
            out.append(f"  problem: {problem}")
    if "redact" in r["runs"] and "plain" in r["runs"]:
        on, off = r["runs"]["redact"]["time"], r["runs"]["plain"]["time"]
        a, b = on["wall_s"], off["wall_s"]
        cpu = on.get("user_s", 0) + on.get("sys_s", 0) - off.get("user_s", 0) - off.get("sys_s", 0)
        out.append(
            f"\nredaction costs {a - b:.2f} s wall of {a:.2f} s ({(a - b) / a * 100:.0f}%) "
            f"and {cpu:.2f} s CPU (medians)"
        )
    for mode, run in r["runs"].items():
        rest = run["time"]["wall_s"] - r["fixed_cost"]["wall_s"]
        out.append(
            f"{mode}: without the fixed cost ({r['fixed_cost']['wall_s']:.2f} s): "
            f"{h['source_bytes'] / 1e6 / rest:.1f} MB/s"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mb", type=float, default=300.0, help="history size in MB (10^6 bytes; default 300)"
    )
    parser.add_argument("--sessions", type=int, default=200, help="number of session files (default 200)")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument(
        "--modes", default="redact,plain", help="redact (default settings), plain (REDACT=false)"
    )
    parser.add_argument("--verify", default="all", help="all, or how many sessions to check at random")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per mode; the median is reported")
    parser.add_argument("--regenerate", action="store_true", help="rebuild the cached history")
    parser.add_argument("--keep-bucket", action="store_true", help="leave the last run's bucket in place")
    parser.add_argument("--py-spy", action="store_true", help="record a py-spy flame graph of the redact run")
    parser.add_argument(
        "--quiet-wait", type=float, default=QUIET_WAIT_S, help="s to wait for a quiet machine before each run"
    )
    parser.add_argument(
        "--store", choices=("local", "s3"), default="local", help="the embedded bucket, or moto's S3 server"
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="with --store s3: ms the proxy holds each request"
    )
    parser.add_argument(
        "--concurrency", default="", help="comma list of upload_concurrency values (default: the default)"
    )
    args = parser.parse_args()
    set_quiet_wait(args.quiet_wait)

    home, specs = history(args)
    by_harness: dict[str, int] = {}
    for spec in specs:
        by_harness[spec.harness] = by_harness.get(spec.harness, 0) + 1
    result: dict[str, Any] = {
        "machine": machine(),
        "code": code_version(),
        "args": vars(args),
        "history": {
            "sessions": len(specs),
            "by_harness": by_harness,
            "source_bytes": sum(s.bytes for s in specs),
            "lines": sum(s.lines for s in specs),
            "largest_bytes": max(s.bytes for s in specs),
            "long_lines": sum(s.long_lines for s in specs),
            "secrets": sum(len(s.secrets) for s in specs),
        },
        "runs": {},
    }
    source_bytes = result["history"]["source_bytes"]
    sample = None if args.verify == "all" else int(args.verify)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    # (run name, redaction on, upload_concurrency or None for the default)
    runs = [
        (mode if not levels else f"{mode} c={level}", mode == "redact", level)
        for mode in modes
        for level in (levels or [None])
    ]
    timings: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in runs}
    for attempt in range(args.repeat):  # runs interleaved, so drift in the machine hits all alike
        for name, redact, level in runs:
            shutil.rmtree(RUN_DIR, ignore_errors=True)
            RUN_DIR.mkdir(parents=True)
            spy = OUT_DIR / f"backfill-{stamp}-{name}.svg" if args.py_spy and attempt == 0 else None
            log = OUT_DIR / f"backfill-{name.replace(' ', '-')}.log"
            extra = {} if level is None else {"TRACEMIRROR_UPLOAD_CONCURRENCY": str(level)}
            with Target(args.store, args.latency_ms) as target:
                env = daemon_env(home, RUN_DIR, redact, target.url, {**target.env, **extra})
                timing = timed_once(env, log, spy, sample=target.sample)
                timing["store"] = target.stats() if args.store == "s3" else {}
                timings[name].append(timing)
                print(
                    f"{name} #{attempt + 1}: {source_bytes / 1e6 / timing['wall_s']:.1f} MB/s in "
                    f"{timing['wall_s']:.2f} s (exit {timing['exit_code']}, other load "
                    f"{timing.get('other_load_cores', float('nan')):.2f} cores"
                    + (
                        f", {timing['store']['requests']} requests, at most "
                        f"{timing['store']['peak_connections']} at once)"
                        if args.store == "s3"
                        else ")"
                    ),
                    flush=True,
                )
                if attempt == args.repeat - 1:
                    run: dict[str, Any] = {"bucket": target.stats()}
                    run["verify"] = verify(target.open_bucket, home, specs, sample, redact)
                    result["runs"][name] = run
    for mode in timings:
        ordered = sorted(timings[mode], key=lambda t: t["wall_s"])
        median = ordered[len(ordered) // 2]
        result["runs"][mode].update(
            time=median,
            all_wall_s=[t["wall_s"] for t in timings[mode]],
            mb_per_s=source_bytes / 1e6 / median["wall_s"],
            best_mb_per_s=source_bytes / 1e6 / ordered[0]["wall_s"],
        )
    # The fixed cost: the same command on a HOME with no sessions (interpreter start, imports, set-up).
    empty = RUN_DIR / "empty-home"
    fixed = []
    for _ in range(args.repeat):
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        empty.mkdir(parents=True)
        fixed.append(timed_once(daemon_env(empty, RUN_DIR, True), OUT_DIR / "backfill-empty.log"))
    result["fixed_cost"] = sorted(fixed, key=lambda t: t["wall_s"])[len(fixed) // 2]
    if not args.keep_bucket:
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    print()
    print(report(result))
    path = OUT_DIR / f"backfill-{stamp}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nsaved {path.relative_to(ROOT)}")
    if any(run["time"]["exit_code"] != 0 or not run["verify"]["ok"] for run in result["runs"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
