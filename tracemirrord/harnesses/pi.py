"""pi (badlogic/pi-mono coding-agent): ``$PI_CODING_AGENT_DIR/sessions`` (else ``~/.pi/agent/sessions``).

Format (packages/coding-agent/src/core/session-manager.ts, per harnesses.md, 2026-11):
``--<cwd with / \\ : as ->--/<ISO timestamp with : and . as ->_<uuid>.jsonl``; the first line is the
header ``{"type": "session", "id", "timestamp", "cwd", ...}``. Opening a file from an older version
rewrites it whole, which the fingerprint catches as a new generation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tracemirrord.harnesses.base import JsonlHarness, env_path


class Pi(JsonlHarness):
    name = "pi"
    root_env = ("PI_CODING_AGENT_DIR",)
    max_depth = 1

    def default_roots(self, env: Mapping[str, str], home: Path) -> list[Path]:
        agent_dir = env_path(env, "PI_CODING_AGENT_DIR") or home / ".pi" / "agent"
        return [agent_dir / "sessions"]

    def session_id(self, root: Path, path: Path) -> str | None:
        stem = path.name.removesuffix(".jsonl")
        return stem.rsplit("_", 1)[-1] if "_" in stem else stem
