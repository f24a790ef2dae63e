"""Claude Code: ``$CLAUDE_CONFIG_DIR/projects`` (else ``~/.claude/projects``).

Format (harnesses.md, verified against open-source readers of its files, 2026-11): one directory per
cwd (the cwd with every non-alphanumeric character replaced by ``-``; never rebuilt here, the cwd is
read from the records), ``<session-uuid>.jsonl`` inside, appended as the session runs. Subagent
and compaction transcripts sit below ``<session-uuid>/`` (``subagents/agent-*.jsonl``); they get
the id ``<session-uuid>__<stem>`` (other nesting: every directory name joined with ``__``).
Claude Code deletes transcripts older than ``cleanupPeriodDays`` (30) at start-up: the bucket keeps
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tracemirrord.harnesses.base import JsonlHarness, env_path


class ClaudeCode(JsonlHarness):
    name = "claude-code"

    def default_roots(self, env: Mapping[str, str], home: Path) -> list[Path]:
        config_dir = env_path(env, "CLAUDE_CONFIG_DIR") or home / ".claude"
        return [config_dir / "projects"]

    def session_id(self, root: Path, path: Path) -> str | None:
        parts = path.relative_to(root).parts
        if len(parts) < 2:
            return None  # a file directly under projects/ is no session
        stem = parts[-1].removesuffix(".jsonl")
        nested = [p for p in parts[1:-1] if p != "subagents"]
        return "__".join([*nested, stem])
