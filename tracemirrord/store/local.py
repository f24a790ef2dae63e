"""The embedded default bucket: a local directory with the same key layout as the S3 bucket.

Owns the on-disk format of that directory:

- key ``a/b/c.jsonl`` is the file ``<root>/a/b/c.jsonl``, holding the object bytes as they are (so a
  person can ``cat`` it);
- user metadata and the ETag live in a hidden sidecar ``<root>/.tracemirror/meta/<key>.json``;
- writers hold an ``fcntl.flock`` on ``<root>/.tracemirror/meta/<dir>/.tracemirror.lock`` (one lock per
  object directory) around check-and-write, so conditional writes are atomic across processes;
- temporary files are named ``.tracemirror-tmp-*``, next to their final name.

Invariants: a write is temp file -> fsync -> sidecar (temp, fsync, rename, fsync dir) -> rename (or
``os.link`` for create-only) -> fsync dir. The sidecar keeps the description of both the current and the
incoming version, each pinned to its file by (inode, size, mtime), so after a crash at any point a reader
finds the description matching whatever file is in place. A copied or restored bucket (``cp -a``,
rsync, a backup) has new inodes and maybe new mtimes: a file the pins do not match is then described
by the version with its size and checksum (MD5, the ETag), and re-pinned to it, so its metadata
survives. A file no description matches (edited by hand) is still an object: its ETag is computed from
its bytes and its metadata is empty. Keys that could escape the root or reach the hidden tree are
refused with ValueError.

Temp files are only made while the directory's lock is held, so any found under that lock belong to a
writer that died: the first write into a directory after a start removes them.

The root must exist for any operation: one deleted while running is recreated (when its parent is
still there) and reported once as a StoreUnavailable; ``epoch`` then changes, so writers know that what
they knew of the bucket is gone and read it again.

The ETag is the hex MD5 of the content, as S3 gives for a single-part upload.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
import structlog

from tracemirrord.store.base import (
    NotFound,
    ObjectInfo,
    ObjectStore,
    PreconditionFailed,
    StoredObject,
    StoreRejected,
    StoreUnavailable,
)

log = structlog.get_logger("tracemirrord.store")

HIDDEN_DIR = ".tracemirror"
"""Top-level directory of the bucket that holds sidecars and locks; never listed, never a key."""
TEMP_PREFIX = ".tracemirror-tmp-"
"""Name prefix of in-flight temporary files; never listed."""
_LOCK_NAME = ".tracemirror.lock"
_RESERVED_SEGMENT = ".tracemirror"
_SIDECAR_SUFFIX = ".json"
_SIDECAR_VERSION = 1
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_READ_RETRIES = 3
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_REJECT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

T = TypeVar("T")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative ``/``-separated path, else raise ValueError."""
    _check_path_text(key, what="key")
    if not key:
        raise ValueError("object key is empty")
    for segment in key.split("/"):
        _check_segment(segment, key)
    return key


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a safe listing prefix (a key, or a key start ending in ``/``)."""
    _check_path_text(prefix, what="prefix")
    segments = prefix.split("/")
    for segment in segments[:-1]:
        _check_segment(segment, prefix)
    return prefix


def _check_path_text(text: str, *, what: str) -> None:
    if text.startswith("/"):
        raise ValueError(f"object {what} must be relative, got {text!r}")
    if ".." in text:
        raise ValueError(f"object {what} must not contain '..': {text!r}")
    if _FORBIDDEN_CHARS.search(text):
        raise ValueError(f"object {what} must not contain backslashes or control characters: {text!r}")


def _check_segment(segment: str, key: str) -> None:
    if segment in ("", "."):
        raise ValueError(f"object key has an empty or '.' segment: {key!r}")
    if segment.startswith(_RESERVED_SEGMENT):
        raise ValueError(f"object key uses the reserved name {_RESERVED_SEGMENT!r}: {key!r}")


def normalize_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Lower-case the metadata keys and refuse what S3 could not carry in a header (ValueError)."""
    result: dict[str, str] = {}
    for name, value in (metadata or {}).items():
        if not name or not name.isascii() or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"metadata name must be ASCII letters, digits, '-', '_' or '.': {name!r}")
        if not isinstance(value, str) or not value.isascii() or _FORBIDDEN_CHARS.search(value):
            raise ValueError(f"metadata value for {name!r} must be printable ASCII text")
        result[name.lower()] = value
    return result


@dataclass(frozen=True, slots=True)
class _Version:
    """One object version as the sidecar describes it, pinned to its file by inode, size and mtime."""

    ino: int
    size: int
    mtime_ns: int
    etag: str
    metadata: Mapping[str, str]

    def matches(self, st: os.stat_result) -> bool:
        return (self.ino, self.size, self.mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)

    def to_json(self) -> dict[str, Any]:
        return {
            "ino": self.ino,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "etag": self.etag,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> _Version:
        return cls(
            ino=int(raw["ino"]),
            size=int(raw["size"]),
            mtime_ns=int(raw["mtime_ns"]),
            etag=str(raw["etag"]),
            metadata={str(k): str(v) for k, v in dict(raw.get("metadata", {})).items()},
        )


class LocalStore:
    """An ObjectStore over a local directory (the embedded default bucket)."""

    def __init__(self, root: Path) -> None:
        self._root = Path(os.path.abspath(root))
        self._meta_root = self._root / HIDDEN_DIR / "meta"
        self._swept: set[Path] = set()  # directories cleared of dead writers' temp files
        self._root_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the root as we know it
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """Changes when the root was deleted or replaced while running: what was read before is stale."""
        return self._epoch

    @property
    def root(self) -> Path:
        """The directory that holds the objects."""
        return self._root

    @property
    def url(self) -> str:
        """``file://`` URL of the root directory."""
        return self._root.as_uri()

    async def put(
        self,
        key: str,
        body: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> str:
        """Write ``body`` atomically at ``key`` and return its ETag (see ObjectStore.put)."""
        validate_key(key)
        meta = normalize_metadata(metadata)
        expected = if_match.strip('"') if if_match is not None else None
        write = functools.partial(self._put_sync, key, bytes(body), meta, if_none_match, expected)
        return await self._run(write)

    async def get(self, key: str) -> StoredObject:
        """Read a whole object (NotFound if absent)."""
        validate_key(key)
        body, info = await self._run(functools.partial(self._read_sync, key, with_body=True))
        return StoredObject(body=body or b"", info=info)

    async def head(self, key: str) -> ObjectInfo:
        """Describe an object, metadata included (NotFound if absent)."""
        validate_key(key)
        _, info = await self._run(functools.partial(self._read_sync, key, with_body=False))
        return info

    async def list(self, prefix: str, *, start_after: str | None = None) -> list[ObjectInfo]:
        """Objects whose key starts with ``prefix``, ascending, after ``start_after`` if given."""
        validate_prefix(prefix)
        return await self._run(functools.partial(self._list_sync, prefix, start_after))

    async def check(self) -> None:
        """Create the root if needed and prove it is writable (StoreRejected naming the path if not;
        StoreUnavailable while a root seen before is gone with its parent)."""
        await anyio.to_thread.run_sync(self._check_sync)

    async def close(self) -> None:
        """Nothing to release."""

    async def _run(self, func: Callable[[], T]) -> T:
        def guarded() -> T:
            self._ensure_root()
            return func()

        try:
            return await anyio.to_thread.run_sync(guarded)
        except OSError as exc:
            raise self._translate(exc) from exc

    def _ensure_root(self, *, fail_on_change: bool = True) -> None:
        """Fail (StoreUnavailable) once when the root was deleted or replaced since we last saw it.

        A deleted root whose parent is still there is recreated empty; one whose parent is gone too
        (an unmounted disk) is reported on every call until it comes back, and nothing is created
        in its place. Either change is logged here, where it is seen: whichever call meets it (a
        part, the heartbeat, the outage watch's probe), the failure it raises may be one of an
        outage already reported, and a bucket that lost its objects must be seen in the log.
        ``fail_on_change=False`` (the probe) only records the change.
        """
        try:
            st = os.stat(self._root)
        except FileNotFoundError:
            if self._root_id is None:
                return  # never seen yet: a read finds nothing, a write creates it
            if not self._root.parent.is_dir():
                raise StoreUnavailable(
                    f"local bucket {self._root} does not exist, nor its parent directory "
                    "(deleted or unmounted?); waiting for it to come back"
                ) from None
            _makedirs(self._root)
            _makedirs(self._meta_root)
            self._changed(
                os.stat(self._root),
                f"local bucket {self._root} was deleted while running; recreated it empty, "
                "sessions are mirrored again from their start",
                fail_on_change,
            )
            return
        if self._root_id is None:
            self._root_id = (st.st_dev, st.st_ino)
        elif (st.st_dev, st.st_ino) != self._root_id:
            self._changed(
                st,
                f"local bucket {self._root} was replaced while running; "
                "sessions are read again from what it holds",
                fail_on_change,
            )

    def _changed(self, st: os.stat_result, message: str, fail: bool) -> None:
        """The root is another directory now: a new epoch (what was read of it is stale), said once."""
        self._root_id = (st.st_dev, st.st_ino)
        self._epoch += 1
        self._swept.clear()
        log.warning(message)
        if fail:
            raise StoreUnavailable(message)

    def _translate(self, exc: OSError) -> Exception:
        where = f"local bucket {self._root}"
        if exc.errno in _REJECT_ERRNOS:
            return StoreRejected(f"{where}: {exc.strerror} ({exc.filename})")
        if exc.errno in _FULL_ERRNOS:  # retried like an outage: it ends when space returns
            return StoreUnavailable(f"{where} is out of space: {exc.strerror} ({exc.filename})")
        if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG):
            return ValueError(
                f"{where}: key does not fit the directory tree: {exc.strerror} ({exc.filename})"
            )
        return StoreUnavailable(f"{where}: {exc.strerror or exc} ({exc.filename})")

    # -- paths ---------------------------------------------------------------------------------------

    def _data_path(self, key: str) -> Path:
        return self._root.joinpath(*key.split("/"))

    def _sidecar_path(self, key: str) -> Path:
        *dirs, name = key.split("/")
        return self._meta_root.joinpath(*dirs, name + _SIDECAR_SUFFIX)

    # -- write ---------------------------------------------------------------------------------------

    def _put_sync(
        self, key: str, body: bytes, metadata: dict[str, str], if_none_match: bool, if_match: str | None
    ) -> str:
        path, sidecar = self._data_path(key), self._sidecar_path(key)
        _makedirs(path.parent)
        _makedirs(sidecar.parent)
        etag = hashlib.md5(body, usedforsecurity=False).hexdigest()
        with _exclusive_lock(sidecar.parent / _LOCK_NAME):
            self._sweep_temps(path.parent, sidecar.parent)
            current = self._current_version(path, sidecar)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"{key}: already exists")
            if if_match is not None and (current is None or current.etag != if_match):
                raise PreconditionFailed(f"{key}: ETag is not {if_match!r}")
            tmp = _write_temp(path.parent, body)
            try:
                st = tmp.stat()
                new = _Version(st.st_ino, st.st_size, st.st_mtime_ns, etag, metadata)
                self._write_sidecar(sidecar, [new, *([current] if current else [])])
                _publish(tmp, path, create_only=if_none_match, key=key)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        return etag

    def _sweep_temps(self, *directories: Path) -> None:
        """Remove temp files of writers that died (the caller holds these directories' lock)."""
        for directory in directories:
            if directory in self._swept:
                continue
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
            self._swept.add(directory)

    def _current_version(self, path: Path, sidecar: Path) -> _Version | None:
        """Describe the file now at ``path`` (None if absent); the caller holds the directory lock."""
        try:
            f = open(path, "rb")  # closed by the with below
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise ValueError(f"{path} is a directory in the local bucket, not an object") from None
        with f:
            st = os.fstat(f.fileno())
            return _described(sidecar, st) or _recognised(sidecar, f, st) or _computed(f, st)

    def _repin(self, path: Path, sidecar: Path, version: _Version) -> None:
        """Pin a version recognised by its checksum to the file now in place (a copied bucket), so the
        next read needs no checksum. Under the lock, and only if that file is still the one in place."""
        with _exclusive_lock(sidecar.parent / _LOCK_NAME):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return
            if (st.st_ino, st.st_size) != (version.ino, version.size):
                return
            versions = _read_sidecar(sidecar)
            kept = [v for v in versions if (v.size, v.etag) != (version.size, version.etag)]
            pinned = replace(version, mtime_ns=st.st_mtime_ns)
            self._write_sidecar(sidecar, [pinned, *kept])

    def _write_sidecar(self, sidecar: Path, versions: list[_Version]) -> None:
        doc = {"v": _SIDECAR_VERSION, "versions": [v.to_json() for v in versions]}
        tmp = _write_temp(sidecar.parent, json.dumps(doc, separators=(",", ":")).encode())
        try:
            os.replace(tmp, sidecar)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(sidecar.parent)

    # -- read ----------------------------------------------------------------------------------------

    def _read_sync(self, key: str, *, with_body: bool) -> tuple[bytes | None, ObjectInfo]:
        path, sidecar = self._data_path(key), self._sidecar_path(key)
        for _ in range(_READ_RETRIES):
            try:
                f = open(path, "rb")  # closed by the with below
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise NotFound(key) from None
            with f:  # the open descriptor pins the version we describe and read
                st = os.fstat(f.fileno())
                version = _described(sidecar, st)
                if version is None and not _still_at(path, st):
                    continue  # replaced (and its sidecar rewritten) since we opened it: look again
                if version is None:
                    version = _recognised(sidecar, f, st)
                    if version is not None:
                        self._repin(path, sidecar, version)
                version = version or _computed(f, st)
                body = _read_all(f) if with_body else None
            return body, _info(key, version, st)
        raise StoreUnavailable(f"{key}: object keeps changing while being read")

    # -- list ----------------------------------------------------------------------------------------

    def _list_sync(self, prefix: str, start_after: str | None) -> list[ObjectInfo]:
        dir_part, _, name_start = prefix.rpartition("/")
        base = self._root.joinpath(*dir_part.split("/")) if dir_part else self._root
        keys = sorted(_walk(base, dir_part, name_start))
        if start_after is not None:
            keys = [k for k in keys if k > start_after]
        infos: list[ObjectInfo] = []
        for key in keys:
            try:
                _, info = self._read_sync(key, with_body=False)
            except NotFound:
                continue  # removed by hand while listing
            infos.append(info)
        return infos

    # -- check ---------------------------------------------------------------------------------------

    def _check_sync(self) -> None:
        # a root seen before goes through the same door as every call: a missing parent is waited
        # for (makedirs would build it on the disk under a mount point), a recreated root is logged
        self._ensure_root(fail_on_change=False)
        try:
            _makedirs(self._root)
            _makedirs(self._meta_root)
            probe = _write_temp(self._root / HIDDEN_DIR, b"check")
            probe.unlink()
            self._ensure_root(fail_on_change=False)  # seen for the first time, or changed meanwhile
        except OSError as exc:
            raise StoreRejected(
                f"local bucket {self._root} is not a writable directory: {exc.strerror or exc}"
            ) from exc


# -- file helpers (blocking; called from worker threads) ---------------------------------------------


def _makedirs(path: Path) -> None:
    os.makedirs(path, mode=_DIR_MODE, exist_ok=True)


def _write_temp(directory: Path, data: bytes) -> Path:
    """Write ``data`` to a fresh fsynced temp file in ``directory`` and return its path."""
    tmp = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def _publish(tmp: Path, path: Path, *, create_only: bool, key: str) -> None:
    """Give ``tmp`` its final name; create-only uses link(), which fails if the name exists."""
    if not create_only:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise PreconditionFailed(f"{key}: already exists") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _described(sidecar: Path, st: os.stat_result) -> _Version | None:
    """The sidecar's description of the file with status ``st``, if it has one."""
    return next((v for v in _read_sidecar(sidecar) if v.matches(st)), None)


def _computed(f: Any, st: os.stat_result) -> _Version:
    """A description computed from the bytes of the open file ``f``: its MD5, no metadata."""
    return _Version(st.st_ino, st.st_size, st.st_mtime_ns, _md5(f), {})


def _md5(f: Any) -> str:
    f.seek(0)
    return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _recognised(sidecar: Path, f: Any, st: os.stat_result) -> _Version | None:
    """The sidecar's version with this file's size and checksum, pinned to this file (a copy: new
    inode, maybe new mtime); None when no version has its size or none its bytes."""
    sized = [v for v in _read_sidecar(sidecar) if v.size == st.st_size]
    if not sized:
        return None
    etag = _md5(f)
    found = next((v for v in sized if v.etag == etag), None)
    return None if found is None else replace(found, ino=st.st_ino, mtime_ns=st.st_mtime_ns)


def _read_sidecar(sidecar: Path) -> list[_Version]:
    try:
        doc = json.loads(sidecar.read_bytes())
        return [_Version.from_json(v) for v in doc["versions"]]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except (ValueError, KeyError, TypeError):
        return []  # a damaged sidecar describes nothing; the bytes still speak for themselves


def _still_at(path: Path, st: os.stat_result) -> bool:
    try:
        return os.stat(path).st_ino == st.st_ino
    except OSError:
        return False


def _read_all(f: Any) -> bytes:
    f.seek(0)
    return f.read()


def _info(key: str, version: _Version, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=st.st_size,
        etag=version.etag,
        metadata=dict(version.metadata),
        last_modified=st.st_mtime,
    )


def _walk(directory: Path, key_dir: str, name_start: str = "") -> Iterator[str]:
    """Object keys under ``directory`` (key path ``key_dir``) whose first name starts with ``name_start``.

    Hidden entries (the sidecar tree, temp files, locks) and symlinked directories are skipped.
    """
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if entry.name.startswith(_RESERVED_SEGMENT) or not entry.name.startswith(name_start):
            continue
        key = f"{key_dir}/{entry.name}" if key_dir else entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), key)
        elif entry.is_file():
            yield key


if TYPE_CHECKING:
    _PROOF: ObjectStore = LocalStore(Path())
