"""SIGTERM and SIGHUP between the process start and the daemon's own signal handling.

Importing the harnesses and compiling the redaction rules takes a moment; a SIGTERM in that moment
(a service manager stopping a daemon it just started, a test) used to kill the process with the
default action. Installed first thing: for the daemon, the signal is remembered and acted on as
soon as its own handler is in place (stop: flush what is held, exit 0); for ``--once`` and
``--check``, SIGTERM exits at once with 128 + signal number. SIGHUP before the daemon's handler
is ignored (there is no configuration to reload yet).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

_pending: list[int] = []
_daemon_running = False


def _handle(signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGHUP:
        return
    if _daemon_running:
        _pending.append(signum)
        return
    sys.exit(128 + signum)


def install(*, daemon: bool) -> None:
    """``daemon``: this process will run the daemon (not ``--once``/``--check``), so a SIGTERM is
    kept for it: it starts, sees the stop at once, and exits 0 with nothing lost."""
    global _daemon_running
    _daemon_running = daemon
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _handle)


def daemon_starting() -> None:
    """From here on a SIGTERM is kept for the daemon instead of ending the process."""
    global _daemon_running
    _daemon_running = True


def pending() -> bool:
    """A stop was asked for before the daemon's own handler was in place."""
    return bool(_pending)
