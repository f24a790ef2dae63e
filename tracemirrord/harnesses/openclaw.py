"""openclaw: ``<state dir>/agents/<agentId>/sessions/*.jsonl``.

Confirmed against openclaw/openclaw (main, 2026): ``src/config/paths.ts`` (``resolveStateDir``:
``$OPENCLAW_STATE_DIR``, or the legacy ``$CLAWDBOT_STATE_DIR``, else ``<home>/.openclaw``, falling back
to an existing legacy ``~/.clawdbot``, ``~/.moldbot`` or ``~/.moltbot`` when ``.openclaw`` is absent),
``src/infra/home-dir.ts`` (``$OPENCLAW_HOME`` replaces the home directory, so the state dir is then
``$OPENCLAW_HOME/.openclaw``), ``src/config/sessions/paths.ts`` (``<sessionId>.jsonl`` and
``<sessionId>-topic-<topicId>.jsonl`` directly in ``agents/<agentId>/sessions/``, beside the
``sessions.json`` index) and ``src/config/sessions/artifacts.ts`` (compaction successors
``<sessionId>.checkpoint.<uuid>.jsonl``, which are transcripts; archives ``*.jsonl.deleted.<ts>``,
``*.jsonl.reset.<ts>``, ``*.bak.<ts>`` / ``*.bak-<stamp>`` and ``*.tmp`` staging files, which are not
new sessions; ``<sessionId>.trajectory.jsonl`` runtime sidecars, which are no transcript).

Transcripts are pi-mono ``SessionManager`` files, appended: a header
``{"type": "session", "version", "id", "timestamp", "cwd", "parentSession"?}``, then entries with
``id``/``parentId``; the model comes from ``model_change`` entries (``modelId``) or assistant
messages (``message.model``).

Session id: ``<agentId>__<file stem>`` (one key segment).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from tracemirrord.harnesses.base import JsonlHarness, env_path, json_records
from tracemirrord.source import SessionInfo

_LEGACY_STATE_DIRS = (".clawdbot", ".moldbot", ".moltbot")
_ARCHIVE = re.compile(r"\.(deleted|reset|bak)[.-]|\.tmp\b|\.trajectory\.jsonl$")
_DESCRIBE_LINE_LIMIT = 256 * 1024


class OpenClaw(JsonlHarness):
    name = "openclaw"
    root_env = ("OPENCLAW_STATE_DIR", "CLAWDBOT_STATE_DIR", "OPENCLAW_HOME")
    max_depth = 3  # agents/<agentId>/sessions/<file>

    def default_roots(self, env: Mapping[str, str], home: Path) -> list[Path]:
        state = env_path(env, "OPENCLAW_STATE_DIR") or env_path(env, "CLAWDBOT_STATE_DIR")
        if state is None:
            home = env_path(env, "OPENCLAW_HOME") or home
            state = home / ".openclaw"
            if not state.exists():
                state = next((home / d for d in _LEGACY_STATE_DIRS if (home / d).exists()), state)
        return [state / "agents"]

    def session_id(self, root: Path, path: Path) -> str | None:
        parts = path.relative_to(root).parts
        if len(parts) != 3 or parts[1] != "sessions" or not parts[2].endswith(".jsonl"):
            return None
        if _ARCHIVE.search(parts[2]):
            return None  # an archive, backup, staging or sidecar file: no transcript of its own
        return f"{parts[0]}__{parts[2].removesuffix('.jsonl')}"

    def describe(self, lines: list[bytes]) -> SessionInfo:
        """cwd and start from the session header, the model from the first that names one."""
        cwd = started = model = None
        extra: dict[str, str] = {}
        for record in json_records(lines):
            if record.get("type") == "session":
                cwd = _str(record.get("cwd")) or cwd
                started = _str(record.get("timestamp")) or started
                if record.get("version") is not None:
                    extra["session_format"] = str(record["version"])
                if _str(record.get("parentSession")):
                    extra["parent_session"] = record["parentSession"]
            elif model is None and record.get("type") == "model_change":
                model = _str(record.get("modelId"))
            elif model is None and isinstance(record.get("message"), dict):
                model = _str(record["message"].get("model"))
        return SessionInfo(cwd=cwd, started_at=started, model=model, extra=extra)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
