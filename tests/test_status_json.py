"""The status document as the control socket sends it: encoded in pieces (sessions a few hundred at
a time, for the daemon's peak memory), and still exactly one JSON document, fields in order."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_metrics_render import make_status, session


@pytest.mark.parametrize("count", [0, 1, 499, 500, 501, 1234])
def test_pieces_make_the_whole_document(count: int) -> None:
    status = make_status()
    status = dataclasses.replace(
        status,
        sessions=[session("codex", f"s{i:05d}", "idle", parked=True) for i in range(count)],
        problems=['a "quoted" problem, with \\ and \u00e9'],
    )
    pieces = status.json_chunks()
    assert all(isinstance(p, bytes) and p for p in pieces)
    doc = json.loads(b"".join(pieces))
    assert [s["session_id"] for s in doc["sessions"]] == [f"s{i:05d}" for i in range(count)]
    assert doc["sessions"][:1] == (
        [
            {
                "harness": "codex",
                "session_id": "s00000",
                "source_path": "/home/u/codex/s00000.jsonl",
                "state": "idle",
                "cursor": 1000,
                "behind_bytes": 0,
                "parts": 3,
                "last_flush_at": "2025-01-02T03:09:00Z",
                "lag_s": 0.0,
                "redactions": {},
                "cursor_unit": "bytes",
                "generation": 0,
                "cwd": "/home/u/proj",
                "parked": True,
                "error": None,
                "modified_at": None,
                "bytes_uploaded": 0,
            }
        ]
        if count
        else []
    )
    assert doc["problems"] == ['a "quoted" problem, with \\ and \u00e9']
    assert doc["pid"] == 4242 and doc["version"] == "0.1.0"
    # the same fields in the same order as the document built whole
    assert list(doc) == [f.name for f in dataclasses.fields(status)]
    assert doc == json.loads(json.dumps(status.to_json()))
