"""Sources of a kind or version the daemon does not understand: named in --check and the logs, skipped.

A hermes database without the expected tables and a gemini-cli file whose first line has no
sessionId sit beside a normal Claude Code session: ``--check`` names both, the running daemon
logs both by path, keeps every harness task running, and still mirrors the normal session.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

from daemon import Daemon, daemon_env, read_back, wait_for
from sessions import make_session, record

from tracemirrord.model import SessionKey


def test_unknown_sources_are_named_and_skipped(tmp_path: Path) -> None:
    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}")
    home = Path(env["HOME"])
    hermes_db = home / ".hermes" / "state.db"
    hermes_db.parent.mkdir(parents=True)
    conn = sqlite3.connect(hermes_db)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")  # no sessions/messages
    conn.commit()
    conn.close()
    gemini = home / ".gemini" / "tmp" / "proj" / "chats" / "session-2026-11-27T10-00-abcdef12.jsonl"
    gemini.parent.mkdir(parents=True)
    gemini.write_text(json.dumps({"format": "something new", "version": 99}) + "\n")
    normal = make_session(home, "claude-code")
    normal.path.write_bytes(record("claude-code", normal.session_id, 0, random.Random(1)))

    check = subprocess.run(
        [sys.executable, "-m", "tracemirrord", "--check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stderr
    not_followed = [line for line in check.stdout.splitlines() if "not followed" in line]
    assert any(str(hermes_db) in line for line in not_followed), check.stdout
    assert any(str(gemini) in line and "sessionId" in line for line in not_followed), check.stdout

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        wait_for(
            lambda: (
                read_back(
                    env["TRACEMIRROR_BUCKET"], SessionKey("claude-code", normal.session_id)
                ).generations.get(0)
                is not None
            ),
            30,
            "the normal session",
        )
        wait_for(lambda: str(gemini) in daemon.log() and str(hermes_db) in daemon.log(), 10, "both named")
        assert daemon.alive()
        assert daemon.stop() == 0
    events = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    refused = {e.get("path") for e in events if e.get("event") == "session refused"}
    assert {str(hermes_db), str(gemini)} <= refused
    assert not [e for e in events if e.get("event") == "harness task failed; restarting"]
