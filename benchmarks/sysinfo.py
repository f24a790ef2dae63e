"""Small helpers shared by the benchmarks: the machine description, /proc readings, percentiles, tables.

Linux only (reads ``/proc``). Not a benchmark itself.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, object]:
    """nproc, CPU model, RAM, kernel and Python version, and the date (UTC), for the report."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kib(pid: int, name: str) -> int:
    """One ``kB`` line of /proc/<pid>/status (VmHWM, VmRSS, ...), in KiB (0 when absent)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """Polls VmRSS of a process (and its children are not included) to find its peak, as a fallback."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0

    def sample(self) -> None:
        try:
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmHWM"), status_kib(self.pid, "VmRSS"))
        except OSError:
            pass


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned by the renderer's choice)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join(out)


def sleep_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` (returns at once if it already has)."""
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from the first line of /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def busy_cores(before: tuple[int, int], after: tuple[int, int], seconds: float) -> float:
    """How many cores were busy on average between two ``cpu_ticks()`` readings ``seconds`` apart."""
    return (after[0] - before[0]) / CLOCK_TICKS / seconds if seconds > 0 else float("nan")


def wait_quiet(max_wait_s: float = 180.0, threshold_cores: float = 0.15, window_s: float = 2.0) -> float:
    """Wait until the whole machine uses under ``threshold_cores`` for ``window_s`` (other people's
    test runs share it); give up after ``max_wait_s``. Returns the busy cores of the last window."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before = cpu_ticks()
        time.sleep(window_s)
        busy = busy_cores(before, cpu_ticks(), window_s)
        if busy < threshold_cores or time.monotonic() >= deadline:
            return busy


def code_version(root: Path | None = None) -> str:
    """The commit the daemon's code is at, with ``+dirty`` when tracemirrord/ has local changes."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "tracemirrord"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")
