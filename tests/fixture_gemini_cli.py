"""gemini-cli sessions for the harness contract suite, in the current (v0.39+) JSONL format.

A session is ``~/.gemini/tmp/<project>/chats/session-<YYYY-MM-DDTHH-MM>-<sid[:8]>.jsonl``: a metadata
line, then message lines appended one by one; now and then a message already written is appended
again with the same ``id`` (its reply tokens arrived), and a ``{"$set": ...}`` line updates the
metadata, as chatRecordingService.ts does. The bucket copy holds every line as written, so
``expected()`` is the file's complete lines parsed, read back from disk (``append`` may run in
another process).
"""

from __future__ import annotations

import json
import os
import random
import uuid
from pathlib import Path
from typing import Any

from fixture_jsonl import AppendedFileSession, json_line

WORDS = ("read", "the", "file", "fix", "test", "bug", "run", "pytest", "ok", "refactor")


class GeminiSession(AppendedFileSession):
    harness = "gemini-cli"

    def append(self, n: int) -> None:
        existing = self._lines()
        count = len(existing)
        rng = random.Random(self.seed * 1_000_003 + count)
        out = bytearray()
        for i in range(count, count + n):
            if i % 7 == 3 and i > 1:
                out += json_line({"$set": {"lastUpdated": _ts(i)}})
            elif i % 5 == 4:
                # a gemini message already written gets its tokens: appended again, same id
                out += json_line(
                    {**_message(i - 1, rng), "tokens": {"input": i, "output": 2, "total": i + 2}}
                )
            else:
                out += json_line(_message(i, rng))
        with self.path.open("ab") as f:
            f.write(bytes(out))

    # remove(): gemini-cli's session cleanup deletes the file, as AppendedFileSession does


def _ts(i: int) -> str:
    return f"2026-03-01T10:{(i // 60) % 60:02d}:{i % 60:02d}.000Z"


def _message(i: int, rng: random.Random) -> dict[str, Any]:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
    if i % 2:
        return {
            "id": f"m-{i}",
            "timestamp": _ts(i),
            "type": "gemini",
            "content": text,
            "toolCalls": [],
            "tokens": None,
            "model": "gemini-2.5-pro",
        }
    return {"id": f"m-{i}", "timestamp": _ts(i), "type": "user", "content": [{"text": text}]}


class GeminiFixture:
    harness = "gemini-cli"

    def env(self, home: Path) -> dict[str, str]:
        return {"GEMINI_CLI_HOME": str(home / "gemini-home")}

    def _new(self, home: Path, rng: random.Random, suffix: str) -> tuple[str, Path]:
        """A new session id and the path gemini-cli names its file by (8 characters of the id)."""
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        chats = home / "gemini-home" / ".gemini" / "tmp" / "proj" / "chats"
        chats.mkdir(parents=True, exist_ok=True)
        return sid, chats / f"session-2026-03-01T10-00-{sid[:8]}{suffix}"

    def create(self, home: Path, rng: random.Random) -> GeminiSession:
        sid, path = self._new(home, rng, ".jsonl")
        first = {
            "sessionId": sid,
            "projectHash": "ab" * 32,
            "startTime": _ts(0),
            "lastUpdated": _ts(0),
            "kind": "main",
        }
        path.write_bytes(json_line(first))
        session = GeminiSession(path, sid, rng.getrandbits(32))
        session.append(1)
        return session


FIXTURE = GeminiFixture()


class GeminiDocumentSession:
    """A session as gemini-cli wrote it before v0.39: one ``session-*.json`` document, rewritten whole
    on every message. The copy holds the metadata (the document without ``messages``) once, then
    each message once, in order (docs/harnesses/gemini-cli.md); ``lastUpdated`` is left as it was
    so that the metadata line does not depend on when the daemon first read the document."""

    harness = "gemini-cli"

    def __init__(self, path: Path, meta: dict[str, Any], seed: int) -> None:
        self.path = path
        self.session_id = meta["sessionId"]
        self.meta = meta
        self.messages: list[dict[str, Any]] = []
        self.seed = seed

    def append(self, n: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + len(self.messages))
        self.messages += [_message(len(self.messages) + i, rng) for i in range(n)]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({**self.meta, "messages": self.messages}, indent=2))
        os.replace(tmp, self.path)

    def expected(self) -> list[Any]:
        return [dict(self.meta), *self.messages]

    def remove(self) -> None:
        self.path.unlink()


class GeminiDocumentFixture(GeminiFixture):
    def create(self, home: Path, rng: random.Random) -> GeminiDocumentSession:  # type: ignore[override]
        sid, path = self._new(home, rng, ".json")
        meta = {"sessionId": sid, "projectHash": "cd" * 32, "startTime": _ts(0), "lastUpdated": _ts(0)}
        session = GeminiDocumentSession(path, meta, rng.getrandbits(32))
        session.append(1)
        return session


# Other on-disk formats of this harness, run through the contract suite as well.
VARIANTS = {"json-document": GeminiDocumentFixture()}
