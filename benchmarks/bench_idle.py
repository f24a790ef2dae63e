"""Idle cost: 10,000 session files and no activity; the daemon's CPU and resident memory.

Design goal (shared/docs/design.md section 9): under 0.5% of one core and under 100 MB resident,
whether the files are a month old or were written a minute ago.
Lays out N Claude-Code-shaped sessions (a few lines each) under a temp HOME, mirrors them once with
``tracemirrord --once`` (so the steady state is "everything mirrored"), sets every file's mtime to
``--age`` (a month or a minute) before now, then starts the daemon, lets it settle, and measures
CPU seconds and RSS over a window. The load average of the machine is printed beside the figures
(other work on a shared machine shows in them).

    python benchmarks/bench_idle.py [--sessions 10000] [--age month|minute] [--settle 20] [--seconds 60]

``--harness hermes``: one hermes ``state.db`` (WAL) holding ``--sessions`` sessions of 20 rows each
(50 by default), its rows and files last written ``--age`` ago (``two-hours``, hermes's idle goal
case, or ``minute``), mirrored once by the daemon itself; once every session is parked (its
meta.json written, ``tracemirrorctl status --json``) measured like the rest (goal: an idle database
under 0.1% of one core). Bounded: a few minutes at most, whatever the machine's load.

    python benchmarks/bench_idle.py --harness hermes [--sessions 50] [--age two-hours|minute]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from daemon import status_json
from hermes_writer import add_session, connect, create_db, insert, message
from sessions import make_session, record
from sysinfo import cpu_seconds, machine, status_kib

AGES_S = {"month": 30 * 86400.0, "two-hours": 7200.0, "minute": 60.0}
AGO = {"month": "a month", "two-hours": "two hours", "minute": "a minute"}
HERMES_ROWS = 20  # per session


def lay_out(home: Path, sessions: int) -> list[Path]:
    import random

    rng = random.Random(1)
    paths = []
    for n in range(sessions):
        s = make_session(home, "claude-code")
        # spread over many project dirs, as real users have
        target = s.path.parent.parent / f"-home-dev-proj{n % 200}" / s.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        s.path.rename(target)
        target.write_bytes(b"".join(record("claude-code", s.session_id, i, rng) for i in range(3)))
        paths.append(target)
    return paths


def age_files(paths: list[Path], age_s: float) -> None:
    """Make every file look last written ``age_s`` ago (after the first mirror, just before the start)."""
    then = time.time() - age_s
    for path in paths:
        os.utime(path, (then, then))


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` shows them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def lay_out_hermes(home: Path, sessions: int, age_s: float) -> tuple[Path, dict[str, int]]:
    """A hermes state.db with ``sessions`` sessions of HERMES_ROWS rows, all written ``age_s`` ago;
    returns the database and each session's last row id."""
    db = home / ".hermes" / "state.db"
    create_db(db)
    conn = connect(db)
    rng = random.Random(20261127)
    last: dict[str, int] = {}
    then = time.time() - age_s
    try:
        for n in range(sessions):
            sid = f"20261127_0900{n // 60:02d}_{n:06x}"
            add_session(conn, sid, started_at=then - 100)
            for i in range(HERMES_ROWS):
                values = message(sid, i, rng)
                values["timestamp"] = then - HERMES_ROWS + i
                last[sid] = insert(conn, values)["id"]
    finally:
        conn.close()
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists():
            os.utime(path, (then, then))
    return db, last


def hermes_mirrored(bucket: Path, last: dict[str, int]) -> bool:
    """Every session's last row is in its last part (the embedded bucket's files)."""
    for sid, row in last.items():
        prefix = bucket / "default" / "sessions" / "hermes" / sid
        parts = sorted(prefix.glob("part-*.jsonl")) if prefix.exists() else []
        if not parts or json.loads(parts[-1].read_bytes().splitlines()[-1])["id"] != row:
            return False
    return True


def parked(env: dict[str, str]) -> tuple[int, int]:
    """(sessions, parked sessions) as ``tracemirrorctl status --json`` reports them."""
    doc = status_json(env)
    if not doc:
        return 0, -1
    harnesses = doc["harnesses"]
    return sum(h["sessions"] for h in harnesses), sum(h["parked"] for h in harnesses)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--harness", choices=("claude-code", "hermes"), default="claude-code")
    parser.add_argument("--sessions", type=int, help="10,000 files; for hermes 50 sessions")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to let start-up finish")
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window")
    parser.add_argument(
        "--age", choices=sorted(AGES_S), default="month", help="how long ago the files were written"
    )
    parser.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the daemon")
    args = parser.parse_args()
    hermes = args.harness == "hermes"
    if args.sessions is None:
        args.sessions = 50 if hermes else 10_000
    if hermes and args.age == "month":
        args.age = "two-hours"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACEMIRROR_", "XDG_"))}
        env.update(
            HOME=str(home),
            XDG_DATA_HOME=str(root / "data"),
            XDG_STATE_HOME=str(root / "state"),
            XDG_CONFIG_HOME=str(root / "config"),
            TRACEMIRROR_HARNESSES=args.harness,
            TRACEMIRROR_LOG_FORMAT="json",
        )
        env.update(item.split("=", 1) for item in args.env)
        started = time.monotonic()
        if hermes:
            # the daemon mirrors the database itself (its first look, then idle), as a user's would
            bucket = root / "data" / "tracemirror" / "bucket"
            env.update(HERMES_HOME=str(home / ".hermes"), TRACEMIRROR_BUCKET=f"file://{bucket}")
            _, last = lay_out_hermes(home, args.sessions, AGES_S[args.age])
        else:
            paths = lay_out(home, args.sessions)
        print(f"laid out {args.sessions} sessions in {time.monotonic() - started:.1f}s", flush=True)
        if not hermes:
            started = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "tracemirrord", "--once"], env=env, check=True, capture_output=True
            )
            print(f"first mirror (--once) took {time.monotonic() - started:.1f}s", flush=True)
            age_files(paths, AGES_S[args.age])
        log = (root / "daemon.log").open("wb")
        daemon = subprocess.Popen([sys.executable, "-m", "tracemirrord"], env=env, stdout=log, stderr=log)
        try:
            if hermes:
                started = time.monotonic()
                while not hermes_mirrored(bucket, last):
                    if time.monotonic() - started > 120 or daemon.poll() is not None:
                        raise SystemExit("the hermes database was not mirrored within 120 s")
                    time.sleep(0.5)
                print(f"first mirror (the daemon) took {time.monotonic() - started:.1f}s", flush=True)
                # Idle means after the first mirror's tail: each session's meta.json is written again
                # meta_interval (30 s) after its first parts, and then its follower parks. Measuring
                # from the parts alone put that tail in the window (0.11-0.24% at 7e329ff-9c9347a).
                while True:
                    sessions, still = parked(env)
                    if sessions == args.sessions and still == sessions:
                        break
                    if time.monotonic() - started > 180 or daemon.poll() is not None:
                        raise SystemExit(f"{still} of {sessions} sessions parked after 180 s")
                    time.sleep(1.0)
                print(f"every session parked after {time.monotonic() - started:.1f}s", flush=True)
            time.sleep(args.settle)
            load_before = load_average()
            cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(args.seconds)
            cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
            load_after = load_average()
            rss_kib = status_kib(daemon.pid, "VmRSS")
            hwm_kib = status_kib(daemon.pid, "VmHWM")
            # after the window: what asking costs with this many sessions
            asked: dict[str, list[float]] = {"status": [], "status --json": []}
            for verb in asked:
                for _ in range(5):
                    t = time.monotonic()
                    done = subprocess.run(
                        [sys.executable, "-m", "tracemirrord.ctl", *verb.split()],
                        env=env,
                        capture_output=True,
                        check=False,
                    )
                    asked[verb].append(time.monotonic() - t)
                if verb == "status":
                    after_human_kib = status_kib(daemon.pid, "VmHWM")
            listed = len(json.loads(done.stdout)["sessions"]) if done.stdout else 0
            after_kib = status_kib(daemon.pid, "VmHWM")
        finally:
            daemon.terminate()
            daemon.wait(30)
        info = machine()
        print(f"machine: {info}")
        print(
            f"{args.harness} sessions: {args.sessions}, written {AGO[args.age]} ago, "
            f"window: {t1 - t0:.0f}s after "
            f"{args.settle:.0f}s settle; load average before {load_before}, after {load_after}"
        )
        print(f"cpu: {100 * (cpu1 - cpu0) / (t1 - t0):.2f}% of one core")
        print(f"rss: {rss_kib / 1024:.1f} MiB (peak {hwm_kib / 1024:.1f} MiB)")
        print(
            f"tracemirrorctl status: median {sorted(asked['status'])[2]:.2f} s per call (client start "
            f"included), daemon peak RSS after {after_human_kib / 1024:.1f} MiB"
        )
        print(
            f"tracemirrorctl status --json: {listed} sessions listed, median "
            f"{sorted(asked['status --json'])[2]:.2f} s per call, daemon peak RSS after "
            f"{after_kib / 1024:.1f} MiB"
        )


if __name__ == "__main__":
    main()
