"""Know the store before trusting it: prove that it enforces conditional writes.

Exactly-once parts and meta.json updates that lose nothing between writers rest on two S3
preconditions: create-only (``If-None-Match: *``) and compare-and-swap (``If-Match: <etag>``). Some
S3-compatible servers (older MinIO and Ceph releases, some gateways) accept both headers and ignore
them, and then two writers of one session duplicate parts without a word. The probe asks the store to
do what it must refuse, on one scratch key (``layout.probe_key``), and reports what it did.

The scratch key is never deleted (the daemon deletes nothing; its least-privilege policy has no
DeleteObject): it is one small object per agent id, replaced by compare-and-swap at every probe.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

from tracemirrord.store.base import NotFound, ObjectStore, PreconditionFailed, StoreRejected

# An ETag no object has: S3 ETags are MD5-like hex, and this one would need an MD5 of all zeros.
WRONG_ETAG = "0" * 32
PROBE_TRIES = 3  # a daemon of the same agent id probing at the same moment can win a write we needed
CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """What the store did with the writes it must refuse (and the one it must accept)."""

    create_only: bool  # a create-only write of an existing key was refused (412)
    compare_and_swap: bool  # a write on an ETag the key does not have was refused (412)
    swap_accepted: bool = True  # a write on the key's current ETag was accepted

    @property
    def enforced(self) -> bool:
        """Both preconditions hold: several writers may share the bucket."""
        return self.create_only and self.compare_and_swap and self.swap_accepted

    @property
    def ignored(self) -> list[str]:
        """The preconditions the store let through, as a person reads them."""
        names = []
        if not self.create_only:
            names.append("create-only writes (If-None-Match: *)")
        if not self.compare_and_swap:
            names.append("compare-and-swap writes (If-Match)")
        return names

    def describe(self) -> str:
        """One phrase: ``enforced``, or what the store ignores or refuses."""
        if self.enforced:
            return "enforced (create-only If-None-Match: * and compare-and-swap If-Match)"
        if not self.swap_accepted:
            return "BROKEN: a write on the object's current ETag (If-Match) was refused"
        return "NOT ENFORCED: " + " and ".join(self.ignored) + " accepted where they must be refused"


class ConditionalWritesIgnored(StoreRejected):
    """The store does not enforce conditional writes and single-writer mode is off (or cannot help)."""


async def probe_conditional_writes(store: ObjectStore, key: str, body: bytes) -> ProbeReport:
    """Write ``key`` in the ways the store must refuse, and say which it refused.

    Raises a StoreError when the store cannot be asked at all (unreachable, access denied).
    """
    for _ in range(PROBE_TRIES):
        etag = await _existing_or_created(store, key, body)
        create_only = await _refused(store.put(key, body, if_none_match=True, content_type=CONTENT_TYPE))
        swap_guarded = await _refused(store.put(key, body, if_match=WRONG_ETAG, content_type=CONTENT_TYPE))
        if not (create_only and swap_guarded):
            etag = (await store.head(key)).etag  # the ignored writes replaced it
        try:
            await store.put(key, body, if_match=etag, content_type=CONTENT_TYPE)
        except PreconditionFailed:
            continue  # replaced since we read its ETag (another probe of this agent id): again
        return ProbeReport(create_only=create_only, compare_and_swap=swap_guarded)
    return ProbeReport(create_only=True, compare_and_swap=True, swap_accepted=False)


async def _existing_or_created(store: ObjectStore, key: str, body: bytes) -> str:
    """The key's ETag, creating it first when it does not exist yet (a first probe)."""
    for _ in range(PROBE_TRIES):
        try:
            return (await store.head(key)).etag
        except NotFound:
            pass
        try:
            return await store.put(key, body, if_none_match=True, content_type=CONTENT_TYPE)
        except PreconditionFailed:
            continue  # created meanwhile by another probe: read it
    return (await store.head(key)).etag


async def _refused(write: Awaitable[str]) -> bool:
    """True when the write was refused with a failed precondition, False when it was done."""
    try:
        await write
    except PreconditionFailed:
        return True
    return False
