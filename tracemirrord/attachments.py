"""Files that belong to a session but are no transcript (Claude Code's ``tool-results/``), mirrored once.

Each ``harnesses.base.Attachment`` becomes one object ``<session prefix><name>``, written once,
create-only (``If-None-Match: *``; a 412 means it is already there). Such files are written once
by the agent and never change, so there is no cursor: a file is uploaded whole once it is *stable*
(its mtime at least ``STABLE_AFTER_S`` old, and unchanged while it was read), so a half-written
file is never uploaded; a younger one waits for a later call.

What is already in the bucket is learned with one LIST per listing prefix (the name's directory
below the session prefix, e.g. ``.../<session>/tool-results/``), cached for the life of the
process, so a restart re-uploads nothing and an unchanged list costs no request at all.

Redaction: the redactor works on lines, and on any text (JSON or not): output line i is input
line i with each secret replaced. A ``.json`` file is redacted as it is: a JSON string never holds
a raw newline, so each string sits on one line and the document stays valid JSON. A file larger
than ``max_line_bytes`` cannot be redacted in bounded memory; it is replaced by the placeholder of
frame.py (its size and sha256) and counted under ``oversize-line``.

Errors never escape: a store error is logged once per object (the outage once, by StoreHealth) and
the file is tried again on a later call; an unreadable file likewise; a name that cannot be a key
is logged once and skipped.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.to_thread
import structlog

from tracemirrord import layout
from tracemirrord.frame import OVERSIZE_RULE, oversize_placeholder
from tracemirrord.harnesses.base import Attachment
from tracemirrord.harnesses.safeopen import PathEscape, open_source_file
from tracemirrord.model import SessionKey, is_safe_segment
from tracemirrord.redact import Redactor

if TYPE_CHECKING:
    from tracemirrord.anonymize import AnonymizingRedactor
from tracemirrord.store.base import ObjectStore, PreconditionFailed, StoreError

log = structlog.get_logger("tracemirrord.attachments")

STABLE_AFTER_S = 2.0
CONCURRENCY = 4
_HASH_BLOCK = 1 << 20
METADATA_KEY = layout.PART_METADATA_KEY


class _Health(Protocol):
    def ok(self) -> None: ...

    def failed(self, exc: StoreError) -> None: ...


class AttachmentContext(Protocol):
    """What AttachmentMirror uses of the daemon's MirrorContext."""

    store: ObjectStore
    redactor: Redactor | AnonymizingRedactor
    project: str
    max_line_bytes: int
    health: _Health


@dataclass(frozen=True, slots=True)
class Prepared:
    """One file, read and redacted, ready to PUT."""

    body: bytes
    metadata: dict[str, str]
    content_type: str
    counts: dict[str, int]


class NotStable(Exception):
    """The file is too young or changed while it was read: try again later."""


def prepare(
    path: Path,
    *,
    redactor: Redactor | AnonymizingRedactor,
    max_line_bytes: int,
    stable_before: float,
    root: Path | None = None,
) -> Prepared | None:
    """Read and redact one attachment file (blocking). None when it is gone or no regular file.

    Raises NotStable when its mtime is after ``stable_before`` or it changed while being read,
    PathEscape when its path below ``root`` goes through a symlink (never followed).
    """
    try:
        fd = open_source_file(path, root)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with os.fdopen(fd, "rb") as file:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return None
        if before.st_mtime > stable_before:
            raise NotStable(f"{path} was modified {time.time() - before.st_mtime:.1f}s ago")
        counts: dict[str, int] = {}
        if before.st_size > max_line_bytes:
            digest = hashlib.sha256()
            size = 0
            while block := file.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
            body = oversize_placeholder(size, digest.hexdigest())
            counts[OVERSIZE_RULE] = 1
        else:
            data = file.read(max_line_bytes + 1)
            size = len(data)
            if size > max_line_bytes:
                raise NotStable(f"{path} grew while it was read")
            redaction = redactor.redact(data)
            body, counts = redaction.data, dict(redaction.counts)
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (
            before.st_size,
            before.st_mtime_ns,
        ) or size != after.st_size:
            raise NotStable(f"{path} changed while it was read")
    fields = ["v=1", "k=attachment", f"n={size}", f"sha={hashlib.sha256(body).hexdigest()}"]
    if counts:
        fields.append("r=" + ",".join(f"{rule}:{n}" for rule, n in sorted(counts.items())))
    content_type = "application/json" if path.name.endswith(".json") else "text/plain; charset=utf-8"
    return Prepared(body, {METADATA_KEY: ";".join(fields)}, content_type, counts)


def _name_ok(name: str) -> bool:
    return all(is_safe_segment(seg) and not seg.startswith(".tracemirror") for seg in name.split("/"))


class AttachmentMirror:
    """Uploads each attachment once, redacted, create-only; call ``mirror`` after every discovery."""

    def __init__(self, ctx: AttachmentContext, *, stable_after_s: float = STABLE_AFTER_S) -> None:
        self.ctx = ctx
        self.stable_after_s = stable_after_s
        self._done: set[str] = set()  # object keys known to be in the bucket
        self._listed: set[str] = set()  # listing prefixes already listed
        self._keys: dict[tuple[str, str, str], str | None] = {}  # (harness, session, name) -> key
        self._last: tuple[str, list[Attachment]] | None = None  # the last call's list, by identity
        self._waiting: dict[str, Attachment] = {}  # of it, what is not in the bucket yet
        self._failing: set[str] = set()  # keys whose failure was logged (once, until they succeed)
        self._limiter = anyio.CapacityLimiter(CONCURRENCY)
        self.counts: dict[str, int] = {}  # redactions and oversize placeholders, per rule, since start
        self.uploaded = 0  # objects written by this process
        self.pending = 0  # attachments not in the bucket after the last call (too young, or failed)

    def _key(self, harness: str, item: Attachment) -> str | None:
        """The object key of an attachment (cached); None, logged once, when it cannot be one."""
        where = (harness, item.session_id, item.name)
        if where in self._keys:
            return self._keys[where]
        key = None
        try:
            if not _name_ok(item.name):
                raise layout.LayoutError(f"attachment name {item.name!r} is not a safe key")
            key = layout.session_prefix(self.ctx.project, SessionKey(harness, item.session_id)) + item.name
        except layout.LayoutError as exc:
            log.error("attachment refused", harness=harness, path=str(item.path), error=str(exc))
        self._keys[where] = key
        return key

    async def mirror(self, harness: str, items: list[Attachment]) -> None:
        """Upload every stable attachment of ``items`` that the bucket does not hold yet.

        Called after every scan: the same list object as last time costs nothing once all of it is
        in the bucket, and only a retry of what is still waiting (too young, or failed) otherwise.
        """
        if self._last is not None and self._last[0] == harness and self._last[1] is items:
            todo = dict(self._waiting)
        else:
            todo = {}
            for item in items:
                key = self._key(harness, item)
                if key is not None and key not in self._done:
                    todo[key] = item
            self._last = (harness, items)
        if not todo:
            self._waiting = {}
            self.pending = 0
            return
        failed: set[str] = set()
        await self._learn_listings(todo, failed)
        todo = {key: item for key, item in todo.items() if key not in self._done}
        stable_before = time.time() - self.stable_after_s
        gone: set[str] = set()
        async with anyio.create_task_group() as tg:
            for key, item in todo.items():
                if key not in failed:
                    tg.start_soon(self._upload, harness, key, item, stable_before, gone)
        self._waiting = {k: item for k, item in todo.items() if k not in self._done and k not in gone}
        self.pending = len(self._waiting)

    async def _learn_listings(self, todo: Mapping[str, Attachment], failed: set[str]) -> None:
        """One LIST per listing prefix not yet listed; everything found there is done."""
        prefixes: dict[str, list[str]] = {}
        for key in todo:
            prefix = key.rsplit("/", 1)[0] + "/"
            if prefix not in self._listed:
                prefixes.setdefault(prefix, []).append(key)
        for prefix, keys in prefixes.items():
            try:
                found = await self.ctx.store.list(prefix)
            except StoreError as exc:
                self.ctx.health.failed(exc)
                failed.update(keys)
                continue
            self._done.update(info.key for info in found)
            self._listed.add(prefix)

    async def _upload(
        self, harness: str, key: str, item: Attachment, stable_before: float, gone: set[str]
    ) -> None:
        async with self._limiter:
            read = functools.partial(
                prepare,
                item.path,
                redactor=self.ctx.redactor,
                max_line_bytes=self.ctx.max_line_bytes,
                stable_before=stable_before,
                root=item.root,
            )
            try:
                prepared = await anyio.to_thread.run_sync(read)
            except NotStable:
                return  # a later call takes it
            except PathEscape as exc:
                self._fail_once(key, item, str(exc))
                return
            except OSError as exc:
                self._fail_once(key, item, f"{type(exc).__name__}: {exc}")
                return
            if prepared is None:
                gone.add(key)  # gone before it could be read: nothing to keep
                return
            try:
                await self.ctx.store.put(
                    key,
                    prepared.body,
                    metadata=prepared.metadata,
                    if_none_match=True,
                    content_type=prepared.content_type,
                )
            except PreconditionFailed:  # already there (an earlier run, or another writer): done
                log.debug("attachment already in the bucket", key=key)
            except StoreError as exc:
                self.ctx.health.failed(exc)
                self._fail_once(key, item, f"{type(exc).__name__}: {exc}")
                return
            except ValueError as exc:  # the store refuses the key: never retried
                self._done.add(key)
                log.error("attachment refused", harness=harness, path=str(item.path), error=str(exc))
                return
            else:
                self.uploaded += 1
                for rule, n in prepared.counts.items():
                    self.counts[rule] = self.counts.get(rule, 0) + n
                log.debug(
                    "attachment mirrored", key=key, bytes=len(prepared.body), redactions=prepared.counts
                )
            self.ctx.health.ok()
            self._done.add(key)
            self._failing.discard(key)

    def _fail_once(self, key: str, item: Attachment, error: str) -> None:
        if key not in self._failing:
            self._failing.add(key)
            log.warning("attachment not mirrored; retrying later", path=str(item.path), key=key, error=error)
