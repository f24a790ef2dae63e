"""A backfill takes the newest sessions first, so today's work is in the bucket before last quarter's.

Real session files with set mtimes, the embedded bucket, one upload slot: the order in which the
sessions' parts land (the daemon's own "part uploaded" log lines, in the order it wrote them) must
be newest source first. The discovery order (names, directory order) deliberately differs.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon import daemon_env
from mirror_context import local_context
from sessions import make_session, record

from tracemirrord.harnesses import REGISTRY
from tracemirrord.redact import Redactor
from tracemirrord.supervisor import HarnessTask

DAY = 86400.0
# session id -> age of its file in days; named so that no name order matches the age order
AGES = {"sess-a": 10.0, "sess-b": 1.0, "sess-c": 30.0, "sess-d": 0.0, "sess-e": 5.0, "sess-f": 90.0}


def write_sessions(home: Path, ages: dict[str, float], now: float, lines: int = 4) -> None:
    """Claude Code sessions of a few lines (one part each), each last modified ``age`` days ago."""
    rng = random.Random(7)
    for session_id, age in ages.items():
        s = make_session(home, "claude-code", session_id)
        with s.path.open("ab") as f:
            size = s.path.stat().st_size
            f.write(b"".join(record("claude-code", session_id, size + i, rng) for i in range(lines)))
        os.utime(s.path, (now - age * DAY, now - age * DAY))


def parts_landed(log: str) -> list[tuple[str, int]]:
    """(session, seq) of every part, in the order the daemon put them."""
    out = []
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "part uploaded":
            out.append((entry["session"], entry["seq"]))
    return out


def test_once_puts_the_newest_sessions_first(tmp_path: Path) -> None:
    """``--once`` on a first start, then again after some sessions grew: newest source first."""
    env = daemon_env(
        tmp_path,
        f"file://{tmp_path / 'bucket'}",
        {"TRACEMIRROR_HARNESSES": "claude-code", "TRACEMIRROR_UPLOAD_CONCURRENCY": "1"},
    )
    home = Path(env["HOME"])
    now = time.time()
    write_sessions(home, AGES, now)
    once = [sys.executable, "-m", "tracemirrord", "--once"]

    run = subprocess.run(once, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert parts_landed(run.stderr + run.stdout) == [
        ("sess-d", 0),
        ("sess-b", 0),
        ("sess-e", 0),
        ("sess-a", 0),
        ("sess-c", 0),
        ("sess-f", 0),
    ]

    # Later: three old sessions grew (their mtimes set apart again) and one more old file showed
    # up; the untouched ones need nothing. Those that need work still go newest first.
    write_sessions(home, {"sess-f": 2.0, "sess-c": 0.2, "sess-a": 7.0, "sess-g": 40.0}, now)
    run = subprocess.run(once, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert parts_landed(run.stderr + run.stdout) == [
        ("sess-c", 1),
        ("sess-f", 1),
        ("sess-a", 1),
        ("sess-g", 0),
    ]


@pytest.mark.anyio
async def test_first_start_starts_the_newest_sessions_first(tmp_path: Path) -> None:
    """The daemon's first discovery (not ``--once``) hands out its followers newest first too:
    they take the upload slots in the order they are started."""
    home = tmp_path / "home"
    write_sessions(home, AGES, time.time())
    harness = REGISTRY["claude-code"]()
    async with local_context(
        tmp_path,
        redactor=Redactor(),
        flush_interval_s=1.0,
        part_max_bytes=4 << 20,
        max_line_bytes=1 << 20,
        upload_slots=1,
    ) as ctx:
        task = HarnessTask(harness, harness.default_roots({}, home), ctx, scan_interval_s=1.0)
        started = await task.discover()
    assert [f.key.session_id for f in started] == ["sess-d", "sess-b", "sess-e", "sess-a", "sess-c", "sess-f"]


def test_once_goes_newest_first_across_agents(tmp_path: Path) -> None:
    """Claude Code and Codex sessions whose ages interleave: ``--once`` takes them in one order,
    newest source first over both agents (not one agent after the other)."""
    env = daemon_env(
        tmp_path,
        f"file://{tmp_path / 'bucket'}",
        {"TRACEMIRROR_HARNESSES": "claude-code,codex", "TRACEMIRROR_UPLOAD_CONCURRENCY": "1"},
    )
    home = Path(env["HOME"])
    now = time.time()
    ages = {  # session id -> (harness, age in days)
        "0a000000-0000-4000-8000-00000000000a": ("claude-code", 0.0),
        "0b000000-0000-4000-8000-00000000000b": ("codex", 5.0),
        "0c000000-0000-4000-8000-00000000000c": ("claude-code", 20.0),
        "0d000000-0000-4000-8000-00000000000d": ("codex", 1.0),
        "0e000000-0000-4000-8000-00000000000e": ("claude-code", 40.0),
    }
    rng = random.Random(3)
    for session_id, (harness, age) in ages.items():
        s = make_session(home, harness, session_id)
        s.path.write_bytes(b"".join(record(harness, session_id, i, rng) for i in range(3)))
        os.utime(s.path, (now - age * DAY, now - age * DAY))
    run = subprocess.run(
        [sys.executable, "-m", "tracemirrord", "--once"], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert [session for session, _ in parts_landed(run.stderr + run.stdout)] == [
        "0a000000-0000-4000-8000-00000000000a",
        "0d000000-0000-4000-8000-00000000000d",
        "0b000000-0000-4000-8000-00000000000b",
        "0c000000-0000-4000-8000-00000000000c",
        "0e000000-0000-4000-8000-00000000000e",
    ]
