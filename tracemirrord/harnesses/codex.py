"""OpenAI Codex CLI: ``$CODEX_HOME/sessions`` and ``$CODEX_HOME/archived_sessions`` (else ``~/.codex``).

Format (codex-rs/rollout/src/recorder.rs, per harnesses.md, 2026-11):
``sessions/YYYY/MM/DD/rollout-<local time>-<uuid>.jsonl``, opened in append mode; the first line is
``session_meta`` whose payload holds ``id`` and ``cwd``. Archiving renames the file into
``archived_sessions/``: the same session id, so the move is no deletion. Rollouts compressed to
``.jsonl.zst`` are not followed; what was mirrored stays.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from tracemirrord.harnesses.base import JsonlHarness, env_path

_UUID_AT_END = re.compile(r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")


class Codex(JsonlHarness):
    name = "codex"

    def default_roots(self, env: Mapping[str, str], home: Path) -> list[Path]:
        codex_home = env_path(env, "CODEX_HOME") or home / ".codex"
        return [codex_home / "sessions", codex_home / "archived_sessions"]

    def session_id(self, root: Path, path: Path) -> str | None:
        stem = path.name.removesuffix(".jsonl")
        if not stem.startswith("rollout-"):
            return None
        match = _UUID_AT_END.search(stem)
        return match.group(1).lower() if match else stem
