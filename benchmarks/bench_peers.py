"""Side by side: tracemirrord, tracecraft's ``session mirror --follow`` and ``rclone copy`` on a timer.

Standalone (not a pytest module). One run, one workload, every tool at its default settings:

- moto's S3 server on loopback (tests/s3server.py ``MotoServer``), one bucket per tool, and in front of
  it one ``BytesCountingProxy`` per tool, so every byte and request each tool sends is counted apart;
- one Claude Code session under ``$HOME/.claude/projects/-home-dev-proj/`` appended to at ``--rate``
  lines/s (``tests/sessions.py`` record lines by default: about 400 B each, so about 4 KB/s), plus an
  old session (40 days untouched, 100 lines) that every tool has copied before the window;
- the tools, all following that same HOME at once, each as its own process tree:
  1. ``tracemirrord`` (bucket ``s3://<bucket>``, endpoint through ``TRACEMIRROR_S3__ENDPOINT_URL``,
     nothing else set: bench_live.py's ``default_env``);
  2. ``tracecraft session mirror --follow --session-id <id>`` (pip ``tracecraft-ai``; its config file
     ``~/.tracecraft/config.json`` names the endpoint, bucket and keys; default ``--interval 5``);
     the old session is mirrored once with ``tracecraft session mirror --session-id <old>`` first;
  3. ``rclone copy ~/.claude/projects bench:<bucket>/claude-projects`` started every ``--rclone-every``
     seconds (10) by a timer in this process (remote from ``RCLONE_CONFIG_BENCH_*``: provider Other,
     path style), each run measured with ``wait4`` (CPU, peak RSS);
- one reader per tool polling its bucket directly at moto every ``--poll-ms`` (50): for tracemirrord and
  tracecraft it lists new ``part-*`` objects of the session and reads them in key order, for rclone it
  re-reads the one object whenever its ETag changes; a line is readable once it is complete in what the
  reader holds. Lag = readable - appended (CLOCK_MONOTONIC, shared by all processes).

Phases:

1. **window** (``--seconds``): the writer appends; proxies are zeroed at its start and read once every
   line is readable in every bucket. Bytes and requests are sampled each second (growth as the session
   grows), CPU and RSS of each tool's process tree too;
2. **deletion and kill -9** (``--tail-seconds``): the old session file is deleted (Claude Code removes
   sessions older than ``cleanupPeriodDays``, 30 by default); the writer goes on; each tool is killed with
   SIGKILL at its most exposed moment (tracemirrord and tracecraft: right after one of their parts of the
   session has landed in the bucket, before they can record it locally; rclone: as soon as its PUT of
   the session file starts) and restarted one second later (rclone: by its next tick);
3. **checks**: once every line is readable again, each bucket copy is compared with the source: the
   live session (parts concatenated in key order, or rclone's object) and the deleted old session.

    .venv/bin/python benchmarks/bench_peers.py [--seconds 300] [--quick] [--tools tracemirrord,rclone]

Results print as Markdown tables (one row per tool, "not installed" for a missing peer) and are saved to
``benchmarks/out/peers-<UTC time>.json``; plots (matplotlib, ``pip install -e '.[bench]'``) go to
``benchmarks/peers-lag-cdf.png`` and ``benchmarks/peers-bytes.png`` unless ``--quick`` or ``--no-plots``.
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
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_live import (  # noqa: E402
    HARNESS,
    LiveLines,
    append_line,
    classify,
    default_env,
    read_jsonl,
    seen_ids,
    wait_until,
)
from daemon import AGENT_VARIABLES, Daemon  # noqa: E402
from s3server import (  # noqa: E402
    TEST_CREDENTIALS,
    TEST_REGION,
    BytesCountingProxy,
    MotoServer,
    RequestRecord,
    s3_subprocess_env,
    sync_s3_client,
)
from sessions import make_session, record  # noqa: E402
from sysinfo import (  # noqa: E402
    busy_cores,
    code_version,
    cpu_ticks,
    machine,
    percentile,
    sleep_until,
    table,
    wait_quiet,
)

OUT_DIR = BENCH_DIR / "out"
PROJECT = "default"
CWD = "/home/dev/proj"
PROJECT_DIR = "-home-dev-proj"  # how Claude Code (and tracecraft) encode CWD
RCLONE_PREFIX = "claude-projects"
OLD_LINES = 100
WARMUP_LINES = 5
GOAL_LAG_P99_S = 1.5
TODAY_LAG_P99_S = 1.3  # issue 11: "lag p99 not worse than today"
GOAL_BYTES_PER_SOURCE_BYTE = 1.2
TOOLS = ("tracemirrord", "tracecraft", "rclone")


# ---------- /proc: a process tree's CPU and memory ----------


def tree_pids(root: int) -> list[int]:
    """``root`` and every live descendant (from /proc/<pid>/task/<tid>/children)."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return pids


def proc_cpu_rss(pid: int) -> tuple[float, int, int]:
    """(utime+stime of the process and its reaped children in s, VmRSS KiB, VmHWM KiB); zeros if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0, 0, 0
    fields = raw[raw.rindex(")") + 2 :].split()
    cpu = sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    kib = {line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith("Vm")}
    return cpu, kib.get("VmRSS", 0), kib.get("VmHWM", 0)


# ---------- the writer and reader processes ----------


def run_writer(spec: dict[str, Any]) -> None:
    """Append ``rate`` lines/s for ``seconds`` (once ready); log (id, appended_at, bytes) line by line."""
    lines = LiveLines(spec["session_id"], spec["seed"], spec["shape"], first=spec["first"])
    fd = os.open(spec["path"], os.O_WRONLY | os.O_APPEND)
    start, interval = time.monotonic() + 0.05, 1.0 / spec["rate"]  # once the line pools are built
    with open(spec["log"], "a", buffering=1) as log:
        try:
            for i in range(int(spec["seconds"] * spec["rate"])):
                line_id, line = lines.next()
                sleep_until(start + i * interval)
                log.write(json.dumps([line_id, append_line(fd, line), len(line)]) + "\n")
        finally:
            os.close(fd)


def line_ids(complete: bytes) -> list[str]:
    """The ``uuid`` of every line in a run of complete JSONL lines (lines that do not parse: skipped)."""
    ids = []
    for line in complete.splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict) and isinstance(doc.get("uuid"), str):
                ids.append(doc["uuid"])
    return ids


def run_reader(spec: dict[str, Any]) -> None:
    """Poll one tool's copy of the session; log when each line id first became readable.

    ``parts``: list new objects under ``prefix`` (StartAfter the last one read), read them in key order
    and keep what follows the last newline for the next part. ``object``: re-read ``key`` whenever its
    ETag changes. Each log row: {"seen": when the listing that showed it came back, "ids": [...]}.
    """
    client = sync_s3_client(spec["endpoint_url"])
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    interval, bucket = spec["poll_ms"] / 1000, spec["bucket"]
    last_key, carry, etag = "", b"", ""
    known: set[str] = set()
    with open(spec["log"], "a", buffering=1) as out:
        next_poll = time.monotonic()
        while not stopping:
            try:
                if spec["kind"] == "parts":
                    params: dict[str, Any] = {"Bucket": bucket, "Prefix": spec["prefix"]}
                    if last_key:
                        params["StartAfter"] = last_key
                    keys = [o["Key"] for o in client.list_objects_v2(**params).get("Contents", [])]
                    seen = time.monotonic()
                    for key in keys:
                        carry += client.get_object(Bucket=bucket, Key=key)["Body"].read()
                        last_key = key
                    cut = carry.rfind(b"\n") + 1
                    ids, carry = line_ids(carry[:cut]), carry[cut:]
                else:
                    listed = client.list_objects_v2(Bucket=bucket, Prefix=spec["key"]).get("Contents", [])
                    seen = time.monotonic()
                    ids = []
                    now_etag = next((o["ETag"] for o in listed if o["Key"] == spec["key"]), "")
                    if etag and not now_etag:  # it was there and is gone: the tool deleted its copy
                        out.write(json.dumps({"seen": seen, "ids": [], "absent": True}) + "\n")
                        etag = ""
                    if now_etag and now_etag != etag:
                        body = client.get_object(Bucket=bucket, Key=spec["key"])["Body"].read()
                        etag = now_etag
                        ids = [i for i in line_ids(body[: body.rfind(b"\n") + 1]) if i not in known]
                        known.update(ids)
                if ids:
                    out.write(json.dumps({"seen": seen, "ids": ids}) + "\n")
            except Exception as exc:  # a poll that fails (moto busy) is retried at the next tick
                out.write(json.dumps({"seen": time.monotonic(), "ids": [], "error": repr(exc)}) + "\n")
            next_poll = max(next_poll + interval, time.monotonic())
            sleep_until(next_poll)


STARTED = time.monotonic()


def say(message: str) -> None:
    """A progress line on stderr (stdout keeps the report)."""
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


def spawn_role(role: str, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--role", role, "--spec", json.dumps(spec)])


# ---------- the tools ----------


@dataclass
class Tool:
    """One mirroring tool: its bucket, proxy, process(es), reader and what was measured of it."""

    name: str
    bucket: str
    proxy: BytesCountingProxy
    work: Path
    reader_log: Path = field(init=False)
    kills: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_kib: int = 0

    def __post_init__(self) -> None:
        self.reader_log = self.work / f"reader-{self.name}.jsonl"

    # copy layout
    def reader_spec(self, session_id: str) -> dict[str, Any]:
        return {"kind": "parts", "prefix": f"{PROJECT}/sessions/{HARNESS}/{session_id}/part-"}

    def copy_of(self, s3: Any, session_id: str) -> bytes | None:
        """The session as this tool's bucket holds it: parts concatenated in key (= seq) order."""
        prefix = f"{PROJECT}/sessions/{HARNESS}/{session_id}/part-"
        keys = sorted(list_keys(s3, self.bucket, prefix))
        if not keys:
            return None
        return b"".join(s3.get_object(Bucket=self.bucket, Key=k)["Body"].read() for k in keys)

    def landed_key(self, record: RequestRecord, session_id: str) -> str | None:
        """The object key of ``record`` if it is a PUT of this session's data, else None."""
        path = record.target.partition("?")[0]
        if record.method == "PUT" and f"/sessions/{HARNESS}/{session_id}/part-" in path:
            return path.split("/", 2)[2]
        return None

    # lifecycle (overridden)
    def start(self) -> None:
        raise NotImplementedError

    def root_pids(self) -> list[int]:
        raise NotImplementedError

    def kill9(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def cpu_rss(self) -> tuple[float, int]:
        """CPU seconds so far and resident KiB now of the tool's live process tree."""
        cpu, rss = 0.0, 0
        for root in self.root_pids():
            for pid in tree_pids(root):
                c, r, _ = proc_cpu_rss(pid)
                cpu, rss = cpu + c, rss + r
        return cpu, rss

    def cpu_and_peak(self, t0: float, t1: float, cpu0: float, cpu1: float) -> tuple[float, int]:
        """CPU seconds used in [t0, t1] and peak RSS KiB (overridden by rclone, a process per tick)."""
        hwm = max((proc_cpu_rss(p)[2] for root in self.root_pids() for p in tree_pids(root)), default=0)
        return cpu1 - cpu0, max(self.peak_rss_kib, hwm)


class Tracemirrord(Tool):
    def __init__(self, *args: Any, home_env: dict[str, str], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.env = home_env
        self.daemon: Daemon | None = None

    def start(self) -> None:
        self.daemon = Daemon(self.env, self.work / "tracemirrord.log").start()

    def root_pids(self) -> list[int]:
        alive = self.daemon and self.daemon.alive() and self.daemon.proc
        return [self.daemon.proc.pid] if alive else []  # type: ignore[union-attr]

    def kill9(self) -> None:
        assert self.daemon is not None
        self.daemon.kill9()

    def stop(self) -> None:
        if self.daemon and self.daemon.alive():
            try:
                self.daemon.stop(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill9()


class Tracecraft(Tool):
    def __init__(
        self, *args: Any, exe: str, env: dict[str, str], session_id: str, interval: float | None, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.exe, self.env, self.session_id, self.interval = exe, env, session_id, interval
        self.proc: subprocess.Popen[bytes] | None = None

    def mirror_once(self, session_id: str) -> None:
        """What a tracecraft user runs for a session that is not the active one (one-shot mirror)."""
        with open(self.work / "tracecraft.log", "ab") as log:
            subprocess.run(
                [self.exe, "session", "mirror", "--cwd", CWD, "--session-id", session_id],
                env=self.env,
                stdout=log,
                stderr=log,
                check=True,
                timeout=60,
            )

    def start(self) -> None:
        command = [self.exe, "session", "mirror", "--follow", "--cwd", CWD, "--session-id", self.session_id]
        if self.interval is not None:
            command += ["--interval", str(self.interval)]
        with open(self.work / "tracecraft.log", "ab") as log:
            self.proc = subprocess.Popen(
                command,
                env=self.env,
                stdout=log,
                stderr=log,
            )

    def root_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # its documented stop (Ctrl-C): marks the session ended
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()


class Rclone(Tool):
    """``rclone copy`` of the agent directory, started every ``every`` s (a skipped tick if still busy)."""

    def __init__(self, *args: Any, exe: str, env: dict[str, str], source: Path, every: float, **kw: Any):
        super().__init__(*args, **kw)
        self.exe, self.env, self.source, self.every = exe, env, source, every
        self.current: subprocess.Popen[bytes] | None = None
        self.runs: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def object_key(self, session_id: str) -> str:
        return f"{RCLONE_PREFIX}/{PROJECT_DIR}/{session_id}.jsonl"

    def reader_spec(self, session_id: str) -> dict[str, Any]:
        return {"kind": "object", "key": self.object_key(session_id)}

    def copy_of(self, s3: Any, session_id: str) -> bytes | None:
        try:
            return s3.get_object(Bucket=self.bucket, Key=self.object_key(session_id))["Body"].read()
        except s3.exceptions.NoSuchKey:
            return None

    def landed_key(self, record: RequestRecord, session_id: str) -> str | None:
        path = record.target.partition("?")[0]
        if record.method == "PUT" and path.endswith(f"/{session_id}.jsonl"):
            return path.split("/", 2)[2]
        return None

    def run_once(self) -> dict[str, Any]:
        """One ``rclone copy``; returns its start, end, exit code, CPU and peak RSS (from wait4)."""
        command = [self.exe, "copy", str(self.source), f"bench:{self.bucket}/{RCLONE_PREFIX}"]
        with open(self.work / "rclone.log", "ab") as log, self._lock:
            started = time.monotonic()
            self.current = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        _, status, usage = os.wait4(self.current.pid, 0)
        ended = time.monotonic()
        with self._lock:
            self.current.returncode = os.waitstatus_to_exitcode(status)
            rc, self.current = self.current.returncode, None
        run = {
            "start": started,
            "end": ended,
            "rc": rc,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "maxrss_kib": usage.ru_maxrss,
        }
        self.runs.append(run)
        return run

    def _timer(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            self.run_once()
            next_tick = max(next_tick + self.every, time.monotonic())
            self._stop.wait(next_tick - time.monotonic())

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._timer, daemon=True)
        self._thread.start()

    def root_pids(self) -> list[int]:
        with self._lock:
            return [self.current.pid] if self.current else []

    def kill9(self) -> None:
        with self._lock:
            if self.current is not None:
                self.current.kill()  # the next tick is the restart

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def cpu_and_peak(self, t0: float, t1: float, cpu0: float, cpu1: float) -> tuple[float, int]:
        runs = [r for r in self.runs if t0 <= r["start"] < t1]
        return sum(r["cpu_s"] for r in runs), max((r["maxrss_kib"] for r in runs), default=0)


def list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def find_exe(name: str) -> str | None:
    """``name`` next to this Python (a venv's bin) or on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


# ---------- the run ----------


def daemon_env_overrides(args: argparse.Namespace) -> dict[str, str]:
    """``--daemon-env NAME=VALUE`` settings for tracemirrord (e.g. TRACEMIRROR_WATCH=poll, or a
    PYTHONPATH naming another tree of the code to compare)."""
    pairs = [item.partition("=") for item in args.daemon_env or []]
    bad = [name for name, eq, _ in pairs if not eq or not name]
    if bad:
        raise SystemExit(f"--daemon-env wants NAME=VALUE, got {bad}")
    return {name: value for name, _, value in pairs}


def make_tools(
    args: argparse.Namespace, work: Path, moto: MotoServer, stack: contextlib.ExitStack, home: Path, sid: str
) -> tuple[list[Tool], dict[str, str]]:
    tools: list[Tool] = []
    missing: dict[str, str] = {}
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACEMIRROR_", "AWS_", "RCLONE_"))}
    for name in AGENT_VARIABLES:
        base_env.pop(name, None)
    base_env["HOME"] = str(home)
    for name in wanted:
        exe = {"tracecraft": find_exe("tracecraft"), "rclone": find_exe("rclone")}.get(name, "")
        if exe is None:
            missing[name] = "not installed"
            continue
        proxy = stack.enter_context(BytesCountingProxy(moto.endpoint_url))
        bucket = moto.create_bucket(f"peers-{name}-{uuid.uuid4().hex[:8]}")
        if name == "tracemirrord":
            env = default_env(work, f"s3://{bucket}")
            for var in AGENT_VARIABLES:
                env.pop(var, None)
            env.update(s3_subprocess_env(proxy.endpoint_url))
            env.update(daemon_env_overrides(args))
            tools.append(Tracemirrord(name, bucket, proxy, work, home_env=env))
        elif name == "tracecraft":
            config = {
                "backend": "s3",
                "endpoint": proxy.endpoint_url,
                "bucket": bucket,
                "project": PROJECT,
                "access_key": TEST_CREDENTIALS["aws_access_key_id"],
                "secret_key": TEST_CREDENTIALS["aws_secret_access_key"],
                "agent_id": "bench@host",
            }
            (home / ".tracecraft").mkdir(parents=True, exist_ok=True)
            (home / ".tracecraft" / "config.json").write_text(json.dumps(config, indent=2))
            env = {**base_env, "AWS_DEFAULT_REGION": TEST_REGION, "AWS_EC2_METADATA_DISABLED": "true"}
            tools.append(
                Tracecraft(
                    name,
                    bucket,
                    proxy,
                    work,
                    exe=exe,
                    env=env,
                    session_id=sid,
                    interval=args.tracecraft_interval,
                )
            )
        elif name == "rclone":
            remote = "RCLONE_CONFIG_BENCH_"
            env = {
                **base_env,
                "RCLONE_CONFIG": str(work / "rclone.conf"),  # empty: the remote comes from the env
                remote + "TYPE": "s3",
                remote + "PROVIDER": "Other",
                remote + "ENDPOINT": proxy.endpoint_url,
                remote + "ACCESS_KEY_ID": TEST_CREDENTIALS["aws_access_key_id"],
                remote + "SECRET_ACCESS_KEY": TEST_CREDENTIALS["aws_secret_access_key"],
                remote + "REGION": TEST_REGION,
                remote + "FORCE_PATH_STYLE": "true",
            }
            (work / "rclone.conf").touch()
            source = home / ".claude" / "projects"
            tools.append(
                Rclone(name, bucket, proxy, work, exe=exe, env=env, source=source, every=args.rclone_every)
            )
        else:
            raise SystemExit(f"unknown tool {name!r}; known: {', '.join(TOOLS)}")
    return tools, missing


def sampler(tools: list[Tool], session: Path, t0: float, stop: threading.Event, every: float = 1.0) -> None:
    """Each ``every`` s: each tool's proxy counters, request count, CPU and RSS, and the source size."""
    while not stop.wait(every):
        size = session.stat().st_size
        for tool in tools:
            cpu, rss = tool.cpu_rss()
            tool.peak_rss_kib = max(tool.peak_rss_kib, rss)
            tool.samples.append(
                {
                    "t": time.monotonic() - t0,
                    "source_size": size,
                    "bytes_up": tool.proxy.bytes_up,
                    "bytes_down": tool.proxy.bytes_down,
                    "requests": tool.proxy.requests,
                    "cpu_s": cpu,
                }
            )


def kill_at_exposed_moment(tool: Tool, sid: str, s3: Any, timeout_s: float, restart_after_s: float) -> None:
    """SIGKILL ``tool`` right after one of its PUTs of the session lands (rclone: as its PUT starts).

    A part that is in the bucket but not yet in the tool's local state is where a restart can upload the
    same bytes again; for rclone, which keeps no state, the only exposed moment is an upload in flight.
    """
    seen = len(tool.proxy.request_log)
    deadline = time.monotonic() + timeout_s
    event: dict[str, Any] = {"tool": tool.name}
    while time.monotonic() < deadline:
        log = tool.proxy.request_log
        keys = [k for k in (tool.landed_key(r, sid) for r in log[seen:]) if k]
        seen = len(log)
        if keys:
            key = event["key"] = keys[-1]
            put_seen = time.monotonic()
            if not isinstance(tool, Rclone):
                with contextlib.suppress(RuntimeError):
                    wait_until(lambda k=key: object_exists(s3, tool.bucket, k), 2.0, "the PUT", 0.002)
                event["landed_before_kill"] = object_exists(s3, tool.bucket, key)
            event["after_put_head_s"] = round(time.monotonic() - put_seen, 4)
            break
        time.sleep(0.002)
    else:
        event["error"] = f"no PUT of the session within {timeout_s:.0f} s: killed anyway"
    event["had_process"] = bool(tool.root_pids())
    tool.kill9()
    event["killed_at"] = time.monotonic()
    tool.kills.append(event)
    if not isinstance(tool, Rclone):
        time.sleep(restart_after_s)
        tool.start()
        event["restarted_at"] = time.monotonic()


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except Exception:
        return False


def write_lines(path: Path, sid: str, count: int, seed: int, first: int) -> bytes:
    """Append ``count`` lines at once (setup: the old session, the warm-up); returns them."""
    rng = random.Random(seed)
    data = b"".join(record(HARNESS, sid, first + i, rng) for i in range(count))
    with open(path, "ab") as f:
        f.write(data)
    return data


def copy_check(source: bytes, copy: bytes | None) -> dict[str, Any]:
    """Is the copy byte-identical to the source's complete lines? If not, lines missing and doubled."""
    complete = source[: source.rfind(b"\n") + 1]
    if copy is None:
        return {"identical": False, "copy_bytes": 0, "source_bytes": len(complete), "note": "no copy"}
    result: dict[str, Any] = {
        "identical": copy == complete,
        "copy_bytes": len(copy),
        "source_bytes": len(complete),
    }
    if not result["identical"]:
        want, got = Counter(line_ids(complete)), Counter(line_ids(copy))
        result["lines_missing"] = sum((want - got).values())
        result["lines_doubled"] = sum((got - want).values())
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = args.out / "peers-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    home = work / "home"
    home.mkdir()
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "code": code_version()}
    result["machine"]["loadavg_start"] = os.getloadavg()
    rng = random.Random(args.seed)
    sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    old_sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))

    # the old session: 40 days untouched; the live one: created empty
    old = make_session(home, HARNESS, old_sid)
    old_bytes = write_lines(old.path, old_sid, OLD_LINES, args.seed + 1, 0)
    month_ago = time.time() - 40 * 86400
    os.utime(old.path, (month_ago, month_ago))
    session = make_session(home, HARNESS, sid)

    with MotoServer(work / "moto.log") as moto, contextlib.ExitStack() as stack:
        s3 = moto.client()
        tools, missing = make_tools(args, work, moto, stack, home, sid)
        result["not_installed"] = missing
        readers: list[subprocess.Popen[bytes]] = []
        writers: list[subprocess.Popen[bytes]] = []
        try:
            # ---- start: each tool copies the old session, then follows the live one ----
            say(f"moto up; tools: {', '.join(t.name for t in tools)}; not installed: {missing or 'none'}")
            for tool in tools:
                if isinstance(tool, Tracecraft):
                    tool.mirror_once(old_sid)
                tool.start()
                spec = {"endpoint_url": moto.endpoint_url, "bucket": tool.bucket, "poll_ms": args.poll_ms}
                readers.append(
                    spawn_role("reader", {**spec, **tool.reader_spec(sid), "log": str(tool.reader_log)})
                )
            warm = write_lines(session.path, sid, WARMUP_LINES, args.seed + 2, 1)
            warm_ids = set(line_ids(warm))
            for tool in tools:
                wait_until(
                    lambda t=tool: warm_ids <= set(seen_ids(t.reader_log)), 90, f"{tool.name}: warm-up"
                )
                wait_until(
                    lambda t=tool: t.copy_of(s3, old_sid) == old_bytes, 60, f"{tool.name}: old session"
                )
            say("every tool holds the old session and the warm-up lines")
            time.sleep(1.0)

            # ---- the window ----
            result["machine"]["busy_cores_before_window"] = (
                wait_quiet(max_wait_s=60) if not args.quick else None
            )
            writer_log = work / "writer.jsonl"
            say(f"window: {args.seconds:.0f} s of writing")
            for tool in tools:
                tool.proxy.reset_counters()
            ticks0, t0 = cpu_ticks(), time.monotonic()
            cpu0 = {tool.name: tool.cpu_rss()[0] for tool in tools}
            for tool in tools:
                tool.peak_rss_kib = 0
                tool.samples.append(
                    {
                        "t": 0.0,
                        "source_size": session.path.stat().st_size,
                        "bytes_up": 0,
                        "bytes_down": 0,
                        "requests": 0,
                        "cpu_s": cpu0[tool.name],
                    }
                )
            stop_sampling = threading.Event()
            sampling = threading.Thread(
                target=sampler, args=(tools, session.path, t0, stop_sampling), daemon=True
            )
            sampling.start()
            writer_spec = {
                "path": str(session.path),
                "session_id": sid,
                "rate": args.rate,
                "seed": args.seed + 3,
                "shape": args.lines,
                "log": str(writer_log),
            }
            writer = spawn_role("writer", {**writer_spec, "seconds": args.seconds, "first": 1_000})
            writers.append(writer)
            if writer.wait(args.seconds + 60) != 0:
                raise RuntimeError(f"writer exited with {writer.returncode}")
            window_lines = read_jsonl(writer_log)
            window_ids = {row[0] for row in window_lines}
            caught_up = {}
            for tool in tools:
                caught_up[tool.name] = wait_until(
                    lambda t=tool: window_ids <= set(seen_ids(t.reader_log)), 90, f"{tool.name}: window lines"
                )
            t1 = time.monotonic()
            say("window: every line readable in every bucket")
            stop_sampling.set()
            sampling.join()
            window = {
                "seconds": t1 - t0,
                "writer_seconds": args.seconds,
                "daemon_env": daemon_env_overrides(args),
                "lines": len(window_lines),
                "source_bytes": sum(row[2] for row in window_lines),
                "busy_cores": busy_cores(ticks0, cpu_ticks(), t1 - t0),
            }
            window["source_bytes_per_s"] = window["source_bytes"] / args.seconds
            result["window"] = window
            per_tool: dict[str, Any] = {}
            for tool in tools:
                cpu1 = tool.cpu_rss()[0]
                cpu_s, peak = tool.cpu_and_peak(t0, t1, cpu0[tool.name], cpu1)
                per_tool[tool.name] = measure(
                    tool, window_lines, window, cpu_s, peak, caught_up[tool.name] - t0
                )
                per_tool[tool.name]["one_hour"] = one_hour(tool, per_tool[tool.name], window, args)
                per_tool[tool.name]["copy_absent"] = absences(tool.reader_log, t0, t1)
            result["tools"] = per_tool

            # ---- deletion and kill -9 ----
            tail_log = work / "writer-tail.jsonl"
            writer = spawn_role(
                "writer",
                {
                    **writer_spec,
                    "seconds": args.tail_seconds,
                    "seed": args.seed + 4,
                    "first": 1_000_000,
                    "log": str(tail_log),
                },
            )
            writers.append(writer)
            old.path.unlink()
            deleted_at = time.monotonic()
            say(f"old session deleted; kill -9 of each tool; {args.tail_seconds:.0f} s of writing")
            killers = [
                threading.Thread(
                    target=kill_at_exposed_moment,
                    args=(tool, sid, s3, max(args.rclone_every, 6.0) + 6, 1.0),
                    daemon=True,
                )
                for tool in tools
            ]
            time.sleep(min(2.0, args.tail_seconds / 4))
            for killer in killers:
                killer.start()
            for killer in killers:
                killer.join(args.tail_seconds + 60)
            if writer.wait(args.tail_seconds + 60) != 0:
                raise RuntimeError(f"writer exited with {writer.returncode}")
            all_ids = window_ids | {row[0] for row in read_jsonl(tail_log)} | warm_ids
            for tool in tools:
                after = per_tool[tool.name]
                try:
                    done = wait_until(
                        lambda t=tool: all_ids <= set(seen_ids(t.reader_log)), 90, f"{tool.name}: after kill"
                    )
                    after["caught_up_after_kill_s"] = done - tool.kills[-1]["killed_at"]
                except RuntimeError as exc:
                    after["caught_up_after_kill_s"] = None
                    after["catch_up_error"] = str(exc)
            if any(isinstance(t, Rclone) for t in tools):
                time.sleep(args.rclone_every + 1)  # one more tick after the last line
            say("checking the copies")
            source = session.path.read_bytes()
            for tool in tools:
                r = per_tool[tool.name]
                r["kill"] = tool.kills[-1] if tool.kills else None
                r["copy_after_kill"] = copy_check(source, tool.copy_of(s3, sid))
                r["deleted_old_session"] = {
                    **copy_check(old_bytes, tool.copy_of(s3, old_sid)),
                    "checked_s_after_delete": time.monotonic() - deleted_at,
                }
                r["running_at_end"] = bool(tool.root_pids()) or isinstance(tool, Rclone)
                if isinstance(tool, Rclone):
                    r["rclone_runs_failed"] = sum(1 for run_ in tool.runs if run_["rc"] not in (0, -9))
                    r["rclone_runs"] = len(tool.runs)
        finally:
            for tool in tools:
                with contextlib.suppress(Exception):
                    tool.stop()
            for proc in writers + readers:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(10)
    result["machine"]["loadavg_end"] = os.getloadavg()
    return result


def measure(
    tool: Tool,
    window_lines: list[Any],
    window: dict[str, Any],
    cpu_s: float,
    peak_kib: int,
    caught_up_s: float,
) -> dict[str, Any]:
    """Lag, wire cost (total, by kind, over time), CPU and RSS of one tool in the window."""
    seen = seen_ids(tool.reader_log)
    lags = sorted(seen[row[0]] - row[1] for row in window_lines)
    log = tool.proxy.request_log
    bytes_up = tool.proxy.bytes_up
    source = window["source_bytes"]
    split: dict[str, dict[str, int]] = {}
    for request in log:
        kind = split.setdefault(kind_of(request), {"count": 0, "head_bytes": 0, "body_bytes": 0})
        kind["count"] += 1
        kind["head_bytes"] += request.head_bytes
        kind["body_bytes"] += request.body_bytes
    return {
        "lag_s": {
            "p50": percentile(lags, 50),
            "p95": percentile(lags, 95),
            "p99": percentile(lags, 99),
            "max": lags[-1],
            "all": [round(x, 4) for x in lags],
        },
        "wire": {
            "bytes_up": bytes_up,
            "bytes_down": tool.proxy.bytes_down,
            "requests": len(log),
            "bytes_up_per_source_byte": bytes_up / source,
            "requests_per_source_mb": len(log) / (source / 1e6),
            "requests_per_min": len(log) / window["seconds"] * 60,
            "split": split,
            "meta_json_bodies": [r.body_bytes for r in log if kind_of(r) == "PUT meta.json"],
        },
        "growth": growth(tool.samples),
        "samples": tool.samples,
        "cpu_s": cpu_s,
        "cpu_pct_of_one_core": cpu_s / window["seconds"] * 100,
        "peak_rss_kib": peak_kib,
        "window_caught_up_s": caught_up_s,
    }


def one_hour(
    tool: Tool, t: dict[str, Any], window: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Bytes up per source byte one hour into the session, projected from what grows in the window.

    tracemirrord: nothing grows (meta.json keeps a window of parts): the window's figure. tracecraft:
    meta.json gains one entry per part and is PUT whole every cycle: its body, fitted linearly over the
    window, at 3600 / interval parts. rclone: every tick uploads the whole file: file size at one hour
    over the bytes written in one tick. Everything else (heads, parts, listings) as measured.
    """
    rate, wire = window["source_bytes_per_s"], t["wire"]
    if isinstance(tool, Tracecraft):
        bodies = wire["meta_json_bodies"]
        if len(bodies) < 2:
            return {}
        interval = tool.interval or 5.0
        per_part = (bodies[-1] - bodies[0]) / (len(bodies) - 1)
        meta_at_1h = bodies[0] + per_part * 3600 / interval
        rest = (wire["bytes_up"] - sum(bodies)) / window["source_bytes"]
        return {
            "meta_json_bytes_per_part": per_part,
            "meta_json_body_at_1h": meta_at_1h,
            "up_per_source_byte_at_1h": rest + meta_at_1h / (rate * interval),
        }
    if isinstance(tool, Rclone):
        file_at_1h = t["samples"][0]["source_size"] + rate * 3600
        heads = sum(s["head_bytes"] for s in wire["split"].values()) / window["source_bytes"]
        return {
            "file_bytes_at_1h": file_at_1h,
            "up_per_source_byte_at_1h": file_at_1h / (rate * tool.every) + heads,
        }
    return {"up_per_source_byte_at_1h": wire["bytes_up_per_source_byte"]}


def absences(reader_log: Path, t0: float, t1: float) -> dict[str, Any]:
    """How often and how long the live session's copy was missing from the bucket in [t0, t1]
    (rclone's reader logs when its object disappears; the next row with ids is its return)."""
    spans, gone_at = [], None
    for row in read_jsonl(reader_log):
        if row.get("absent"):
            gone_at = row["seen"] if gone_at is None else gone_at
        elif row["ids"] and gone_at is not None:
            if t0 <= gone_at <= t1:
                spans.append(row["seen"] - gone_at)
            gone_at = None
    return {"times": len(spans), "seconds": sum(spans), "longest_s": max(spans, default=0.0)}


def kind_of(request: RequestRecord) -> str:
    """bench_live's classify, with rclone's whole-file PUT named as such."""
    kind = classify(request)
    if kind == "PUT other" and request.target.partition("?")[0].endswith(".jsonl"):
        return "PUT whole file"
    return kind


def growth(samples: list[dict[str, Any]], points: int = 6) -> list[dict[str, float]]:
    """Bytes up per source byte in consecutive slices of the window: flat, or growing with the session?"""
    if len(samples) < 2:
        return []
    base = samples[0]["source_size"]
    step = max(1, (len(samples) - 1) // points)
    marks = samples[::step]
    if marks[-1] is not samples[-1]:
        marks.append(samples[-1])
    rows = []
    for a, b in itertools.pairwise(marks):
        src = b["source_size"] - a["source_size"]
        rows.append(
            {
                "from_s": round(a["t"], 1),
                "to_s": round(b["t"], 1),
                "session_kb_at_end": round((b["source_size"] - base) / 1000, 1),
                "source_bytes": src,
                "bytes_up": b["bytes_up"] - a["bytes_up"],
                "requests": b["requests"] - a["requests"],
                "up_per_source_byte": (b["bytes_up"] - a["bytes_up"]) / src if src else float("nan"),
            }
        )
    return rows


# ---------- report ----------


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def report(r: dict[str, Any]) -> str:
    m, w = r["machine"], r["window"]
    out = [
        f"machine: {m['nproc']} x {m['cpu_model']}, {m['ram_gib']} GiB RAM, Python {m['python']}, "
        f"{m['date_utc']}, tracemirror at {r['code']}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_start'])}, all processes in the window "
        f"{w['busy_cores']:.2f} busy cores of {m['nproc']}",
        f"window: {w['writer_seconds']:.0f} s of writing ({w['seconds']:.1f} s until every copy caught up), "
        f"{w['lines']} lines, {w['source_bytes']} source bytes ({w['source_bytes_per_s'] / 1000:.2f} KB/s)"
        + (f"; tracemirrord's environment: {w['daemon_env']}" if w.get("daemon_env") else ""),
        "",
    ]
    figures, copies = [], []
    for name in TOOLS:
        if name in r["not_installed"]:
            figures.append([name, "not installed", *["-"] * 7])
            copies.append([name, "not installed", *["-"] * 3])
            continue
        t = r["tools"].get(name)
        if t is None:
            continue
        lag, wire, kill, old = t["lag_s"], t["wire"], t["copy_after_kill"], t["deleted_old_session"]
        hour = t.get("one_hour", {}).get("up_per_source_byte_at_1h")
        figures.append(
            [
                name,
                f"{lag['p50']:.2f}",
                f"{lag['p99']:.2f}",
                f"{wire['bytes_up_per_source_byte']:.3f}",
                f"{hour:.2f}" if hour is not None else "-",
                f"{wire['bytes_down'] / w['source_bytes']:.3f}",
                f"{wire['requests_per_source_mb']:.0f} ({wire['requests_per_min']:.0f}/min)",
                f"{t['cpu_s']:.2f} ({t['cpu_pct_of_one_core']:.2f}%)",
                f"{t['peak_rss_kib'] / 1024:.1f}",
            ]
        )
        gone = t.get("copy_absent", {"times": None})
        copies.append(
            [
                name,
                copy_word(kill),
                "kept" if old["identical"] else f"NOT kept ({old.get('note', old['copy_bytes'])})",
                (
                    f"{gone['times']}x, {gone['seconds']:.1f} s in all, longest {gone['longest_s']:.1f} s"
                    if gone["times"]
                    else ("never" if gone["times"] == 0 else "not measured")
                ),
                str(t["kill"].get("key", "")).rsplit("/", 1)[-1] if t["kill"] else "-",
            ]
        )
    out.append(
        table(
            [
                "tool",
                "lag p50 s",
                "lag p99 s",
                "bytes up / source byte",
                "same, 1 h into the session (projected)",
                "bytes down / source byte",
                "requests / source MB",
                "CPU s (% of a core)",
                "peak RSS MiB",
            ],
            figures,
        )
    )
    out += [
        "",
        table(
            [
                "tool",
                "copy = source after kill -9 + restart",
                "old session after its file was deleted",
                "live session's copy gone from the bucket (window)",
                "killed right after",
            ],
            copies,
        ),
    ]
    if "tracemirrord" in r.get("tools", {}):
        t = r["tools"]["tracemirrord"]
        out += [
            "",
            f"tracemirrord against issue 11's goals: lag p99 {t['lag_s']['p99']:.2f} s "
            f"(today ~{TODAY_LAG_P99_S}, "
            f"design <= {GOAL_LAG_P99_S}: {verdict(t['lag_s']['p99'] <= GOAL_LAG_P99_S)}); "
            f"{t['wire']['bytes_up_per_source_byte']:.3f} bytes up per source byte "
            f"(<= {GOAL_BYTES_PER_SOURCE_BYTE}: "
            f"{verdict(t['wire']['bytes_up_per_source_byte'] <= GOAL_BYTES_PER_SOURCE_BYTE)})",
        ]
    for name, t in r.get("tools", {}).items():
        wire = t["wire"]
        out += [
            "",
            f"{name}: bytes up by kind of request",
            table(
                [
                    "request kind",
                    "count",
                    "head bytes",
                    "body bytes (Content-Length)",
                    "share of bytes up",
                    "per source byte",
                ],
                [
                    [
                        kind,
                        s["count"],
                        s["head_bytes"],
                        s["body_bytes"],
                        f"{(s['head_bytes'] + s['body_bytes']) / max(1, wire['bytes_up']) * 100:.1f}%",
                        f"{(s['head_bytes'] + s['body_bytes']) / w['source_bytes']:.3f}",
                    ]
                    for kind, s in sorted(
                        wire["split"].items(), key=lambda kv: -kv[1]["head_bytes"] - kv[1]["body_bytes"]
                    )
                ],
            ),
            f"{name}: bytes up per source byte as the session grows",
            table(
                ["interval", "session KB at end", "source bytes", "bytes up", "up / source", "requests"],
                [
                    [
                        f"{g['from_s']:.0f}-{g['to_s']:.0f} s",
                        g["session_kb_at_end"],
                        g["source_bytes"],
                        g["bytes_up"],
                        f"{g['up_per_source_byte']:.3f}",
                        g["requests"],
                    ]
                    for g in t["growth"]
                ],
            ),
        ]
        if wire["meta_json_bodies"]:
            bodies = wire["meta_json_bodies"]
            out.append(
                f"{name}: meta.json bodies PUT in the window: {len(bodies)}, "
                f"first {bodies[0]} B, last {bodies[-1]} B"
            )
        if t.get("one_hour"):
            out.append(
                f"{name}: projected one hour into the session: "
                + ", ".join(
                    f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in t["one_hour"].items()
                )
            )
        out.append(f"{name}: kill -9: {t['kill']}; copy after: {t['copy_after_kill']}")
        if "rclone_runs" in t:
            out.append(f"{name}: {t['rclone_runs']} runs, {t['rclone_runs_failed']} failed (see rclone.log)")
    return "\n".join(out)


def copy_word(check: dict[str, Any]) -> str:
    if check["identical"]:
        return "identical"
    extra = ", ".join(f"{k} {check[k]}" for k in ("lines_missing", "lines_doubled") if k in check)
    return f"**differs** ({check['copy_bytes']} vs {check['source_bytes']} B{', ' + extra if extra else ''})"


# ---------- plots ----------


def plot(r: dict[str, Any], lag_png: Path, bytes_png: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"tracemirrord": "tab:blue", "tracecraft": "tab:orange", "rclone": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, t in r["tools"].items():
        lags = t["lag_s"]["all"]
        ax.plot(lags, [(i + 1) / len(lags) for i in range(len(lags))], label=name, color=colors.get(name))
    ax.axvline(GOAL_LAG_P99_S, color="grey", linestyle="--", linewidth=1)
    ax.text(GOAL_LAG_P99_S * 1.03, 0.03, f"goal p99 {GOAL_LAG_P99_S} s", color="grey", fontsize=8)
    ax.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("lag: append to readable in the bucket (s, log scale)")
    ax.set_ylabel("fraction of lines")
    ax.set_title(f"Lag CDF, one session at {r['window']['source_bytes_per_s'] / 1000:.1f} KB/s ({r['code']})")
    ax.legend(loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(lag_png, dpi=110)
    plt.close(fig)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    slide = 30  # seconds (one sample a second): three rclone ticks, six tracecraft cycles
    biggest = 0.0
    for name, t in r["tools"].items():
        samples = t["samples"]
        base = samples[0]["source_size"]
        xs = [(s["source_size"] - base) / 1000 for s in samples]
        top.plot(xs, [s["bytes_up"] / 1000 for s in samples], label=name, color=colors.get(name))
        ratio_x, ratio_y = [], []
        for a, b in zip(samples, samples[slide:], strict=False):  # ratio over a sliding window
            if b["source_size"] > a["source_size"]:
                ratio_x.append((b["source_size"] - base) / 1000)
                ratio_y.append((b["bytes_up"] - a["bytes_up"]) / (b["source_size"] - a["source_size"]))
        bottom.plot(ratio_x, ratio_y, label=name, color=colors.get(name))
        biggest = max(biggest, xs[-1] if xs else 0)
    ref = [biggest * i / 100 for i in range(1, 101)]
    top.plot(ref, ref, color="grey", linewidth=1, linestyle=":", label="1 byte per source byte")
    top.plot(
        ref,
        [x * GOAL_BYTES_PER_SOURCE_BYTE for x in ref],
        color="grey",
        linewidth=1,
        linestyle="--",
        label=f"goal {GOAL_BYTES_PER_SOURCE_BYTE}",
    )
    top.set_yscale("log")
    top.set_ylabel("bytes sent so far (KB, log scale)")
    top.set_title("Bytes sent to the bucket as the session grows")
    top.legend(fontsize=8)
    top.grid(True, which="both", alpha=0.3)
    bottom.axhline(GOAL_BYTES_PER_SOURCE_BYTE, color="grey", linestyle="--", linewidth=1)
    bottom.set_yscale("log")
    bottom.set_xlabel("session length (KB written in the window)")
    bottom.set_ylabel(f"bytes up / source byte, last {slide} s (log)")
    bottom.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(bytes_png, dpi=110)
    plt.close(fig)
    return [lag_png, bytes_png]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=300.0, help="window: how long the writer appends (300)"
    )
    parser.add_argument(
        "--tail-seconds", type=float, default=30.0, help="writing during deletion and kill -9 (30)"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="lines per second (10)")
    parser.add_argument("--poll-ms", type=float, default=50.0, help="reader poll interval (50)")
    parser.add_argument("--rclone-every", type=float, default=10.0, help="rclone timer period in s (10)")
    parser.add_argument(
        "--tracecraft-interval", type=float, help="tracecraft's --interval (default: its own, 5 s)"
    )
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma list (default: all three)")
    parser.add_argument(
        "--daemon-env",
        action="append",
        metavar="NAME=VALUE",
        help="set in tracemirrord's environment (repeatable), e.g. TRACEMIRROR_WATCH=poll",
    )
    parser.add_argument(
        "--lines", choices=("tests", "realistic"), default="tests", help="line shape (bench_live)"
    )
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--quick", action="store_true", help="a few seconds per phase, no plots (CI)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--report", type=Path, help="print the report (and plots) of a saved JSON result")
    parser.add_argument(
        "--out", type=Path, default=OUT_DIR, help="work dir and JSON results (benchmarks/out)"
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
    if args.report:
        result = json.loads(args.report.read_text())
        print(report(result))
        if not args.no_plots:
            pngs = plot(result, BENCH_DIR / "peers-lag-cdf.png", BENCH_DIR / "peers-bytes.png")
            print("plots: " + ", ".join(str(p.relative_to(ROOT)) for p in pngs))
        return
    if args.quick:
        args.seconds, args.tail_seconds, args.rclone_every, args.no_plots = 3.0, 3.0, 2.0, True
        args.tracecraft_interval = args.tracecraft_interval or 2.0
    result = run(args)
    print(report(result))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"peers-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nsaved {path}")
    if not args.no_plots:
        try:
            pngs = plot(result, BENCH_DIR / "peers-lag-cdf.png", BENCH_DIR / "peers-bytes.png")
            print("plots: " + ", ".join(str(p.relative_to(ROOT)) for p in pngs))
        except ImportError:
            print("plots skipped: matplotlib is not installed (pip install -e '.[bench]')")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
