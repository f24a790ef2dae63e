"""Session metadata in meta.json comes from each harness's records, and only from redacted ones.

A Claude Code session whose cwd and git branch hold a token: meta.json's cwd has the token
redacted (as the part has), and model, git branch and agent version come from the records. The
expected values are written out here, not computed by tracemirrord.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from daemon import daemon_env
from sessions import make_session

TOKEN = "ghp_" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa"  # a GitHub token's shape; not a real one


def test_claude_code_metadata_from_redacted_records(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    env = daemon_env(tmp_path, f"file://{bucket}")
    s = make_session(Path(env["HOME"]), "claude-code")
    cwd = f"/home/dev/{TOKEN}/proj"
    header = {
        "type": "user",
        "cwd": cwd,
        "sessionId": s.session_id,
        "version": "2.1.7",
        "gitBranch": "feature/login",
        "message": {"role": "user", "content": "fix the login test"},
        "uuid": "u-0",
        "timestamp": "2026-11-27T09:00:00.000Z",
    }
    reply = {
        "type": "assistant",
        "cwd": cwd,
        "sessionId": s.session_id,
        "message": {"role": "assistant", "model": "claude-opus-4-5", "content": "done"},
        "uuid": "u-1",
        "timestamp": "2026-11-27T09:00:05.000Z",
    }
    s.path.write_text(json.dumps(header) + "\n" + json.dumps(reply) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "tracemirrord", "--once"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    meta_path = bucket / "default" / "sessions" / "claude-code" / s.session_id / "meta.json"
    raw = meta_path.read_bytes()
    assert TOKEN.encode() not in raw
    meta = json.loads(raw)
    assert meta["cwd"] == "/home/dev/[REDACTED:github-token]/proj"
    assert meta["started_at"] == "2026-11-27T09:00:00.000Z"
    assert meta["model"] == "claude-opus-4-5"
    assert meta["git_branch"] == "feature/login"
    assert meta["agent_version"] == "2.1.7"
    assert meta["cursor_unit"] == "bytes"
    assert meta["cursor"] == s.path.stat().st_size
