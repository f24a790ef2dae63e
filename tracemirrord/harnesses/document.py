"""A whole JSON document rewritten in place, followed as a stream of record versions.

Some agents keep a session as one JSON document rewritten on every change (gemini-cli before
v0.39: ``{...metadata, "messages": [...]}``). No byte offset survives a rewrite, so the document
is turned into an append-only stream of JSON lines, the same shape gemini-cli's own JSONL uses:

1. the document's metadata (everything but its records) once, as the first line;
2. each record (message) once, in document order, as one line;
3. a record already mirrored whose content changed: its new version once more, as one line with
   the same id (readers take the last version of an id);
4. metadata that changed (ignoring keys that change on every write, such as ``lastUpdated``):
   ``{"$set": <the whole current metadata>}``.

Position: ``cursor`` counts the lines emitted in this generation; ``check`` lets ``read(after)``
verify, from ``after`` alone (after a crash the writer has nothing else), that the document
still continues what was emitted:

    d1.<m>.<head>.<lastid>.<last>.<meta>

``m`` records mirrored; ``head`` chains (id, content hash) of the first ``m - 1`` records as
last emitted; ``lastid``/``last`` hash the id and last emitted content of record ``m``; ``meta``
hashes the metadata as last emitted (``-`` for none). When the document's first ``m`` ids or the
first ``m - 1`` contents no longer match (it was replaced, rewound, or an earlier record changed
while nobody was watching), ``read`` returns a Discontinuity and the writer starts a new
generation with the whole current document. A change of record ``m`` alone (the usual case: the
last reply gets its tool results and tokens) is emitted as a new version, no new generation.
Within one process the source also remembers each emitted state, so any changed record is
re-emitted precisely.

A document that does not parse (the agent is half-way through a non-atomic rewrite) is "nothing
yet": the read returns nothing and is retried later. A document of a shape the loader does not
know raises ``UnknownFormat``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

from tracemirrord.frame import oversize_placeholder
from tracemirrord.harnesses.safeopen import open_source_file
from tracemirrord.source import CursorUnit, Discontinuity, Position, Probe, Records, SessionInfo

CHECK_VERSION = "d1"
_NONE = "-"
_HASH_CHARS = 12
_REMEMBERED_STATES = 8


class NotReady(Exception):
    """The document cannot be read as a whole right now (mid-rewrite); try again later."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A document as parsed: its metadata (None when it has none) and its records, in order."""

    meta: dict[str, Any] | None
    records: list[tuple[str, Any]]  # (record id, JSON value)


Loader = Callable[[bytes], Snapshot]


def _h(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:_HASH_CHARS]


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8", "surrogatepass")


def _line(value: Any) -> bytes:
    """One compact JSON line, text kept as is (ASCII escapes only for lone surrogates)."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _chain(prev: str, record_id: str, content: str) -> str:
    return _h(f"{prev}\x00{record_id}\x00{content}")


@dataclass(frozen=True, slots=True)
class _State:
    """What one generation holds so far: each mirrored record's id and last emitted content hash."""

    ids: tuple[str, ...]
    hashes: tuple[str, ...]
    meta: str | None  # hash of the metadata as last emitted; None before the header

    def check(self) -> str:
        m = len(self.ids)
        head = ""
        for record_id, content in zip(self.ids[:-1], self.hashes[:-1], strict=True):
            head = _chain(head, record_id, content)
        last_id = _h(self.ids[-1]) if m else _NONE
        last = self.hashes[-1] if m else _NONE
        return ".".join((CHECK_VERSION, str(m), head or _NONE, last_id, last, self.meta or _NONE))


EMPTY = _State((), (), None)


def _recover(check: str | None, ids: list[str], hashes: list[str]) -> _State | str:
    """The state a check describes, verified against the document (a str: why it does not fit)."""
    fields = (check or "").split(".")
    if len(fields) != 6 or fields[0] != CHECK_VERSION or not fields[1].isdigit():
        return f"unreadable document check {check!r}"
    _, count, head, last_id, last, meta = fields
    m = int(count)
    if len(ids) < m:
        return f"the document holds {len(ids)} records, fewer than the {m} mirrored (rewound or replaced)"
    chained = ""
    for record_id, content in zip(ids[: m - 1], hashes[: m - 1], strict=True):
        chained = _chain(chained, record_id, content)
    if m and ((chained or _NONE) != head or _h(ids[m - 1]) != last_id):
        return "the document no longer starts with what was mirrored (replaced, rewound or edited)"
    mirrored = [*hashes[: m - 1], last] if m else []
    return _State(tuple(ids[:m]), tuple(mirrored), None if meta == _NONE else meta)


@dataclass(frozen=True, slots=True)
class _Doc:
    snapshot: Snapshot
    ids: list[str]
    hashes: list[str]
    meta_hash: str | None


class DocumentSource:
    """A JSON document rewritten whole, as a ``source.Source`` of record versions (unit "records")."""

    unit: CursorUnit = "records"

    def __init__(
        self,
        path: Path,
        *,
        load: Loader,
        describe: Callable[[list[bytes]], SessionInfo],
        max_line_bytes: int,
        volatile_meta: tuple[str, ...] = (),
        root: Path | None = None,
    ) -> None:
        self.path = path
        self.root = root  # opened from here without following a symlink (safeopen.py)
        self._load = load
        self._describe = describe
        self.max_line_bytes = max_line_bytes
        self.volatile_meta = volatile_meta
        self._states: OrderedDict[Position, _State] = OrderedDict()
        self._pending = 0  # lines the document held beyond the last position read

    @property
    def location(self) -> str:
        return str(self.path)

    # ---------- reading the document ----------

    def _read_doc(self) -> _Doc | None:
        """The parsed document; None when gone. Raises NotReady, UnknownFormat (from the loader),
        PathEscape (the path below the root goes through a symlink)."""
        try:
            fd = open_source_file(self.path, self.root)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            chunks = []
            while block := os.read(fd, 1 << 20):
                chunks.append(block)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if not data.strip():
            raise NotReady("empty document")
        snapshot = self._load(data)
        ids = [record_id for record_id, _ in snapshot.records]
        hashes = [_h(_canonical(value)) for _, value in snapshot.records]
        return _Doc(snapshot, ids, hashes, self._meta_hash(snapshot.meta))

    def _meta_hash(self, meta: dict[str, Any] | None) -> str | None:
        if meta is None:
            return None
        return _h(_canonical({k: v for k, v in meta.items() if k not in self.volatile_meta}))

    def _state_at(self, after: Position, doc: _Doc) -> _State | Discontinuity:
        if after.at_start:
            return EMPTY
        state = self._states.get(after)
        if state is None:
            recovered = _recover(after.check, doc.ids, doc.hashes)
            if isinstance(recovered, str):
                return Discontinuity(recovered)
            return recovered
        m = len(state.ids)
        if len(doc.ids) < m or tuple(doc.ids[:m]) != state.ids:
            return Discontinuity(
                "the document no longer holds the mirrored records in order (rewound or replaced)"
            )
        return state

    def _emit(self, state: _State, doc: _Doc, max_bytes: int) -> tuple[list[bytes], _State, int, int]:
        """(lines, new state, oversize lines dropped, lines still pending) after ``state``."""
        lines: list[bytes] = []
        size = 0
        dropped = 0
        hashes = list(state.hashes)
        meta = state.meta
        todo: list[tuple[str, Any, int | None]] = []  # (kind, value, record index)
        snap = doc.snapshot
        if snap.meta is not None and doc.meta_hash != state.meta:
            todo.append(("meta" if state.meta is None else "set", snap.meta, None))
        m = len(state.ids)
        todo.extend(("record", snap.records[j][1], j) for j in range(m) if doc.hashes[j] != hashes[j])
        todo.extend(("record", snap.records[j][1], j) for j in range(m, len(doc.ids)))
        ids = list(state.ids)
        done = 0
        for kind, value, j in todo:
            if lines and size >= max_bytes:
                break
            line = _line({"$set": value} if kind == "set" else value)
            if len(line) > self.max_line_bytes:
                line = oversize_placeholder(len(line), hashlib.sha256(line).hexdigest())
                dropped += 1
            lines.append(line)
            size += len(line)
            done += 1
            if j is None:
                meta = doc.meta_hash
            elif j < len(ids):
                hashes[j] = doc.hashes[j]
            else:
                ids.append(doc.ids[j])
                hashes.append(doc.hashes[j])
        return lines, _State(tuple(ids), tuple(hashes), meta), dropped, len(todo) - done

    def _read_blocking(self, after: Position, max_bytes: int) -> Records | Discontinuity | None:
        try:
            doc = self._read_doc()
        except NotReady:
            return Records(after, after, b"", 0)
        if doc is None:
            return None
        state = self._state_at(after, doc)
        if isinstance(state, Discontinuity):
            return state
        lines, new_state, dropped, pending = self._emit(state, doc, max_bytes)
        self._pending = pending
        if not lines:
            self._remember(after, state)
            return Records(after, after, b"", 0)
        data = b"".join(lines)
        end = Position(after.generation, after.cursor + len(lines), new_state.check())
        self._remember(end, new_state)
        return Records(after, end, data, len(data), dropped)

    def _remember(self, position: Position, state: _State) -> None:
        self._states[position] = state
        self._states.move_to_end(position)
        while len(self._states) > _REMEMBERED_STATES:
            self._states.popitem(last=False)

    # ---------- the Source protocol ----------

    def probe(self) -> Probe | None:
        try:
            st = os.lstat(self.path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return Probe((st.st_size, st.st_dev, st.st_ino, st.st_mtime_ns), st.st_mtime)

    def settled_at(self, position: Position) -> Probe | None:
        before = self.probe()
        if before is None:
            return None
        try:
            doc = self._read_doc()
        except NotReady:
            return None
        except Exception:  # an unknown format: let the follower report it
            return None
        if doc is None:
            return None
        state = self._state_at(position, doc)
        if isinstance(state, Discontinuity):
            return None
        lines, _, _, _ = self._emit(state, doc, 1)
        if lines or self.probe() != before:
            return None
        self._remember(position, state)
        return before

    async def read(self, after: Position, max_bytes: int) -> Records | Discontinuity | None:
        return await anyio.to_thread.run_sync(functools.partial(self._read_blocking, after, max_bytes))

    def behind(self, position: Position) -> int:
        return self._pending

    def describe(self, lines: list[bytes]) -> SessionInfo:
        return self._describe(lines)

    def committed(self, position: Position) -> None:
        """Nothing to free: the document itself is the buffer."""
