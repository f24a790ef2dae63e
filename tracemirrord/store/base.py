"""The ObjectStore protocol: the only five things tracemirror asks of a bucket.

Every backend (the embedded directory bucket, S3) implements exactly this, and one contract
test suite (tests/test_store_contract.py) runs against each of them.

Errors are part of the contract:
- ``NotFound``: the key does not exist (get, head).
- ``PreconditionFailed``: a conditional put lost: ``if_none_match`` and the key exists, or
  ``if_match`` and the current ETag differs (or the key is gone). It is an answer, not a fault:
  callers re-read and decide; they never retry it blindly.
- ``StoreUnavailable``: the store could not be reached or answered with a server error after the
  backend's own bounded retries. Callers back off and try again later; nothing is lost because the
  source is the buffer.
- ``StoreRejected``: the store answered with a permanent refusal (access denied, no such bucket,
  bad credentials). Callers report it clearly and back off for long; retrying fast will not help.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class StoreError(Exception):
    """Base of every error an ObjectStore raises."""


class NotFound(StoreError):
    """The key does not exist."""


class PreconditionFailed(StoreError):
    """A conditional write lost (If-None-Match: * on an existing key, or an If-Match mismatch)."""


class StoreUnavailable(StoreError):
    """Unreachable, timing out or failing with server errors after bounded retries."""


class StoreRejected(StoreError):
    """A permanent refusal: access denied, missing bucket, invalid credentials."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a listing or a HEAD says about one object.

    ``metadata`` holds the user metadata given at put time (lower-case keys, str values); a
    listing does not carry it (empty mapping), a HEAD or GET does.
    """

    key: str
    size: int
    etag: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    last_modified: float | None = None  # seconds since the epoch, informational only


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A GET result: the body and what HEAD would have said."""

    body: bytes
    info: ObjectInfo


def store_epoch(store: object) -> int:
    """A store's ``epoch``, if it has one: it changes when the whole bucket was deleted or replaced
    under a running daemon (the embedded bucket can tell), so what was read of it before is stale."""
    epoch = getattr(store, "epoch", 0)
    return epoch if isinstance(epoch, int) else 0


@runtime_checkable
class ObjectStore(Protocol):
    """A flat key space with conditional writes. Keys are ``/``-separated relative paths."""

    @property
    def url(self) -> str:
        """A printable description of where objects go (never holds a credential)."""
        ...

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
        """Write ``body`` at ``key`` and return the new ETag.

        ``if_none_match=True`` creates only (raises PreconditionFailed if the key exists);
        ``if_match=etag`` replaces only that version (PreconditionFailed otherwise, also when the key
        is absent); the ETag may be given with or without quotes. The write is atomic: a reader sees
        the old object or the whole new one, never a part.

        A conditional put whose earlier attempt landed without its answer arriving (a retry after a
        lost response) also raises PreconditionFailed: callers tell "mine" from "someone else's" by
        heading the key and comparing what they put in the metadata (e.g. the body's sha256).

        Keys are validated: absolute keys, ``..``, empty segments, backslashes, control characters
        and segments starting with ``.tracemirror`` (reserved by the embedded bucket) raise
        ValueError. Metadata names are ASCII letters, digits, ``-``, ``_`` or ``.`` (returned
        lower-cased) and values printable ASCII, else ValueError: S3 carries them as HTTP headers.
        """
        ...

    async def get(self, key: str) -> StoredObject:
        """Read a whole object (NotFound if absent)."""
        ...

    async def head(self, key: str) -> ObjectInfo:
        """Describe an object, user metadata included (NotFound if absent)."""
        ...

    async def list(self, prefix: str, *, start_after: str | None = None) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in ascending key order.

        ``start_after`` skips keys that sort at or before it (S3 ListObjectsV2 semantics).
        """
        ...

    async def check(self) -> None:
        """Prove the bucket is reachable and usable (raise StoreRejected/StoreUnavailable if not)."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...
