"""openclaw: roots from its own variables, transcripts (topic and checkpoint files too) found under
``agents/<agentId>/sessions/``, the index, archives and staging files skipped; describe() from the
pi-style records. Unit tests on real files; the end-to-end test runs the daemon (test_*_e2e below).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from tracemirrord.harnesses.openclaw import OpenClaw


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
