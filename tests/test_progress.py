"""``tracemirrord --once`` progress: a bar on a terminal (drawn on a real pseudo-terminal here), log
lines elsewhere. The rendered lines are written out by hand."""

from __future__ import annotations

import os
import pty
import random
import re
import subprocess
import sys
from pathlib import Path

from daemon import daemon_env
from sessions import make_session, record

from tracemirrord.progress import render_progress

MIB = 2**20


def test_render_progress_midway() -> None:
    line = render_progress(12, 200, 150 * MIB, 600 * MIB, 3.0, 100)
    assert line == (
        "[#######.......................]  25%  12/200 sessions  150.0 MiB/600.0 MiB  50.0 MiB/s  ETA 0:09"
    )


def test_render_progress_at_the_start_knows_no_rate() -> None:
    line = render_progress(0, 3, 0, 5 * 1024, 0.0, 100)
    assert line == "[..............................]   0%  0/3 sessions  0 B/5.0 KiB  0 B/s  ETA ?"


def test_render_progress_long_eta_and_narrow_terminal() -> None:
    line = render_progress(1, 9, MIB, 10 * 2**30, 1.0, 90)
    assert line.endswith("ETA 2:50:39") and line.startswith("[") and len(line) <= 90
    assert render_progress(9, 9, MIB, MIB, 1.0, 30) == "100%  9/9 sessions  1.0 MiB/1."


def test_once_on_a_terminal_draws_the_bar(tmp_path: Path) -> None:
    """stderr a pseudo-terminal: the bar is drawn (carriage returns), ends at 100% on its own line."""
    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}", {"TRACEMIRROR_LOG_FORMAT": "json"})
    s = make_session(Path(env["HOME"]), "claude-code")
    rng = random.Random(1)
    s.path.write_bytes(b"".join(record("claude-code", s.session_id, i, rng) for i in range(200)))
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tracemirrord", "--once"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=follower,
            timeout=60,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    out = b"".join(chunks).decode()
    assert proc.returncode == 0
    assert "\r[" in out
    drawn = [piece for piece in out.replace("\n", "\r").split("\r") if piece.startswith("[")]
    assert re.match(r"\[#+\] 100%  1/1 sessions  84\.6 KiB/84\.6 KiB  ", drawn[-1]), drawn[-1]
