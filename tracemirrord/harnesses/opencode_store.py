"""opencode's JSON store (before about v1.2): one pretty-printed JSON file per record, rewritten whole.

Confirmed against anomalyco/opencode ``packages/opencode/src/storage/storage.ts`` and
``json-migration.ts`` (commit 062aa8c): ``storage/session/<projectID>/<sessionID>.json``,
``storage/message/<sessionID>/<messageID>.json``, ``storage/part/<messageID>/<partID>.json``; ids
come from the file names. Writes go through a temp file (``.oc-<name>.<pid>.<ms>.tmp``) and a
rename in recent versions, in place in older ones: a file that does not parse is read again later,
never appended. The JSON-to-SQLite migration copies the store into the database and leaves it in
place, so the harness follows a session found in both from the database only.

Record versions are ordered by ``(mtime_ns, kind + id)``; the check holds the largest one appended
and its content hash (opencode_versions.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import anyio.to_thread

from tracemirrord.frame import oversize_placeholder
from tracemirrord.harnesses.opencode_db import describe_lines
from tracemirrord.harnesses.opencode_versions import Mark, Version, advance, content_sig, is_new
from tracemirrord.harnesses.safeopen import open_source_file
from tracemirrord.source import (
    CursorUnit,
    Discontinuity,
    Position,
    Probe,
    Records,
    SessionInfo,
    UnknownFormat,
)

IDENT = "j"
UNPARSEABLE_GRACE_S = 30.0  # a file still unparseable this long after its last write is reported


def _json_files(directory: Path) -> list[tuple[str, os.stat_result]]:
    """(stem, lstat) of the record files in a directory (temp and hidden files skipped)."""
    found = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not entry.name.endswith(".json") or entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append((entry.name[:-5], st))
    except OSError:
        return []
    return found


def _stat_token(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)


class OpencodeStoreSource:
    """One session of the JSON store as a ``source.Source`` (unit: record versions appended)."""

    unit: CursorUnit = "records"

    def __init__(
        self, session_file: Path, session_id: str, *, max_line_bytes: int, root: Path | None = None
    ) -> None:
        self.session_file = session_file
        self.root = root  # the data dir: every file below it opened without following a symlink
        self.storage = session_file.parent.parent.parent
        self.session_id = session_id
        self.max_line_bytes = max_line_bytes
        self._messages: list[str] = []
        self._states: dict[Position, dict[str, tuple[int, str]]] = {}
        self._pending = 0
        self._info: dict[str, Any] | None = None

    @property
    def location(self) -> str:
        return str(self.session_file)

    def _message_dir(self) -> Path:
        return self.storage / "message" / self.session_id

    def probe(self) -> Probe | None:
        """Stats of the session's directories and of the newest messages' files (no file reads)."""
        tokens = [_stat_token(self.session_file), _stat_token(self._message_dir())]
        if tokens[0] is None:
            return None  # the session file is the session (opencode deletes it; empty dirs may stay)
        tokens += [_stat_token(self.storage / "part" / stem) for stem in self._messages]
        for stem in self._messages[-2:]:
            tokens.append(_stat_token(self._message_dir() / f"{stem}.json"))
            for _, st in _json_files(self.storage / "part" / stem):
                tokens.append((st.st_mtime_ns, st.st_ino, st.st_size))
        mtime = max((t[0] for t in tokens if t is not None), default=0)
        return Probe(tuple(tokens), mtime / 1e9)

    def settled_at(self, position: Position) -> Probe | None:
        return None

    async def read(self, after: Position, max_bytes: int) -> Records | Discontinuity | None:
        return await anyio.to_thread.run_sync(self._read, after, max_bytes)

    def _scan(self) -> list[tuple[Version, Path, str, str | None]]:
        """Every record file of the session: (version, path, id, message id for a part)."""
        found: list[tuple[Version, Path, str, str | None]] = []
        messages = _json_files(self._message_dir())
        self._messages = sorted(stem for stem, _ in messages)
        for stem, st in messages:
            v = Version(st.st_mtime_ns, "m" + stem, f"{st.st_ino:x}-{st.st_size:x}")
            found.append((v, self._message_dir() / f"{stem}.json", stem, None))
        for message in self._messages:
            part_dir = self.storage / "part" / message
            for stem, st in _json_files(part_dir):
                v = Version(st.st_mtime_ns, "p" + stem, f"{st.st_ino:x}-{st.st_size:x}")
                found.append((v, part_dir / f"{stem}.json", stem, message))
        found.sort(key=lambda item: item[0].order)
        return found

    def _read(self, after: Position, max_bytes: int) -> Records | Discontinuity | None:
        mark: Mark | None = None
        if after.cursor or after.check is not None:
            mark = Mark.decode(after.check or "")
            if mark is None or mark.ident != IDENT:
                return Discontinuity(f"position {after.check!r} is not an opencode JSON store position")
        if self._info is None:
            self._load_info()
        seen = self._states.get(after, {})
        candidates = self._scan()
        if not candidates and self._info is None and not self.session_file.exists():
            return None
        out: list[bytes] = []
        emitted: list[tuple[Version, str]] = []
        size = source_bytes = dropped = 0
        self._pending = 0
        for v, path, record_id, message_id in candidates:
            if not is_new(v, mark, seen, lambda v, p=path: _file_sig(p, self.root)):
                continue
            body = _read_version(path, v, self.root)
            if body is None:
                self._pending = 1
                break  # rewritten or removed since the scan: the next read sees it as it is then
            try:
                data = json.loads(body)
            except ValueError:
                if time.time() - v.t / 1e9 > UNPARSEABLE_GRACE_S:
                    raise UnknownFormat(f"{path}: not a JSON document") from None
                self._pending = 1
                break  # half-written: read again later
            line = _line(v, record_id, message_id, self.session_id, data)
            if len(line) > self.max_line_bytes:
                line = oversize_placeholder(len(line), hashlib.sha256(line).hexdigest())
                dropped += 1
            if out and size + len(line) > max_bytes:
                self._pending = 1
                break
            out.append(line)
            emitted.append((v, content_sig(body)))
            size += len(line)
            source_bytes += len(body)
        if not out:
            return Records(after, after, b"", 0)
        new_mark, new_seen = advance(mark, seen, emitted, IDENT)
        assert new_mark is not None
        end = Position(after.generation, after.cursor + len(out), new_mark.encode())
        self._states[end] = new_seen
        if len(self._states) > 16:
            for old in sorted(self._states, key=lambda p: (p.generation, p.cursor))[:-8]:
                del self._states[old]
        return Records(after, end, b"".join(out), source_bytes, dropped)

    def _load_info(self) -> None:
        try:
            doc = json.loads(_read_all(self.session_file, self.root))
        except (OSError, ValueError):
            return
        if isinstance(doc, dict):
            created = doc.get("time", {}).get("created") if isinstance(doc.get("time"), dict) else None
            self._info = {k: doc.get(k) for k in ("directory", "title", "version")}
            self._info["time_created"] = created

    def behind(self, position: Position) -> int:
        return self._pending

    def describe(self, lines: list[bytes]) -> SessionInfo:
        if self._info is None:
            self._load_info()
        return describe_lines(lines, self._info or {})

    def committed(self, position: Position) -> None:
        done = (position.generation, position.cursor)
        for old in [p for p in self._states if (p.generation, p.cursor) < done]:
            del self._states[old]


def _read_all(path: Path, root: Path | None) -> bytes:
    """A file's bytes, opened below ``root`` without following a symlink (OSError, PathEscape)."""
    fd = open_source_file(path, root)
    with os.fdopen(fd, "rb") as file:
        return file.read()


def _file_sig(path: Path, root: Path | None = None) -> str:
    try:
        return content_sig(_read_all(path, root))
    except OSError:
        return ""


def _read_version(path: Path, v: Version, root: Path | None = None) -> bytes | None:
    """The file's bytes if it is still the version scanned (same inode, size, mtime), else None.

    Raises PathEscape when its path below ``root`` goes through a symlink."""
    try:
        fd = open_source_file(path, root)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_mtime_ns != v.t or v.sig != f"{st.st_ino:x}-{st.st_size:x}":
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _line(v: Version, record_id: str, message_id: str | None, session_id: str, data: Any) -> bytes:
    doc: dict[str, Any] = {"type": "message" if message_id is None else "part", "id": record_id}
    doc["session_id"] = session_id
    if message_id is not None:
        doc["message_id"] = message_id
    times = data.get("time") if isinstance(data, dict) else None
    created = times.get("created", times.get("start")) if isinstance(times, dict) else None
    doc.update(time_created=created, time_updated=v.t // 1_000_000, data=data)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
