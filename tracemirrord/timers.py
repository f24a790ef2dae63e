"""Timeouts the event loop honours exactly once (uvloop and anyio).

uvloop keeps the event loop's clock in whole milliseconds and rounds a timer's delay to the nearest
one, so a timer may fire up to a millisecond before a deadline that is not a whole millisecond (or
is one, give or take the float's last bit). An anyio cancel scope whose timer fired early schedules
it again at once, and again, until the clock passes the deadline: a busy loop of up to a millisecond
(a few hundred turns of the event loop) at every timeout. Measured on one session at 10 lines/s:
290 such turns a second, most of what notifications cost beyond polling. A deadline rounded up to
a whole millisecond and TIMER_MARGIN_S more is one the timer never fires before.
"""

from __future__ import annotations

import math

TIMER_MARGIN_S = 0.0006


def timeout_s(seconds: float) -> float:
    """``seconds`` for ``anyio.move_on_after``: rounded up so that its timer fires once (see
    TIMER_MARGIN_S); at most 1.6 ms later than asked."""
    return math.ceil(seconds * 1000) / 1000 + TIMER_MARGIN_S
