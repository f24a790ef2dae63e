"""The progress bar ``tracemirrord --once`` draws on a terminal during a backfill.

On a TTY a first run over months of history shows one line, redrawn in place: sessions and bytes
done, rate and time left. Elsewhere (a pipe, a service's journal) the supervisor logs a progress
line every few seconds instead, so nothing here runs. Hand-written rather than a dependency: one
line of text with ``\\r`` is all it needs.
"""

from __future__ import annotations

import shutil
from typing import TextIO

from tracemirrord.ctl.status import human_size as _size

__all__ = ["ProgressBar", "render_progress"]


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render_progress(
    sessions_done: int, sessions_total: int, bytes_done: int, bytes_total: int, elapsed_s: float, width: int
) -> str:
    """One line, at most ``width`` characters: a bar by bytes, sessions, bytes, rate and time left.

    The rate is the average since the start (a backfill's pace is steady; a windowed rate would
    jump with every large file). Time left is unknown until some bytes are done.
    """
    fraction = bytes_done / bytes_total if bytes_total else (1.0 if sessions_done >= sessions_total else 0.0)
    fraction = min(max(fraction, 0.0), 1.0)
    rate = bytes_done / elapsed_s if elapsed_s > 0 else 0.0
    left = _duration((bytes_total - bytes_done) / rate) if rate > 0 and bytes_total else "?"
    text = (
        f" {fraction:4.0%}  {sessions_done}/{sessions_total} sessions  "
        f"{_size(bytes_done)}/{_size(bytes_total)}  {_size(rate)}/s  ETA {left}"
    )
    bar_width = min(30, width - len(text) - 2)
    if bar_width < 5:
        return text.strip()[:width]
    filled = int(bar_width * fraction)
    return "[" + "#" * filled + "." * (bar_width - filled) + "]" + text


class ProgressBar:
    """Draws ``render_progress`` lines over each other on ``stream`` (a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._drawn = 0  # length of the line on screen

    def draw(
        self, sessions_done: int, sessions_total: int, bytes_done: int, bytes_total: int, elapsed_s: float
    ) -> None:
        width = shutil.get_terminal_size((80, 24)).columns - 1
        line = render_progress(sessions_done, sessions_total, bytes_done, bytes_total, elapsed_s, width)
        self._stream.write("\r" + line + " " * max(0, self._drawn - len(line)))
        self._stream.flush()
        self._drawn = len(line)

    def close(self) -> None:
        """End the bar's line, so what is printed next starts on its own."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = 0
