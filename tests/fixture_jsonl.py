"""Sessions of the append-only JSONL agents (claude-code, codex, pi) for the harness contract suite.

Lines are built by tests/sessions.py in each agent's format and appended as the agent appends them;
``expected()`` is the JSON of every line written, parsed from the test's own bytes.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

from sessions import make_session, record


def json_line(record: dict[str, Any]) -> bytes:
    """One compact JSONL line, as the agents write them."""
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


class AppendedFileSession:
    """A session file the test appends to; what the copy must hold is the file's own complete lines,
    parsed (a subclass writes ``append`` in its agent's format; ``remove`` deletes the file)."""

    harness: str

    def __init__(self, path: Path, session_id: str, seed: int) -> None:
        self.path = path
        self.session_id = session_id
        self.seed = seed

    def _lines(self) -> list[dict[str, Any]]:
        data = self.path.read_bytes()
        return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]

    def expected(self) -> list[Any]:
        return self._lines()

    def remove(self) -> None:
        self.path.unlink()


class JsonlSession:
    def __init__(self, home: Path, harness: str, rng: random.Random) -> None:
        made = make_session(home, harness, str(uuid.UUID(int=rng.getrandbits(128))))
        self.harness = harness
        self.session_id = made.session_id
        self.path = made.path
        self._rng = random.Random(rng.getrandbits(32))
        self._written: list[bytes] = []

    def append(self, n: int) -> None:
        lines = [record(self.harness, self.session_id, len(self._written) + i, self._rng) for i in range(n)]
        with self.path.open("ab") as f:
            f.write(b"".join(lines))
        self._written += lines

    def expected(self) -> list[Any]:
        return [json.loads(line) for line in self._written]

    def remove(self) -> None:
        self.path.unlink()


class JsonlFixture:
    def __init__(self, harness: str) -> None:
        self.harness = harness

    def env(self, home: Path) -> dict[str, str]:
        return {}  # the agents' default paths below HOME

    def create(self, home: Path, rng: random.Random) -> JsonlSession:
        session = JsonlSession(home, self.harness, rng)
        session.append(1)
        return session
