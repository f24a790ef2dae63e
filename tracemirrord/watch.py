"""File-system notifications for the JSONL harnesses: which files changed, which directories did.

A ``TreeWatcher`` holds one inotify instance with a watch on every directory below a harness's
roots (depth-bounded, never through a symlink). Its ``changes()`` waits on the inotify descriptor
in the event loop (no thread, no timer: an idle tree costs nothing) and returns what the kernel
reported since the last call: files written, entries created, deleted or moved (a scan is due), or
an overflow (events were lost: everything must be looked at again).

Why inotify directly and not ``watchfiles``: watchfiles' Rust watcher sleeps in a worker thread and
wakes every ``step`` (50 ms) to check for changes and Python signals, so each harness would cost a
thread and 20 wake-ups a second while idle, and it hides the kernel's queue overflow, which we must
see to rescan. inotify through ``ctypes`` is a few system calls, needs no new dependency, reports
``IN_Q_OVERFLOW`` itself, and its descriptor is waited on by the event loop like a socket. Where it
is unavailable (not Linux, a network or FUSE file system where other machines' writes raise no
event, the watch limit reached) ``open_watcher`` returns None and the harness polls as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import structlog

log = structlog.get_logger("tracemirrord.watch")

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

WRITTEN = IN_MODIFY | IN_CLOSE_WRITE
ENTRIES = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
MASK = WRITTEN | ENTRIES | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
READ_SIZE = 256 * 1024
# The largest event: its header and a name of NAME_MAX bytes with its NUL. A read that returned less
# than READ_SIZE minus this took every event queued (the kernel fills the buffer with as many as fit).
_MAX_EVENT = _EVENT.size + 256

# File systems where another machine's (or the host's) writes raise no inotify event here.
REMOTE_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "lustre", "gpfs", "virtiofs"}
)


class WatchUnavailable(OSError):
    """Notifications cannot cover these roots; the message says why (the harness then polls)."""


@dataclass
class Changes:
    """What the kernel reported since the last look."""

    written: set[str] = field(default_factory=set)  # files written, created, moved or deleted (paths)
    entries: bool = False  # something created, deleted or moved in a watched directory: scan now
    overflow: bool = False  # events were lost: rescan and look at every file again


class _Inotify:
    """The two system calls it needs, through ctypes (the standard library has no binding)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name, use_errno=True)
        self._init1 = libc.inotify_init1
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]

    def init(self) -> int:
        fd = self._init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise WatchUnavailable(err, f"inotify_init1: {os.strerror(err)}")
        return fd

    def add(self, fd: int, path: str, mask: int) -> int:
        """The watch descriptor; -errno on failure."""
        wd = self._add(fd, os.fsencode(path), mask)
        return wd if wd >= 0 else -ctypes.get_errno()


def filesystem_type(path: Path) -> str | None:
    """The type of the file system holding ``path`` (or its nearest existing parent), from
    /proc/self/mounts; None when it cannot be told."""
    target = os.path.realpath(path)
    best, kind = "", None
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        return None
    return kind


def is_remote(fs_type: str | None) -> bool:
    """Network and FUSE file systems: notifications would miss writes made elsewhere."""
    return fs_type is not None and (fs_type in REMOTE_FS or fs_type.startswith("fuse"))


class TreeWatcher:
    """inotify watches on the directories below some roots, up to ``max_depth`` levels down."""

    def __init__(self, roots: list[Path], max_depth: int) -> None:
        self.roots = [str(r) for r in roots]
        self.max_depth = max_depth
        self._sys = _Inotify()
        self._fd = self._sys.init()
        self._dirs: dict[int, tuple[str, int]] = {}  # wd -> (directory, depth below its root)
        self._wds: dict[str, int] = {}  # directory -> wd
        self._pending = Changes()

    # ---------- watches ----------

    def refresh(self, *, full: bool = False) -> bool:
        """Watch the roots that are not watched yet (created after the start, or deleted and made
        again; a missing one through its parent); ``full``: walk every tree again (after an
        overflow, when directories may have come without their events). True when a watch was
        added: the caller should scan."""
        added = False
        for root in self.roots:
            if full or root not in self._wds:
                added |= self._add_tree(root, 0, root=True)
                if root not in self._wds:
                    self._watch_ancestor(root)
        return added

    def _watch_ancestor(self, root: str) -> None:
        """A root that does not exist yet: watch its nearest existing parent (not below it), whose
        entry events make the harness task scan, and so refresh, when a step of the root appears."""
        parent = os.path.dirname(root)
        while parent:
            if self._add(parent, self.max_depth, follow=True):
                return
            if parent == os.path.dirname(parent):
                return
            parent = os.path.dirname(parent)

    def add_directory(self, directory: str) -> bool:
        """Watch one more directory (not recursively): where a session file outside the roots lives."""
        if directory in self._wds:
            return True
        return self._add(directory, self.max_depth, follow=False)

    def covers(self, path: str) -> bool:
        """Does a write to ``path`` raise an event here?"""
        return os.path.dirname(path) in self._wds

    @property
    def watched(self) -> int:
        return len(self._wds)

    def _add_tree(self, top: str, depth: int, *, root: bool = False) -> bool:
        added = False
        stack = [(top, depth)]
        while stack:
            directory, level = stack.pop()
            known = directory in self._wds
            if not self._add(directory, level, follow=root and directory == top):
                continue
            added |= not known
            if level >= self.max_depth:
                continue
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                stack.append((entry.path, level + 1))
                        except OSError:
                            continue
            except OSError:
                continue
        return added

    def _add(self, directory: str, depth: int, *, follow: bool) -> bool:
        """Watch one directory; False when it is gone or not a directory. Raises WatchUnavailable
        when the kernel's watch limit is reached."""
        mask = MASK if follow else MASK | IN_DONT_FOLLOW
        wd = self._sys.add(self._fd, directory, mask)
        if wd == -errno.ENOSPC:
            raise WatchUnavailable(
                errno.ENOSPC,
                f"inotify watch limit reached at {len(self._wds)} directories "
                "(raise /proc/sys/fs/inotify/max_user_watches)",
            )
        if wd < 0:
            return False
        old = self._dirs.get(wd)
        if old is not None and old[0] != directory:
            self._wds.pop(old[0], None)  # the same directory, moved: it answers to its new path
        self._dirs[wd] = (directory, depth)
        self._wds[directory] = wd
        return True

    def _forget(self, wd: int) -> None:
        old = self._dirs.pop(wd, None)
        if old is not None and self._wds.get(old[0]) == wd:
            del self._wds[old[0]]

    # ---------- events ----------

    async def changes(self) -> Changes:
        """Wait for events, then return everything reported so far (never empty)."""
        while True:
            self._drain()
            if self._pending.written or self._pending.entries or self._pending.overflow:
                found, self._pending = self._pending, Changes()
                return found
            await anyio.wait_readable(self._fd)

    def _drain(self) -> None:
        """Read every queued event into ``_pending`` (non-blocking)."""
        while True:
            try:
                data = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not data:
                return
            self._parse(data)
            if len(data) <= READ_SIZE - _MAX_EVENT:
                return  # the queue is empty: spare the read that would say so (EAGAIN)

    def _parse(self, data: bytes) -> None:
        pending = self._pending
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].split(b"\0", 1)[0]
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                pending.overflow = True
                continue
            if mask & IN_IGNORED:
                self._forget(wd)  # its directory was deleted or unmounted
                pending.entries = True
                continue
            where = self._dirs.get(wd)
            if where is None:
                continue
            directory, depth = where
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
                # a directory moved within the tree answers to its new path once the parent's
                # IN_MOVED_TO re-adds it (same inode, same wd); the scan finds what moved
                pending.entries = True
                continue
            path = os.path.join(directory, os.fsdecode(name)) if name else directory
            if mask & IN_ISDIR:
                if mask & (IN_CREATE | IN_MOVED_TO) and depth < self.max_depth:
                    try:
                        self._add_tree(path, depth + 1)
                    except WatchUnavailable:
                        pending.overflow = True  # the caller finds the limit again on its refresh
                pending.entries = True
                continue
            if mask & ENTRIES:
                pending.entries = True
            pending.written.add(path)  # its follower looks: more to read, or its file gone

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_watcher(roots: list[Path], max_depth: int) -> TreeWatcher:
    """A watcher on the roots; raises WatchUnavailable (with the reason) where notifications cannot
    be trusted or had: not Linux, a network or FUSE file system, no inotify instance or watch left."""
    if not sys.platform.startswith("linux"):
        raise WatchUnavailable(errno.ENOSYS, f"no inotify on {sys.platform}")
    for root in roots:
        kind = filesystem_type(root)
        if is_remote(kind):
            raise WatchUnavailable(
                errno.EREMOTE, f"{root} is on {kind}, where writes elsewhere raise no event"
            )
    watcher = TreeWatcher(roots, max_depth)
    try:
        watcher.refresh()
    except BaseException:
        watcher.close()
        raise
    return watcher
