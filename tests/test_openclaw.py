"""openclaw: roots from its own variables, transcripts (topic and checkpoint files too) found under
``agents/<agentId>/sessions/``, the index, archives and staging files skipped; describe() from the
pi-style records. Unit tests on real files; the end-to-end test runs the daemon (test_*_e2e below).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from daemon import Daemon, daemon_env, read_back, wait_for

from tracemirrord.harnesses.openclaw import OpenClaw
from tracemirrord.model import SessionKey


def sessions_dir(state: Path, agent: str = "main") -> Path:
    path = state / "agents" / agent / "sessions"
    path.mkdir(parents=True, exist_ok=True)
    return path


def jsonl(*records: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def session_header(sid: str, cwd: str = "/home/dev/bot") -> dict[str, Any]:
    return {"type": "session", "version": 3, "id": sid, "timestamp": "2026-05-01T08:00:00.000Z", "cwd": cwd}


def test_roots_follow_openclaw_state_dir_then_openclaw_home(tmp_path: Path) -> None:
    h = OpenClaw()
    home = tmp_path / "home"
    assert h.default_roots({}, home) == [home / ".openclaw" / "agents"]
    assert h.default_roots({"OPENCLAW_STATE_DIR": str(tmp_path / "st")}, home) == [tmp_path / "st" / "agents"]
    # OPENCLAW_HOME replaces the home directory (src/infra/home-dir.ts): the state dir is below it
    assert h.default_roots({"OPENCLAW_HOME": str(tmp_path / "oh")}, home) == [
        tmp_path / "oh" / ".openclaw" / "agents"
    ]
    both = {"OPENCLAW_STATE_DIR": str(tmp_path / "st"), "OPENCLAW_HOME": str(tmp_path / "oh")}
    assert h.default_roots(both, home) == [tmp_path / "st" / "agents"]
    (home / ".clawdbot").mkdir(parents=True)  # only a legacy state dir exists: openclaw uses it
    assert h.default_roots({}, home) == [home / ".clawdbot" / "agents"]


def test_transcripts_topics_and_checkpoints_are_sessions_archives_and_index_are_not(tmp_path: Path) -> None:
    state = tmp_path / ".openclaw"
    main, coder = sessions_dir(state, "main"), sessions_dir(state, "coder")
    sid = str(uuid.uuid4())
    ckpt = str(uuid.uuid4())
    wanted = {
        main / f"{sid}.jsonl": f"main__{sid}",
        main / f"{sid}-topic-42.jsonl": f"main__{sid}-topic-42",
        main / f"{sid}.checkpoint.{ckpt}.jsonl": f"main__{sid}.checkpoint.{ckpt}",
        coder / f"{sid}.jsonl": f"coder__{sid}",
    }
    skipped = [
        main / "sessions.json",
        main / f"{sid}.jsonl.tmp",
        main / f"{sid}.jsonl.deleted.2026-05-01T08-00-00.000Z",
        main / f"{sid}.jsonl.reset.2026-05-01T08-00-00.000Z",
        main / f"{sid}.jsonl.bak-20260501-080000",
        main / f"{sid}.bak-1.jsonl",
        main / f"{sid}.trajectory.jsonl",
        state / "agents" / "main" / "agent" / "notes.jsonl",  # not in sessions/
    ]
    for path in [*wanted, *skipped]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jsonl(session_header(sid)))
    found = OpenClaw().discover_blocking([state / "agents"])
    assert {r.path: r.session_id for r in found.sessions} == wanted
    assert found.refused == []


def test_describe_reads_cwd_start_and_model(tmp_path: Path) -> None:
    sid = str(uuid.uuid4())
    lines = jsonl(
        session_header(sid, cwd="/srv/bot"),
        {
            "type": "model_change",
            "id": "a1",
            "parentId": None,
            "provider": "anthropic",
            "modelId": "claude-x",
        },
        {"type": "message", "id": "a2", "parentId": "a1", "message": {"role": "user", "content": "hi"}},
    ).splitlines()
    info = OpenClaw().describe(lines)
    assert (info.cwd, info.started_at, info.model) == ("/srv/bot", "2026-05-01T08:00:00.000Z", "claude-x")
    assert info.extra["session_format"] == "3"
    only_messages = jsonl(
        session_header(sid),
        {"type": "message", "id": "b", "message": {"role": "assistant", "model": "gpt-z", "content": []}},
    ).splitlines()
    assert OpenClaw().describe(only_messages).model == "gpt-z"


# ---------- end to end: the daemon on a temporary HOME ----------


def test_daemon_mirrors_transcripts_topics_and_checkpoints_and_nothing_else(tmp_path: Path) -> None:
    """Live appends to a transcript, its topic and its checkpoint successor are mirrored exactly under
    ``<agentId>__<stem>``; the index, staging, archived and backup files never become sessions."""
    env = daemon_env(tmp_path, f"file://{tmp_path / 'bucket'}", {"TRACEMIRROR_HARNESSES": "openclaw"})
    for name in ("OPENCLAW_HOME", "CLAWDBOT_STATE_DIR"):
        env.pop(name, None)
    env["OPENCLAW_STATE_DIR"] = str(tmp_path / "oc-state")
    main = sessions_dir(tmp_path / "oc-state", "main")
    sid, ckpt = str(uuid.uuid4()), str(uuid.uuid4())
    files = {
        f"main__{sid}": main / f"{sid}.jsonl",
        f"main__{sid}-topic-7": main / f"{sid}-topic-7.jsonl",
        f"main__{sid}.checkpoint.{ckpt}": main / f"{sid}.checkpoint.{ckpt}.jsonl",
    }
    for path in files.values():
        path.write_bytes(jsonl(session_header(sid)))
    (main / "sessions.json").write_text(json.dumps({"agent:main:main": {"sessionId": sid}}))
    for junk in (f"{sid}.jsonl.tmp", f"{sid}.jsonl.deleted.2026-05-01T08-00-00.000Z", f"{sid}.jsonl.bak-1"):
        (main / junk).write_bytes(jsonl(session_header(sid)))
    sessions_root = tmp_path / "bucket" / "default" / "sessions" / "openclaw"

    def copy(session_id: str) -> bytes:
        try:
            got = read_back(env["TRACEMIRROR_BUCKET"], SessionKey("openclaw", session_id))
        except Exception:
            return b""
        return got.generations.get(0, b"")

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        for i in range(5):
            for path in files.values():
                with path.open("ab") as f:
                    f.write(
                        jsonl(
                            {"type": "message", "id": f"e{i}", "message": {"role": "user", "content": "go"}}
                        )
                    )
            time.sleep(0.1)
        wait_for(
            lambda: all(copy(k) == p.read_bytes() for k, p in files.items()), 20, "the three transcripts"
        )
        assert daemon.stop() == 0, daemon.log()
    assert sorted(p.name for p in sessions_root.iterdir()) == sorted(files)
    meta = json.loads((sessions_root / f"main__{sid}" / "meta.json").read_bytes())
    assert meta["cwd"] == "/home/dev/bot"
