"""gemini-cli (google-gemini/gemini-cli): ``~/.gemini/tmp/<project>/chats/`` (``$GEMINI_CLI_HOME``
replaces the home directory).

Confirmed against google-gemini/gemini-cli at v0.38.2, v0.39.0 and main (0.56.0-nightly, 2026-08):
``packages/core/src/utils/paths.ts`` (``homedir()`` honours ``GEMINI_CLI_HOME``),
``packages/core/src/config/storage.ts`` (``<home>/.gemini/tmp/<project id>``; the project dir holds
``.project_root`` with the project's path), ``packages/core/src/services/chatRecordingService.ts``
and ``chatRecordingTypes.ts``:

- From v0.39 (commit "migrate chat recording to JSONL streaming"): main sessions write
  ``chats/session-<YYYY-MM-DDTHH-MM>-<first 8 chars of sessionId>.jsonl``, subagents
  ``chats/<parent sessionId>/<sessionId>.jsonl``, by ``appendFileSync`` of one JSON line per record.
  The first line is ``{sessionId, projectHash, startTime, lastUpdated, kind, directories?}``;
  message lines hold ``id``; a changed message is appended again with its ``id``;
  ``{"$set": {...}}`` updates metadata (it may carry a whole ``messages`` array);
  ``{"$rewindTo": id}`` drops that message and the ones after it. A rewrite (temp file
  ``<file>.tmp-<pid>`` renamed over it) is caught by the JSONL fingerprint: a new generation.
  These lines are mirrored byte for byte (``JsonlSource``); readers apply the rules.
- Before v0.39: ``session-<...>.json`` and ``<parent>/<sessionId>.json``, one pretty-printed document
  ``{sessionId, projectHash, startTime, lastUpdated, messages: [...], summary?, directories?,
  kind?}`` rewritten in place (``writeFileSync``, not atomic) on every change. Followed as a
  document (harnesses/document.py): its metadata, then each message once, a changed message again.
- Resuming a ``.json`` session with v0.39+ copies it into ``<same name>.jsonl`` (metadata line, every
  message) and appends there; the ``.json`` stays. Both carry one sessionId, so they are one
  session: once the ``.jsonl`` has its first line, it is the session's source. Its check value
  (a file fingerprint) cannot continue the document's, so the switch starts a new generation
  holding the whole ``.jsonl``.

Session id: the full ``sessionId`` of the first line (the file name holds only 8 characters of it),
read once per file (path and inode) at discovery. A ``.jsonl`` whose first line is incomplete, or a
``.json`` that does not parse yet, is not a session yet.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tracemirrord.harnesses.base import (
    DirCache,
    Discovery,
    JsonlHarness,
    Refused,
    SessionRef,
    UnknownSource,
    UnsafeSessionId,
    _walk_jsonl,
    env_path,
    json_records,
)
from tracemirrord.harnesses.document import DocumentSource, NotReady, Snapshot
from tracemirrord.harnesses.jsonl import JsonlSource
from tracemirrord.harnesses.safeopen import PathEscape, open_below
from tracemirrord.model import is_safe_segment
from tracemirrord.source import SessionInfo, Source, UnknownFormat

_FIRST_LINE_LIMIT = 1 << 20
_DESCRIBE_LINE_LIMIT = 256 * 1024

# What one file turned out to be: a session id, a refusal, or None (not a session yet)
_Identity = str | Refused | None


def load_legacy(data: bytes) -> Snapshot:
    """A pre-v0.39 ``.json`` session as metadata and messages; NotReady while it does not parse."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise NotReady(f"does not parse ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sessionId"), str):
        raise UnknownFormat("gemini-cli .json session without a sessionId")
    messages = doc.get("messages")
    if not isinstance(messages, list):
        raise UnknownFormat("gemini-cli .json session without a messages list")
    records: list[tuple[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("id"), str):
            raise UnknownFormat("gemini-cli .json session with a message that has no id")
        records.append((message["id"], message))
    return Snapshot({k: v for k, v in doc.items() if k != "messages"}, records)


def _read_below(root: Path, path: Path, limit: int | None = None) -> bytes | Refused | None:
    """The file's bytes (up to ``limit``), opened from ``root`` without following a symlink.

    None when gone; a Refused (reported by the scan) when the path goes through a symlink.
    """
    try:
        fd = open_below(root, path)
    except PathEscape as exc:
        return Refused(path, str(exc))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return f.read(limit) if limit is not None else f.read()


def _identify_jsonl(root: Path, path: Path) -> _Identity:
    head = _read_below(root, path, _FIRST_LINE_LIMIT)
    if head is None or isinstance(head, Refused):
        return head
    newline = head.find(b"\n")
    if newline < 0:
        if len(head) < _FIRST_LINE_LIMIT:
            return None  # the first line is still being written
        return UnknownSource(path, "a first line over 1 MiB (no gemini-cli session header)")
    try:
        first = json.loads(head[:newline])
    except ValueError:
        return UnknownSource(path, "a first line that is not JSON (no gemini-cli session header)")
    if not isinstance(first, dict) or not isinstance(first.get("sessionId"), str):
        return UnknownSource(path, "a first line without a sessionId (unknown gemini-cli format)")
    return first["sessionId"]


def _identify_json(root: Path, path: Path) -> _Identity:
    data = _read_below(root, path)
    if data is None or isinstance(data, Refused):
        return data
    try:
        snapshot = load_legacy(data)
    except NotReady:
        return None
    except UnknownFormat as exc:
        return UnknownSource(path, str(exc))
    assert snapshot.meta is not None
    return str(snapshot.meta["sessionId"])


def _project_root(path: Path) -> str | None:
    """The project path gemini-cli records in ``tmp/<project>/.project_root`` (v0.29+)."""
    for parent in path.parents:
        if parent.name == "chats":
            return _read_small(parent.parent / ".project_root")
    return None


def _read_small(path: Path, limit: int = 4096) -> str | None:
    """A short regular file's text, never through a symlink (a link there could name any file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, limit).decode(errors="replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    return text or None


def describe_session(path: Path, lines: list[bytes]) -> SessionInfo:
    """cwd, start, model and kind from a session's first lines (JSONL, or a mirrored document)."""
    meta: dict[str, Any] = {}
    model = None
    for record in json_records(lines):
        if isinstance(record.get("sessionId"), str) and not meta:
            meta = dict(record)
        elif isinstance(record.get("$set"), dict):
            meta.update(record["$set"])
        elif model is None and isinstance(record.get("model"), str):
            model = record["model"]
    directories = meta.get("directories")
    cwd = directories[0] if isinstance(directories, list) and directories else None
    if not isinstance(cwd, str):
        cwd = _project_root(path)
    extra = {k: str(meta[k]) for k in ("kind", "projectHash", "sessionId") if isinstance(meta.get(k), str)}
    return SessionInfo(
        cwd=cwd,
        started_at=meta.get("startTime") if isinstance(meta.get("startTime"), str) else None,
        model=model,
        title=meta.get("summary") if isinstance(meta.get("summary"), str) else None,
        extra=extra,
    )


class GeminiCli(JsonlHarness):
    name = "gemini-cli"
    root_env = ("GEMINI_CLI_HOME",)
    max_depth = 3  # tmp/<project>/chats/<parent id>/<file>
    suffixes = (".jsonl", ".json")

    def __init__(self) -> None:
        super().__init__()
        self._ids: dict[tuple[str, int, int], _Identity] = {}
        self._not_yet: dict[tuple[str, int, int], tuple[int, int]] = {}
        self._last: Discovery | None = None

    def default_roots(self, env: Mapping[str, str], home: Path) -> list[Path]:
        return [(env_path(env, "GEMINI_CLI_HOME") or home) / ".gemini" / "tmp"]

    def session_id(self, root: Path, path: Path) -> str | None:
        """Only a cached answer here: ids come from the files' first lines (see ``scan``)."""
        identity = self._identity(root, path)
        return identity if isinstance(identity, str) else None

    def _identity(self, root: Path, path: Path) -> _Identity:
        if not _may_become_session(root, path):
            return None
        try:
            st = os.lstat(path)
        except OSError:
            return None
        key = (str(path), st.st_dev, st.st_ino)
        if key in self._ids:
            return self._ids[key]
        if self._not_yet.get(key) == (st.st_size, st.st_mtime_ns):
            return None  # unchanged since it was not a session yet: no second read
        identify = _identify_jsonl if path.suffix == ".jsonl" else _identify_json
        identity = identify(root, path)
        if identity is not None:
            self._ids[key] = identity  # an id never changes for one file
            self._not_yet.pop(key, None)
        else:
            self._not_yet[key] = (st.st_size, st.st_mtime_ns)
        return identity

    def scan(self, roots: list[Path], cache: DirCache | None = None) -> Discovery:
        """Every session below the roots; a ``.jsonl`` wins over the ``.json`` of the same session.

        With a ``cache`` whose directories did not change, and no file waiting for its first line,
        the previous Discovery object itself is returned (one stat per directory, none per file).
        """
        cache = cache or DirCache(self.suffixes)
        listed = [(root, _walk_jsonl(root, self.max_depth, cache)) for root in roots]
        if cache.result is not None and cache.result_version == cache.version:
            return cache.result
        found: dict[str, SessionRef] = {}
        refused: list[Refused] = []
        seen: set[str] = set()
        waiting = False
        for root, names in listed:
            for name in names:
                path = Path(name)
                seen.add(name)
                identity = self._identity(root, path)
                if identity is None:
                    waiting = waiting or _may_become_session(root, path)
                    continue
                if isinstance(identity, Refused):
                    refused.append(identity)
                    continue
                if not is_safe_segment(identity):
                    refused.append(UnsafeSessionId(path, identity))
                    continue
                other = found.get(identity)
                if other is None or _preferred(path, other.path):
                    found[identity] = SessionRef(identity, path, root)
        self._ids = {k: v for k, v in self._ids.items() if k[0] in seen}
        self._not_yet = {k: v for k, v in self._not_yet.items() if k[0] in seen}
        result = Discovery(sorted(found.values(), key=lambda r: r.session_id), refused)
        if self._last is not None and self._last == result:
            result = self._last
        self._last = result
        if not waiting:  # else: look again next scan, the first line may be complete by then
            cache.result, cache.result_version = result, cache.version
        else:
            cache.result = None
        return result

    def open_source(self, ref: SessionRef, *, max_line_bytes: int) -> Source:
        describe = functools.partial(describe_session, ref.path)
        if ref.path.suffix == ".json":
            return DocumentSource(
                ref.path,
                load=load_legacy,
                describe=describe,
                max_line_bytes=max_line_bytes,
                volatile_meta=("lastUpdated",),
                root=ref.root,
            )
        return JsonlSource(ref.path, max_line_bytes=max_line_bytes, describe=describe, root=ref.root)


def _may_become_session(root: Path, path: Path) -> bool:
    """``<project>/chats/session-*`` or ``<project>/chats/<parent id>/*``: where sessions are kept."""
    parts = path.relative_to(root).parts
    if len(parts) not in (3, 4) or parts[1] != "chats":
        return False
    return len(parts) == 4 or parts[2].startswith("session-")


def _preferred(path: Path, other: Path) -> bool:
    """Is ``path`` the better source of one session than ``other``? JSONL first, then the larger."""
    if (path.suffix == ".jsonl") != (other.suffix == ".jsonl"):
        return path.suffix == ".jsonl"
    return _size(path) > _size(other)


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return -1
