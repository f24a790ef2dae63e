"""One agent id, one daemon: the heartbeat is written under If-Match on the ETag of our own last
beat, so another live daemon writing ``agents/<agent-id>.json`` under the same id (a copied config,
two daemons on one host with their own state dirs) is noticed when its beat moves the ETag, and
named. The beat is still written: the object says who beat last, as before; the warning says why
it keeps changing hands. Costs nothing while the id is ours alone (a header on the same PUT).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from tracemirrord.store.base import NotFound, ObjectStore, PreconditionFailed

log = structlog.get_logger("tracemirrord.heartbeat")

# Another daemon's beat counts as live for this many of its own intervals.
LIVE_FOR_INTERVALS = 3.0
_DEFAULT_INTERVAL_S = 60.0


@dataclass(frozen=True)
class OtherDaemon:
    """Who else wrote our heartbeat key, as its own beat says."""

    instance: str
    host: str
    pid: int | None

    def describe(self) -> str:
        pid = f", pid {self.pid}" if self.pid is not None else ""
        return f"host {self.host}{pid}, instance {self.instance}"


def live_other(body: bytes, instance: str, predecessors: frozenset[str], now: float) -> OtherDaemon | None:
    """The daemon that wrote ``body`` if it is another one and still running, else None.

    Our own earlier instances on this state dir (``predecessors``: a crash, a restart) are not
    others; nor is a beat that says "stopped" or is older than LIVE_FOR_INTERVALS of its interval.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    theirs = doc.get("instance")
    if not isinstance(theirs, str) or not theirs or theirs == instance or theirs in predecessors:
        return None
    if doc.get("status") != "running":
        return None
    interval = doc.get("heartbeat_interval_s")
    interval_s = (
        float(interval) if isinstance(interval, int | float) and interval > 0 else _DEFAULT_INTERVAL_S
    )
    beat = doc.get("heartbeat")
    try:
        at = datetime.fromisoformat(str(beat).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    if now - at > LIVE_FOR_INTERVALS * interval_s:
        return None
    pid = doc.get("pid")
    return OtherDaemon(theirs, str(doc.get("host") or "?"), pid if isinstance(pid, int) else None)


@dataclass
class HeartbeatWriter:
    """Writes one daemon's beats to ``key`` and notices another daemon writing there too."""

    store: ObjectStore
    key: str
    agent_id: str
    instance: str
    predecessors: frozenset[str] = frozenset()
    etag: str | None = None  # of our last beat: the next is written If-Match on it
    other: OtherDaemon | None = None  # the other daemon last seen writing our key
    _named: set[str] = field(default_factory=set)

    async def write(self, body: bytes) -> None:
        """Put ``body``; on a beat that is not ours in between, look at it, then put anyway."""
        try:
            if self.etag is None:
                self.etag = await self._put(body, if_none_match=True)
            else:
                self.etag = await self._put(body, if_match=self.etag)
            self.other = None  # the key was ours alone since our last beat
            return
        except PreconditionFailed:
            pass
        await self._look_at_current()
        self.etag = await self._put(body)

    async def _put(self, body: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        return await self.store.put(
            self.key, body, if_none_match=if_none_match, if_match=if_match, content_type="application/json"
        )

    async def _look_at_current(self) -> None:
        try:
            current = await self.store.get(self.key)
        except NotFound:
            return
        other = live_other(current.body, self.instance, self.predecessors, time.time())
        self.other = other
        if other is None or other.instance in self._named:
            return
        self._named.add(other.instance)
        log.warning(
            "another tracemirrord writes heartbeats under this agent id; they overwrite each other: "
            "give each daemon its own TRACEMIRROR_AGENT_ID",
            agent_id=self.agent_id,
            other=other.describe(),
        )
