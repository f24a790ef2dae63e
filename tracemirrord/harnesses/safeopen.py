"""Opening a file below an agent's root so that the open cannot leave the root.

``O_NOFOLLOW`` guards only the last component of a path: a directory between the root and the file
that was swapped for a symlink after discovery would lead the open anywhere on the machine. Here
the root itself is opened normally (a root that is a symlink, ``~/.claude/projects`` linked to
another disk, is followed deliberately), and every component below it is opened relative to its
parent's descriptor with ``O_NOFOLLOW``: a symlink anywhere below the root refuses the open
(``PathEscape``), whatever it points to.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from tracemirrord.source import SourceRefused

_DIR_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


class PathEscape(SourceRefused):
    """A path below a root goes through a symlink (or ``..``): refused, never followed."""

    def __init__(self, path: Path | str, root: Path | str, component: str) -> None:
        super().__init__(
            f"{path}: {component!r} below {root} is a symlink; not followed "
            "(every path below an agent's root must stay inside it)"
        )
        self.path = str(path)


def _components(root: Path, path: Path) -> list[str]:
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise PathEscape(path, root, str(path)) from None
    for part in parts:
        if part in ("", ".", ".."):
            raise PathEscape(path, root, part)
    if not parts:
        raise FileNotFoundError(errno.ENOENT, "no file below the root", str(path))
    return list(parts)


def _refused_or_gone(exc: OSError, dir_fd: int, name: str, root: Path, path: Path) -> OSError:
    """The error to raise for a component that did not open: PathEscape if it is a symlink."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return FileNotFoundError(errno.ENOENT, "gone", str(path))
        if stat.S_ISLNK(st.st_mode):
            return PathEscape(path, root, name)
        return FileNotFoundError(errno.ENOENT, "not a directory or file any more", str(path))
    return exc


def open_below(root: Path, path: Path) -> int:
    """A read-only descriptor of ``path``, opened from ``root`` one component at a time, no symlink.

    Raises PathEscape (a SourceRefused) when a component below the root is a symlink or the path
    is not below the root, FileNotFoundError when something on the way is gone, and OSError else.
    The caller closes the descriptor; the file may be of any type (check with ``os.fstat``).
    """
    parts = _components(root, path)
    dir_fd = os.open(root, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in parts[:-1]:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise _refused_or_gone(exc, dir_fd, part, root, path) from None
            os.close(dir_fd)
            dir_fd = child
        try:
            return os.open(parts[-1], _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise _refused_or_gone(exc, dir_fd, parts[-1], root, path) from None
    finally:
        os.close(dir_fd)


def open_source_file(path: Path, root: Path | None) -> int:
    """``open_below(root, path)``; without a root only the last component is guarded (``O_NOFOLLOW``),
    and a file that is a symlink counts as gone (FileNotFoundError)."""
    if root is not None:
        return open_below(root, path)
    try:
        return os.open(path, _FILE_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileNotFoundError(errno.ENOENT, "a symlink: never followed", str(path)) from None
        raise


def check_below(root: Path, path: Path) -> None:
    """Raise PathEscape unless every component of ``path`` below ``root`` is no symlink.

    For files that a library opens by name (SQLite databases): checked just before the open, so
    only a swap in between could slip through, where ``open_below`` leaves no such window.
    """
    if path == root:
        return
    current = root
    for part in _components(root, path):
        current = current / part
        try:
            st = os.lstat(current)
        except OSError:
            return  # gone: the open reports it
        if stat.S_ISLNK(st.st_mode):
            raise PathEscape(path, root, part)
