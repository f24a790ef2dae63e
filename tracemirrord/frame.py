"""Framing: which bytes of a read are complete lines, and what stands in for a line too long to hold.

Pure functions, no I/O. A partial last line is never framed: it waits for its newline. A line
longer than ``max_line_bytes`` cannot be redacted within bounded memory, so it is replaced by a
placeholder line that records its size and hash (and is counted): a secret is never uploaded
unredacted, and a reader can see exactly what is missing.
"""

from __future__ import annotations

import json

OVERSIZE_RULE = "oversize-line"


def complete_len(buf: bytes) -> int:
    """Length of the longest prefix of ``buf`` made of complete lines (0 if there is none)."""
    return buf.rfind(b"\n") + 1


def oversize_placeholder(line_bytes: int, sha256_hex: str) -> bytes:
    """The JSON line uploaded instead of a line longer than the limit."""
    doc = {
        "tracemirror": "line_dropped",
        "reason": "line_too_long",
        "bytes": line_bytes,
        "sha256": sha256_hex,
    }
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"
