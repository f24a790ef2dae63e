"""openclaw sessions for the harness contract suite, as its pi-style ``SessionManager`` writes them.

``$OPENCLAW_STATE_DIR/agents/<agentId>/sessions/<sessionId>.jsonl`` (every third session a Telegram
topic file ``<sessionId>-topic-<n>.jsonl``): a ``session`` header, then ``model_change`` and
``message`` entries with ``id``/``parentId``, appended. The session id is ``<agentId>__<stem>``.
``expected()`` is the file's complete lines parsed, read back from disk (``append`` may run in
another process). ``remove()`` archives the file as openclaw's cleanup does
(``<file>.deleted.<timestamp>``).
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import Any

from fixture_jsonl import AppendedFileSession, json_line

WORDS = ("read", "the", "file", "fix", "test", "bug", "run", "pytest", "ok", "deploy")


def _ts(i: int) -> str:
    return f"2026-05-01T08:{(i // 60) % 60:02d}:{i % 60:02d}.000Z"


class OpenClawSession(AppendedFileSession):
    harness = "openclaw"

    def append(self, n: int) -> None:
        count = len(self._lines())
        rng = random.Random(self.seed * 1_000_003 + count)
        out = bytearray()
        for i in range(count, count + n):
            entry: dict[str, Any] = {"id": f"e{i:06d}", "parentId": f"e{i - 1:06d}", "timestamp": _ts(i)}
            if i == 1:
                entry.update(type="model_change", provider="anthropic", modelId="claude-sonnet-4")
            else:
                role = "user" if i % 2 == 0 else "assistant"
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
                entry.update(
                    type="message", message={"role": role, "content": [{"type": "text", "text": text}]}
                )
            out += json_line(entry)
        with self.path.open("ab") as f:
            f.write(bytes(out))

    def remove(self) -> None:
        self.path.rename(self.path.with_name(self.path.name + ".deleted.2026-05-02T08-00-00.000Z"))


class OpenClawFixture:
    harness = "openclaw"

    def __init__(self) -> None:
        self._made = 0

    def env(self, home: Path) -> dict[str, str]:
        return {"OPENCLAW_STATE_DIR": str(home / "openclaw-state")}

    def create(self, home: Path, rng: random.Random) -> OpenClawSession:
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        sessions = home / "openclaw-state" / "agents" / "main" / "sessions"
        sessions.mkdir(parents=True, exist_ok=True)
        self._made += 1
        stem = f"{sid}-topic-{self._made}" if self._made % 3 == 0 else sid
        path = sessions / f"{stem}.jsonl"
        header = {"type": "session", "version": 3, "id": sid, "timestamp": _ts(0), "cwd": "/home/dev/bot"}
        path.write_bytes(json_line(header))
        session = OpenClawSession(path, f"main__{stem}", rng.getrandbits(32))
        session.append(1)
        return session


FIXTURE = OpenClawFixture()
