"""A dependency-free client of systemd's notify protocol (sd_notify(3)), for ``Type=notify`` units.

Why our own: libsystemd bindings are a C dependency for what is one datagram per message. The
protocol is newline-separated ``KEY=value`` assignments sent to the AF_UNIX datagram socket named
by ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Outside systemd the
variable is unset and every method does nothing; a send that fails is logged once at debug and
never raised, since a lost notification must not take the mirror down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("tracemirrord")


def _one_line(text: str) -> str:
    """A STATUS value: a newline would end the assignment and start a bogus one."""
    return " ".join(text.replace("\0", " ").split())


class Notifier:
    """Tells the service manager about readiness, status, liveness and shutdown; see the module doc."""

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        raw = env.get("NOTIFY_SOCKET", "")
        # Only forms we can address: an absolute path or an abstract name (vsock: and others are not).
        self._address: str | None = None
        if raw.startswith("@") and len(raw) > 1:
            self._address = "\0" + raw[1:]
        elif raw.startswith("/"):
            self._address = raw
        self._watchdog_usec: int | None = None
        usec, owner = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID guards against a child that inherited the variables pinging for its parent.
        if self._address and usec.isdigit() and int(usec) > 0 and (not owner or owner == str(pid)):
            self._watchdog_usec = int(usec)
        self._sock: socket.socket | None = None
        self._failed_once = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half the unit's WatchdogSec, as sd_watchdog_enabled(3) advises."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2_000_000

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        if self._watchdog_usec is not None:
            self._send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self._send(f"STOPPING=1\nSTATUS={_one_line(status)}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets Type=notify-reload units tell this reload from an earlier one.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def ready_after_reload(self, status: str) -> None:
        self.ready(status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._sock is None:
                kind = socket.SOCK_DGRAM | getattr(socket, "SOCK_CLOEXEC", 0)
                self._sock = socket.socket(socket.AF_UNIX, kind)
                self._sock.setblocking(False)
            self._sock.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            if not self._failed_once:
                self._failed_once = True
                log.debug("sd_notify failed; further failures are not logged", error=str(exc))
