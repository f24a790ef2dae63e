"""A separate writer process: appends harness-shaped lines to session files, sometimes in halves.

Usage: python tests/appender.py SPEC_JSON
SPEC: {"files": [[harness, session_id, path, first_index], ...], "lines": N, "rate": lines/s,
       "seed": int, "partial": bool}
Each file gets N more lines; with "partial", some lines are written in two writes with a pause
between them, as an agent mid-write would leave them.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sessions import record


def main() -> None:
    spec = json.loads(sys.argv[1])
    rng = random.Random(spec["seed"])
    interval = 1.0 / spec["rate"] if spec["rate"] else 0.0
    files = spec["files"]
    handles = [open(path, "ab", buffering=0) for _, _, path, _ in files]
    try:
        for n in range(spec["lines"]):
            for (harness, sid, _, first), handle in zip(files, handles, strict=True):
                line = record(harness, sid, first + n, rng)
                if spec.get("partial") and rng.random() < 0.3:
                    cut = rng.randint(1, len(line) - 1)
                    handle.write(line[:cut])
                    time.sleep(interval / 2)
                    handle.write(line[cut:])
                else:
                    handle.write(line)
            if interval:
                time.sleep(interval)
    finally:
        for handle in handles:
            handle.close()


if __name__ == "__main__":
    main()
