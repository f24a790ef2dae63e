"""Realistic session files for each harness, and helpers to lay them out under a fake HOME.

The shapes follow shared/docs/harnesses.md: Claude Code records with sessionId/cwd/message,
Codex rollouts that start with session_meta, pi files that start with a session header.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SessionFile:
    harness: str
    session_id: str
    path: Path


def _ts(i: int) -> str:
    return f"2026-11-23T10:{(i // 60) % 60:02d}:{i % 60:02d}.000Z"


def record(harness: str, session_id: str, i: int, rng: random.Random, cwd: str = "/home/dev/proj") -> bytes:
    """One JSONL line (with newline) in the shape of ``harness``; i == 0 is the header where one exists."""
    text = " ".join(
        rng.choice(["read", "the", "file", "fix", "test", "bug", "run", "pytest", "ok"])
        for _ in range(rng.randint(5, 60))
    )
    if harness == "claude-code":
        doc = {
            "parentUuid": None if i == 0 else f"u-{i - 1}",
            "isSidechain": False,
            "cwd": cwd,
            "sessionId": session_id,
            "version": "2.1.0",
            "gitBranch": "main",
            "type": "user" if i % 2 == 0 else "assistant",
            "message": {"role": "user" if i % 2 == 0 else "assistant", "content": text},
            "uuid": f"u-{i}",
            "timestamp": _ts(i),
        }
    elif harness == "codex":
        if i == 0:
            doc = {
                "timestamp": _ts(i),
                "type": "session_meta",
                "payload": {
                    "id": session_id,
                    "cwd": cwd,
                    "cli_version": "0.80.0",
                    "model_provider": "openai",
                },
            }
        else:
            doc = {
                "timestamp": _ts(i),
                "type": "response_item",
                "payload": {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text}],
                },
            }
    elif harness == "pi":
        if i == 0:
            doc = {"type": "session", "version": 3, "id": session_id, "timestamp": _ts(i), "cwd": cwd}
        else:
            doc = {
                "type": "message",
                "id": f"e{i}",
                "parentId": f"e{i - 1}",
                "timestamp": _ts(i),
                "message": {"role": "assistant", "content": text},
            }
    else:
        raise ValueError(harness)
    return json.dumps(doc).encode() + b"\n"


def make_session(home: Path, harness: str, session_id: str | None = None) -> SessionFile:
    """Create an empty session file where ``harness`` keeps it below ``home``."""
    sid = session_id or str(uuid.uuid4())
    if harness == "claude-code":
        path = home / ".claude" / "projects" / "-home-dev-proj" / f"{sid}.jsonl"
    elif harness == "codex":
        path = (
            home / ".codex" / "sessions" / "2026" / "11" / "23" / f"rollout-2026-11-23T10-00-00-{sid}.jsonl"
        )
    elif harness == "pi":
        path = (
            home
            / ".pi"
            / "agent"
            / "sessions"
            / "--home-dev-proj--"
            / f"2026-11-23T10-00-00-000Z_{sid}.jsonl"
        )
    else:
        raise ValueError(harness)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return SessionFile(harness, sid, path)


def complete_lines(path: Path) -> bytes:
    """What a mirror may hold of a file: its complete lines."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]
