"""Who may write a session: the meta.json lease, judged by *instance*, never by agent id alone.

Two daemons may share an agent id (two state dirs on one host, a config copied to a second host),
so only the instance (12 hex digits, new at each start) says whose a lease is. A lease is ours
when it names this instance or one of its *predecessors*: earlier daemons on the same state dir,
which the state-dir lock proves are gone (``record_instance``). A lease of another instance is
live until ``ttl`` after its renewal, unless it names a process on this machine that no longer
exists (``pid`` and ``pid_scope``): then it is taken over at once. Without that proof, a second
daemon backs off and takes over once the lease has not been renewed for the TTL.

The lease only keeps writers from wasting work: parts are create-only at keys fixed by their seq,
so two writers that both think they hold it still cannot interleave or duplicate bytes.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tracemirrord.model import Lease, short_hash

INSTANCES_FILE = "instances"
_KEEP_INSTANCES = 32  # predecessors remembered: enough for a crash loop that never touched a session
_MIN_RETRY_S = 0.2


class LeaseHeld(Exception):
    """Another live daemon holds this session's lease: back off, say so, do not write.

    ``retry_in_s`` is when the lease would expire if it is not renewed (the time to look again).
    """

    def __init__(self, message: str, retry_in_s: float) -> None:
        super().__init__(message)
        self.retry_in_s = retry_in_s


@dataclass(frozen=True, slots=True)
class Holder:
    """This daemon as a lease names it, and the instances whose leases are already its own."""

    agent_id: str
    instance: str
    pid: int
    pid_scope: str
    predecessors: frozenset[str] = frozenset()

    def lease(self, renewed_at: str) -> Lease:
        return Lease(self.agent_id, self.instance, renewed_at, self.pid, self.pid_scope)


def pid_scope() -> str:
    """Where a pid means one process: this host name, kernel boot and pid namespace (hashed).

    Two daemons with equal scopes see the same processes, so one can tell the other's pid is gone.
    Where a part is unknown (no /proc: macOS) it is left empty; a stale pid then only makes us wait.
    """
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:
        parts.append("")
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        parts.append("")
    return short_hash("\0".join(parts).encode())


def process_gone(pid: int) -> bool:
    """True only when no process has this pid (a process of another user still counts as alive)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def record_instance(state_dir: Path, instance: str) -> frozenset[str]:
    """Add ``instance`` to the state dir's list and return the instances before it.

    Call it only while holding the state-dir lock: it is what proves those instances have stopped.
    A list that cannot be written (disk full) still yields the predecessors that could be read.
    """
    path = state_dir / INSTANCES_FILE
    try:
        known = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        known = []
    kept = [i for i in known if i != instance][-(_KEEP_INSTANCES - 1) :]
    tmp = path.with_name(f".{INSTANCES_FILE}.tmp")
    with contextlib.suppress(OSError):
        tmp.write_text("".join(f"{i}\n" for i in [*kept, instance]))
        os.replace(tmp, path)
    return frozenset(kept)


def _age_s(lease: Lease, now: float) -> float | None:
    try:
        return now - datetime.fromisoformat(lease.renewed_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def takeover_reason(lease: Lease | None, me: Holder, ttl_s: float, now: float) -> str | None:
    """Why we may write under ``lease`` (None when it is ours or free); LeaseHeld when we may not.

    The reason names a takeover worth logging: a predecessor's lease, a dead process, an expiry.
    """
    if lease is None or lease.instance == me.instance:
        return None
    if lease.instance in me.predecessors:
        return "held by an earlier daemon on this state dir"
    if lease.pid is not None and lease.pid_scope == me.pid_scope and process_gone(lease.pid):
        return f"its process {lease.pid} on this machine is gone"
    age = _age_s(lease, now)
    if age is None or age >= ttl_s:
        return f"not renewed for {ttl_s:g}s"
    raise LeaseHeld(
        f"another tracemirrord (agent {lease.agent_id}, instance {lease.instance}) holds this session's "
        f"lease, renewed {lease.renewed_at}; backing off, taking over if it is not renewed within "
        f"{ttl_s:g}s",
        retry_in_s=max(_MIN_RETRY_S, min(ttl_s / 4, ttl_s - age + 0.05)),
    )
