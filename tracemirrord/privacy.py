"""Which sessions may be mirrored at all: the ``include`` / ``exclude`` globs (docs/privacy-filters.md).

A session is decided once, when the harness task first finds it, from its source path and the
working directory it ran in (its cwd); nothing of a session leaves the machine before its verdict,
and an excluded session never gets a follower. The order: an ``exclude`` pattern matching the path
or the cwd excludes; then, when there are ``include`` patterns, one of them must match the path or
the cwd; with none, everything not excluded is mirrored.

The cwd is what the harness records for the session: an index row for the database agents, the
first records of a JSONL transcript (read locally, up to HEAD_BYTES, never uploaded). A transcript
whose first records do not name their cwd yet is *undecided*: it waits (nothing read beyond its
head, nothing uploaded) until they do, until HEAD_BYTES of it are written, or until it has been
left alone for SETTLE_S, and is then decided with no cwd. A source that holds many projects' work
at once (Claude Code's prompt history) has no single cwd: while any pattern is set it is mirrored
only when an ``include`` pattern names its path.

Glob syntax (one rule for every pattern, matched against absolute paths):

- ``~`` or ``~/...`` at the start is the home directory;
- ``*`` matches within one path component, ``?`` one character of it, ``[...]`` a class of them;
  ``**`` matches across components (any depth, including none);
- a pattern matches a path or anything below it (``~/clients/acme`` covers ``~/clients/acme/app``);
- a pattern that starts with ``/`` (or ``~``) is anchored at the root; any other pattern may match
  starting at any component (``acme`` matches ``/home/me/work/acme/app``; ``clients/*`` matches
  ``/srv/clients/x``);
- matching is case-sensitive, and a trailing ``/`` is ignored.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tracemirrord.control.schema import UNDECIDED
from tracemirrord.source import START, Discontinuity, Source

if TYPE_CHECKING:
    from tracemirrord.harnesses.base import SessionRef

HEAD_BYTES = 256 * 1024  # read at most this much of a transcript to learn its cwd
FIRST_LOOK_BYTES = 8 * 1024  # and first this much (a start over ten thousand sessions reads each)
SETTLE_S = 120.0  # a transcript left alone this long names its cwd in its head or never will


@dataclass(frozen=True, slots=True)
class PathPattern:
    """One configured glob: its text as written (for status), and the expression it compiles to."""

    kind: str  # "include" or "exclude"
    text: str
    regex: re.Pattern[str]

    @property
    def label(self) -> str:
        return f"{self.kind} {self.text}"

    def matches(self, path: str | None) -> bool:
        return bool(path) and self.regex.match(_normal(path or "")) is not None


def compile_pattern(kind: str, text: str, home: Path) -> PathPattern:
    """The pattern ``text`` as a regular expression over absolute paths (ValueError if empty)."""
    glob = text.strip()
    if not glob:
        raise ValueError("an empty pattern")
    if glob == "~" or glob.startswith("~/"):
        glob = str(home).rstrip("/") + glob[1:]
    elif glob.startswith("~"):
        raise ValueError(f"{text!r}: only ~ and ~/ are expanded (not ~user)")
    glob = glob.rstrip("/") or "/"
    anchored = glob.startswith("/")
    body = _translate(glob.lstrip("/") if anchored else glob)
    head = "/" if anchored else "(?:.*/)?"
    if glob == "/":
        return PathPattern(kind, text, re.compile(r"/.*\Z", re.DOTALL))
    return PathPattern(kind, text, re.compile(rf"{head}{body}(?:/.*)?\Z", re.DOTALL))


def _translate(glob: str) -> str:
    """Glob to regex: ``**`` any run, ``*`` a run within a component, ``?``, ``[...]`` classes."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                i += 2
                if glob.startswith("/", i) and (not out or out[-1].endswith("/")):
                    out.append("(?:.*/)?")  # "**/" : any number of whole components, or none
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = glob.find("]", i + 2 if glob.startswith(("[!", "[^"), i) else i + 1)
            if end < 0:
                out.append(re.escape(c))  # no closing bracket: a literal "["
            else:
                inner = glob[i + 1 : end]
                negate = inner[:1] in ("!", "^")
                inner = inner[1:] if negate else inner
                inner = inner.replace("\\", "\\\\")
                out.append(f"[^/{inner}]" if negate else f"[{inner}]")  # a class never matches "/"
                i = end + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _normal(path: str) -> str:
    return path.rstrip("/") or "/"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a session is mirrored, and which pattern (or the lack of one) decided it."""

    mirror: bool
    because: str | None  # a pattern's label, "not included" or "many projects"; None: no filter


INCLUDED = Verdict(True, None)
NOT_INCLUDED = "not included"  # include patterns are set and none matched
MANY_PROJECTS = "many projects"  # a source with many projects' work, not named by an include


class SessionFilter:
    """The include and exclude patterns of one configuration."""

    def __init__(
        self, include: Iterable[str] = (), exclude: Iterable[str] = (), home: Path | None = None
    ) -> None:
        home = home if home is not None else Path.home()
        self.include = tuple(compile_pattern("include", p, home) for p in include)
        self.exclude = tuple(compile_pattern("exclude", p, home) for p in exclude)

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude)

    def labels(self) -> list[str]:
        """Every way a session can be left out, in the order status shows them."""
        labels = [p.label for p in self.exclude]
        if self.include:
            labels.append(NOT_INCLUDED)
        if self.active:
            labels.append(MANY_PROJECTS)
        return labels

    def tally(self, left_out: Iterable[str], undecided: int) -> dict[str, int]:
        """Sessions left out per label (every label shown, 0 or not), and ``"undecided"`` when
        some wait for a cwd: what status, the metrics and ``--check`` show."""
        counts = dict.fromkeys(self.labels(), 0)
        for because in left_out:
            counts[because] = counts.get(because, 0) + 1
        if undecided:
            counts[UNDECIDED] = undecided
        return counts

    def by_path(self, path: str, *, many_projects: bool = False) -> Verdict | None:
        """The verdict the path alone gives, or None when the cwd is needed too."""
        if not self.active:
            return INCLUDED
        for pattern in self.exclude:
            if pattern.matches(path):
                return Verdict(False, pattern.label)
        if many_projects:
            for pattern in self.include:
                if pattern.matches(path):
                    return Verdict(True, pattern.label)
            return Verdict(False, MANY_PROJECTS)
        return None

    def decide(self, path: str, cwd: str | None, *, many_projects: bool = False) -> Verdict:
        """The verdict from the path and the cwd (None: the session names none)."""
        verdict = self.by_path(path, many_projects=many_projects)
        if verdict is not None:
            return verdict
        for pattern in self.exclude:
            if pattern.matches(cwd):
                return Verdict(False, pattern.label)
        if not self.include:
            return INCLUDED
        for pattern in self.include:
            if pattern.matches(path) or pattern.matches(cwd):
                return Verdict(True, pattern.label)
        return Verdict(False, NOT_INCLUDED)


async def find_cwd(source: Source, now: float) -> tuple[bool, str | None]:
    """(known, cwd): the working directory a session ran in, as far as it can be known yet.

    ``known`` False means: not yet (its first records are still being written); the session waits.
    A transcript's head is read locally through the source itself (the same guarded open as the
    follower's) and dropped: it is not redacted, not kept, not uploaded.
    """
    info = source.describe([])
    if info.cwd:
        return True, info.cwd
    if source.unit != "bytes":
        return True, None  # a database's or document's own index is all it says
    for limit in (FIRST_LOOK_BYTES, HEAD_BYTES):  # most name it in their first line or two
        records = await source.read(START, limit)
        if records is None or isinstance(records, Discontinuity):
            return False, None  # gone, or changing under the read: look again later
        if records.data:
            cwd = source.describe(records.data.split(b"\n")[:-1]).cwd
            if cwd:
                return True, cwd
        if records.source_bytes < limit:
            break  # that was every complete record there is
    else:
        return True, None  # its head names no cwd, and the head is all we read
    probe = source.probe()
    if probe is not None and now - probe.mtime >= SETTLE_S:
        return True, None  # left alone: what it holds is all it will say
    return False, None


async def decide_by_cwd(
    session_filter: SessionFilter, ref: SessionRef, source: Source, now: float
) -> Verdict | None:
    """The verdict on a session its path alone did not decide, from its cwd (None: not known yet)."""
    known, cwd = await find_cwd(source, now)
    if not known:
        return None
    return session_filter.decide(str(ref.path), cwd, many_projects=ref.many_projects)


async def filter_counts(
    session_filter: SessionFilter, refs: Iterable[SessionRef], open_source: Callable[[SessionRef], Source]
) -> dict[str, int]:
    """How many of ``refs`` each way of leaving a session out takes, as ``--check`` shows it
    (``"undecided"``: the first records do not name a cwd yet)."""
    left_out: list[str] = []
    undecided = 0
    now = time.time()
    for ref in refs:
        verdict = session_filter.by_path(str(ref.path), many_projects=ref.many_projects)
        if verdict is None:
            try:
                verdict = await decide_by_cwd(session_filter, ref, open_source(ref), now)
            except Exception:  # unreadable now: the daemon would wait too
                verdict = None
            if verdict is None:
                undecided += 1
                continue
        if not verdict.mirror and verdict.because:
            left_out.append(verdict.because)
    return session_filter.tally(left_out, undecided)
