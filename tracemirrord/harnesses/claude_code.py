"""Claude Code: ``$CLAUDE_CONFIG_DIR/projects`` (else ``~/.claude/projects``).

Format (harnesses.md, verified against open-source readers of its files, 2026-11): one directory per
cwd (the cwd with every non-alphanumeric character replaced by ``-``; never rebuilt here, the cwd is
read from the records), ``<session-uuid>.jsonl`` inside, appended as the session runs. Subagent
and compaction transcripts sit below ``<session-uuid>/`` (``subagents/agent-*.jsonl``); they get
the id ``<session-uuid>__<stem>`` (other nesting: every directory name joined with ``__``).
Claude Code deletes transcripts older than ``cleanupPeriodDays`` (30) at start-up: the bucket keeps
them.

Beside the transcripts, two more things users lose or want:

- ``<session-uuid>/tool-results/toolu_*.txt`` (or ``.json``): large tool outputs the transcript only
  points to, written once each and swept with the transcript. They are no sessions; the scan returns
  them as ``Attachment``s (``tool-results/<file name>`` below the session's prefix), which
  ``tracemirrord.attachments.AttachmentMirror`` uploads once each.
- ``<config dir>/history.jsonl`` (the parent of the ``projects`` root): the global log of the user's
  prompts, one JSON object per line (``display``, ``pastedContents``, ``timestamp`` in epoch ms,
  ``project``), appended; it survives the sweep. It is mirrored as one session whose id names this
  machine (``history__<agent id>``), so machines sharing a bucket never write the same session.
"""

from __future__ import annotations

import json
import os
import re
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from tracemirrord.config import default_agent_id
from tracemirrord.harnesses.base import Attachment, DirCache, Discovery, JsonlHarness, SessionRef, env_path
from tracemirrord.harnesses.jsonl import JsonlSource, stat_file
from tracemirrord.model import is_safe_segment
from tracemirrord.source import SessionInfo, Source

HISTORY_NAME = "history.jsonl"
HISTORY_PREFIX = "history__"
TOOL_RESULTS_DIR = "tool-results"
TOOL_RESULT_SUFFIXES = (".txt", ".json")
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")


def history_session_id(agent_id: str | None = None) -> str:
    """``history__<agent id>``: one prompt-history session per machine, as a safe key segment.

    The agent id is ``TRACEMIRROR_AGENT_ID`` when set, else the daemon's default ``<user>@<host>``;
    it already has to be unique per machine (it names the writer holding a session's lease).
    """
    agent = agent_id or os.environ.get("TRACEMIRROR_AGENT_ID") or default_agent_id()
    cleaned = re.sub(r"\.{2,}", ".", _UNSAFE.sub("-", agent)).strip(".") or "unknown"
    session_id = (HISTORY_PREFIX + cleaned)[:120]
    assert is_safe_segment(session_id), session_id
    return session_id


class ClaudeCode(JsonlHarness):
    name = "claude-code"
    root_env = ("CLAUDE_CONFIG_DIR",)
    suffixes = (".jsonl", *TOOL_RESULT_SUFFIXES)

    def __init__(self, history_id: str | None = None) -> None:
        super().__init__()
        self._history_id = history_id
        # per DirCache: (the base Discovery, the history ref, the Discovery handed out)
        self._extra: weakref.WeakKeyDictionary[DirCache, tuple[Discovery, SessionRef | None, Discovery]]
        self._extra = weakref.WeakKeyDictionary()
        # per tool-results directory: (its cached file listing, the attachments made of it)
        self._tool_results: dict[str, tuple[list[str], list[Attachment]]] = {}

    def default_roots(self, env: Mapping[str, str], home: Path) -> list[Path]:
        config_dir = env_path(env, "CLAUDE_CONFIG_DIR") or home / ".claude"
        return [config_dir / "projects"]

    def session_id(self, root: Path, path: Path) -> str | None:
        parts = path.relative_to(root).parts
        if len(parts) < 2 or not parts[-1].endswith(".jsonl"):
            return None  # a file directly under projects/, or a tool result, is no session
        stem = parts[-1].removesuffix(".jsonl")
        nested = [p for p in parts[1:-1] if p != "subagents"]
        return "__".join([*nested, stem])

    def scan(self, roots: list[Path], cache: DirCache | None = None) -> Discovery:
        """Transcripts (the base scan), plus the prompt history and the tool-results attachments.

        The previous Discovery object itself when no directory changed and the history file is
        still there (or still absent); appending to it changes nothing here.
        """
        cache = cache or DirCache(self.suffixes)
        base = super().scan(roots, cache)
        history = self._history_ref(roots)
        held = self._extra.get(cache)
        if held is not None and held[0] is base and held[1] == history:
            return held[2]
        sessions = [*base.sessions, history] if history is not None else base.sessions
        handed = Discovery(sessions, base.refused, self._attachments(roots, cache))
        self._extra[cache] = (base, history, handed)
        return handed

    @property
    def history_id(self) -> str:
        """The prompt history's session id, from the daemon's configured agent id when it runs."""
        if self._history_id is None:
            agent_id = self.hooks.agent_id if self.hooks is not None else None
            self._history_id = history_session_id(agent_id or None)
        return self._history_id

    def _history_ref(self, roots: list[Path]) -> SessionRef | None:
        for root in roots:
            path = root.parent / HISTORY_NAME
            if stat_file(path) is not None:
                return SessionRef(self.history_id, path, root.parent, many_projects=True)
        return None

    def _attachments(self, roots: list[Path], cache: DirCache) -> list[Attachment]:
        """``<cwd>/<session-uuid>/tool-results/*.{txt,json}`` files, from the cached listings.

        A tool-results directory whose listing did not change reuses its attachments as they were.
        """
        found: list[Attachment] = []
        seen: dict[str, tuple[list[str], list[Attachment]]] = {}
        for root in roots:
            for project in _subdirs(cache, str(root), follow=True):
                for session_dir in _subdirs(cache, project):
                    tool_results = os.path.join(session_dir, TOOL_RESULTS_DIR)
                    if tool_results not in _subdirs(cache, session_dir):
                        continue
                    listing = cache.listing(tool_results)
                    files = listing[1] if listing else []
                    held = self._tool_results.get(tool_results)
                    if held is None or held[0] is not files:
                        held = (files, _tool_results_of(os.path.basename(session_dir), files, root))
                    seen[tool_results] = held
                    found.extend(held[1])
        self._tool_results = seen
        return found

    def open_source(self, ref: SessionRef, *, max_line_bytes: int) -> Source:
        if ref.session_id == self.history_id:
            return JsonlSource(
                ref.path, max_line_bytes=max_line_bytes, describe=describe_history, root=ref.root
            )
        return super().open_source(ref, max_line_bytes=max_line_bytes)


def _tool_results_of(session_id: str, files: list[str], root: Path) -> list[Attachment]:
    if not is_safe_segment(session_id):
        return []
    out = []
    for path in sorted(files):
        name = os.path.basename(path)
        if name.endswith(TOOL_RESULT_SUFFIXES) and is_safe_segment(name):
            out.append(Attachment(session_id, f"{TOOL_RESULTS_DIR}/{name}", Path(path), root))
    return out


def _subdirs(cache: DirCache, directory: str, *, follow: bool = False) -> list[str]:
    listing = cache.listing(directory, follow=follow)
    return listing[0] if listing else []


def describe_history(lines: list[bytes]) -> SessionInfo:
    """The prompt log has no cwd of its own; its first entry's epoch-ms ``timestamp`` is the start."""
    started = None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        stamp = record.get("timestamp") if isinstance(record, dict) else None
        if isinstance(stamp, int | float) and not isinstance(stamp, bool):
            try:
                started = datetime.fromtimestamp(stamp / 1000, UTC).isoformat(timespec="milliseconds")
            except (OverflowError, OSError, ValueError):
                continue
            started = started.replace("+00:00", "Z")
            break
    return SessionInfo(started_at=started, title="Claude Code prompt history")
