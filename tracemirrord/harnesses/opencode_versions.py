"""Following records that are rewritten in place (opencode's rows and JSON files): which versions to append.

A record version is ``(t, key, sig)``: when it was written (``time_updated`` in ms for a row, the
file's mtime in ns for a JSON file), a key unique in the session (a kind letter and the record id)
and a signature of its content. Versions are appended in ``(t, key)`` order.

What makes a re-read exactly-once is the ``Mark``: the largest ``(t, key)`` appended so far and the
content hash of that version, encoded in the Position's ``check``. From the bucket alone a read
appends only versions after the mark (and the marked record again if its content changed within
the same tick). While the daemon runs, a ``seen`` map (key -> (t, sig) of the last version
appended, for recent records) also catches the versions the mark alone cannot: a second write of a
row in the same millisecond, or a write committed late with an older timestamp.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tracemirrord.source import UnknownFormat

_SAFE_KEY = re.compile(r"[A-Za-z0-9_\-]{1,80}")
MAX_CHECK_CHARS = 120


@dataclass(frozen=True, slots=True)
class Version:
    """One version of one record as a scan sees it."""

    t: int
    key: str
    sig: str  # what tells two versions of the record apart (content hash, or file identity)

    @property
    def order(self) -> tuple[int, str]:
        return (self.t, self.key)


@dataclass(frozen=True, slots=True)
class Mark:
    """The largest ``(t, key)`` appended, with the content hash of that version, tagged by store."""

    ident: str  # which store (a database's identity, or "j" for the JSON store)
    t: int
    key: str
    sig: str

    @property
    def order(self) -> tuple[int, str]:
        return (self.t, self.key)

    def encode(self) -> str:
        key = self.key if _SAFE_KEY.fullmatch(self.key) else "x" + self.key.encode().hex()
        check = f"{self.ident}.{self.t}.{key}.{self.sig}"
        if len(check) > MAX_CHECK_CHARS:
            raise UnknownFormat(f"record id {self.key[:40]!r}... is too long to resume from")
        return check

    @classmethod
    def decode(cls, check: str) -> Mark | None:
        """The mark a check value holds; None when it is not one (a position from elsewhere)."""
        try:
            ident, t, rest = check.split(".", 2)
            key, sig = rest.rsplit(".", 1)
            if key.startswith("x"):
                key = bytes.fromhex(key[1:]).decode()
            return cls(ident, int(t), key, sig)
        except ValueError:
            return None


def content_sig(data: bytes) -> str:
    """8 hex digits of sha256: tells two versions of one record apart within one tick."""
    return hashlib.sha256(data).hexdigest()[:8]


Seen = Mapping[str, tuple[int, str]]


def is_new(v: Version, mark: Mark | None, seen: Seen, tie_sig: Callable[[Version], str]) -> bool:
    """Whether version ``v`` is to be appended after ``mark`` given what was appended (``seen``)."""
    if mark is None or v.order > mark.order:
        return True
    if v.order == mark.order:
        return seen.get(v.key) != (v.t, v.sig) and tie_sig(v) != mark.sig
    last = seen.get(v.key)
    return last is not None and last != (v.t, v.sig)


def advance(
    mark: Mark | None, seen: Seen, emitted: Iterable[tuple[Version, str]], ident: str
) -> tuple[Mark | None, dict[str, tuple[int, str]]]:
    """The mark and seen map after appending ``emitted`` (each with its content hash)."""
    new_seen = dict(seen)
    for v, csig in emitted:
        new_seen[v.key] = (v.t, v.sig)
        if mark is None or v.order >= mark.order:
            mark = Mark(ident, v.t, v.key, csig)
    return mark, new_seen


def prune(seen: Mapping[str, tuple[int, str]], horizon: int) -> dict[str, tuple[int, str]]:
    """Drop records last written before ``horizon``: a scan no longer looks at them."""
    return {k: v for k, v in seen.items() if v[0] >= horizon}
