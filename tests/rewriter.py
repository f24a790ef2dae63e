"""A separate writer process that rewrites one JSONL file again and again, as an agent or editor might.

Usage: python tests/rewriter.py PATH SECONDS [tight]

Version ``v`` (1, 2, ...) is ``full_version(v)``: numbered JSON lines that all hold ``"v": v``,
built from ``v`` alone so the test rebuilds it independently. Paced (default): small versions,
half written in place (truncate to 0, then the lines in pieces, half lines included, with pauses),
half as a new file renamed over the path, each then appended to for a moment. ``tight``: small
versions that all start with the same 1.5 KB header line (``"v": 0``: the fingerprint's head
cannot tell them apart), written in place in one write, in a loop without pauses, so that the
microseconds between a reader's check and its read are hit. Prints the last version written.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

WORDS = ["read", "fix", "test", "run", "ok", "bug"]
HEADER = json.dumps({"v": 0, "type": "session", "pad": "h" * 1500}).encode() + b"\n"


def _line(v: int, i: int, rng: random.Random) -> bytes:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
    return json.dumps({"v": v, "i": i, "text": words}).encode() + b"\n"


def version_parts(v: int, tight: bool) -> tuple[bytes, list[bytes]]:
    """(the body written at once, the lines appended after it) of version ``v``."""
    rng = random.Random(v * 2 + tight)
    count = rng.randint(2, 12) if tight else rng.randint(5, 60)
    body = (HEADER if tight else b"") + b"".join(_line(v, i, rng) for i in range(count))
    extra = [] if tight else [_line(v, 100000 + i, rng) for i in range(rng.randint(0, 5))]
    return body, extra


def full_version(v: int, tight: bool) -> bytes:
    body, extra = version_parts(v, tight)
    return body + b"".join(extra)


def _write_in_pieces(fd: int, data: bytes, rng: random.Random, pause: float) -> None:
    at = 0
    while at < len(data):
        step = rng.randint(1, max(1, len(data) // 3))
        os.write(fd, data[at : at + step])
        at += step
        if pause:
            time.sleep(rng.uniform(0, pause))


def _tight(path: Path, seconds: float) -> int:
    """Rewrite in place in a loop, through one descriptor: truncate, one write of a whole version,
    up to 1 ms of quiet (a reader that took a rewrite for an append goes on reading the new one)."""
    bodies = {v: full_version(v, True) for v in range(1, 201)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    deadline = time.monotonic() + seconds
    n = 0
    try:
        while time.monotonic() < deadline:
            n += 1
            os.ftruncate(fd, 0)
            os.pwrite(fd, bodies[n % 200 + 1], 0)
            time.sleep(random.uniform(0, 0.001))  # then still for a moment: a reader continues in it
    finally:
        os.close(fd)
    return n % 200 + 1


def main() -> None:
    path, seconds = Path(sys.argv[1]), float(sys.argv[2])
    if sys.argv[3:] == ["tight"]:
        print(_tight(path, seconds))
        return
    rng = random.Random(1)
    deadline = time.monotonic() + seconds
    v = 0
    while time.monotonic() < deadline:
        v += 1
        body, extra = version_parts(v, False)
        if v % 2:  # in place: truncate, then write again
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            os.ftruncate(fd, 0)
            _write_in_pieces(fd, body, rng, 0.004)
        else:  # a new file renamed over the old one
            tmp = path.with_name(path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, body)
            os.replace(tmp, path)
        for line in extra:  # then appended to for a moment
            os.write(fd, line)
            time.sleep(rng.uniform(0, 0.01))
        os.close(fd)
        time.sleep(rng.uniform(0, 0.03))
    print(v)


if __name__ == "__main__":
    main()
