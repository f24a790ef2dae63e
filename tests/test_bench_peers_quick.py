"""benchmarks/bench_peers.py --quick still runs: one result row per tool, peers that are missing skipped.

No timing is asserted: the figures of a few seconds on a shared CI machine mean nothing. tracecraft
(pip ``tracecraft-ai``) and rclone are not test dependencies; where they are missing the script reports
them as "not installed" and this test only checks that it says so.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("tracemirrord", "tracecraft", "rclone")


def test_bench_peers_quick(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_peers.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows: dict[str, list[list[str]]] = {}
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in TOOLS:
            rows.setdefault(cells[0], []).append(cells)
    assert set(rows) == set(TOOLS), run.stdout
    assert rows["tracemirrord"][0][1] != "not installed"
    for name, (figures, copies) in rows.items():
        if figures[1] == "not installed":
            assert copies[1] == "not installed", (name, copies)
            continue
        # lag p50, p99 and bytes up per source byte are numbers; both copy checks have a verdict
        assert all(re.fullmatch(r"\d+\.\d+", c) for c in figures[1:4]), (name, figures)
        assert copies[1] and copies[2] and "-" not in (copies[1], copies[2]), (name, copies)
    assert list(tmp_path.glob("peers-*.json")), "the JSON results were not saved"
