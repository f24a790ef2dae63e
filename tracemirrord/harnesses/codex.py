"""OpenAI Codex CLI: ``$CODEX_HOME/sessions`` and ``$CODEX_HOME/archived_sessions`` (else ``~/.codex``).

Format (codex-rs/rollout/src/recorder.rs, per harnesses.md, 2026-11):
``sessions/YYYY/MM/DD/rollout-<local time>-<uuid>.jsonl``, opened in append mode; the first line is
``session_meta`` whose payload holds ``id`` and ``cwd``. Archiving renames the file into
``archived_sessions/``: the same session id, so the move is no deletion.

Compressed rollouts (codex-rs/rollout/src/compression.rs, checked 2026-11): a background job
compresses rollouts untouched for 7 days to ``<name>.jsonl.zst`` in the same directory (temp file
``rollout-compress-*.tmp``, then a no-clobber rename, the plain file's mtime kept), then deletes the
``.jsonl``; readers prefer the plain file while both exist, and resuming decompresses it back to
``<name>.jsonl``. Both names are the same session id; the scan prefers the plain file while both
exist, and a ``.zst`` is read through ``ZstJsonlSource`` (harnesses/zst.py) with the plain file's
cursors, so compressing (or decompressing) a mirrored rollout uploads nothing again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from tracemirrord.harnesses.base import DirCache, Discovery, JsonlHarness, SessionRef, env_path
from tracemirrord.harnesses.jsonl import JsonlSource, stat_file
from tracemirrord.harnesses.zst import ZST_SUFFIX, ZstJsonlSource, is_zst
from tracemirrord.source import Source

_UUID_AT_END = re.compile(r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$")


class Codex(JsonlHarness):
    name = "codex"
    root_env = ("CODEX_HOME",)
    suffixes = (".jsonl", ".jsonl.zst")

    def default_roots(self, env: Mapping[str, str], home: Path) -> list[Path]:
        codex_home = env_path(env, "CODEX_HOME") or home / ".codex"
        return [codex_home / "sessions", codex_home / "archived_sessions"]

    def session_id(self, root: Path, path: Path) -> str | None:
        name = path.name.removesuffix(ZST_SUFFIX)
        if not name.endswith(".jsonl"):
            return None
        stem = name.removesuffix(".jsonl")
        if not stem.startswith("rollout-"):
            return None
        match = _UUID_AT_END.search(stem)
        return match.group(1).lower() if match else stem

    def scan(self, roots: list[Path], cache: DirCache | None = None) -> Discovery:
        """The base scan, with a plain ``.jsonl`` preferred over its ``.zst`` sibling while both exist.

        The base scan keeps one path per id (the larger file); a small rollout can compress to more
        bytes than it has, so the plain sibling is put back here. Every change to the pair changes
        their directory, so the cached Discovery stays right.
        """
        cache = cache or DirCache(self.suffixes)
        previous = cache.result
        found = super().scan(roots, cache)
        if found is previous:
            return found
        sessions = []
        for ref in found.sessions:
            if is_zst(ref.path):
                plain = ref.path.with_name(ref.path.name.removesuffix(ZST_SUFFIX))
                if stat_file(plain) is not None:
                    ref = SessionRef(ref.session_id, plain, ref.root)
            sessions.append(ref)
        cache.result = Discovery(sessions, found.refused, found.attachments)
        return cache.result

    def open_source(self, ref: SessionRef, *, max_line_bytes: int) -> Source:
        if is_zst(ref.path):
            return ZstJsonlSource(
                ref.path, max_line_bytes=max_line_bytes, describe=self.describe, root=ref.root
            )
        return JsonlSource(ref.path, max_line_bytes=max_line_bytes, describe=self.describe, root=ref.root)
