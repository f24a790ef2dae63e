"""A separate writer process that streams replies into an opencode database as opencode does.

Usage: python tests/opencode_writer.py SPEC_JSON
SPEC: {"db": path, "sessions": [session ids], "messages": per session, "updates": per part,
       "rate": writes/s (0: as fast as it can), "log": path}
For each message it inserts the message row, then a text part that it UPDATES IN PLACE ``updates``
times (the text grows, as a streaming reply does), then updates the message once more (completed),
interleaving the sessions. ``time_updated`` is the wall clock in ms, never going back, so two
writes may share a millisecond. Every row version written is logged, one JSON line each, with its
sequence number: the test's expected side is built from this log alone.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixture_opencode import connect, put_message, put_part


def main() -> None:
    spec = json.loads(sys.argv[1])
    db = connect(Path(spec["db"]))
    log = open(spec["log"], "a", buffering=1)  # one line per write, flushed
    interval = 1.0 / spec["rate"] if spec["rate"] else 0.0
    seq = 0
    last_t = 0

    def write(kind: str, row_id: str, sid: str, mid: str | None, data: dict) -> None:
        nonlocal seq, last_t
        last_t = max(last_t, int(time.time() * 1000))
        for attempt in range(50):
            try:
                if kind == "message":
                    put_message(db, row_id, sid, last_t, data)
                else:
                    put_part(db, row_id, mid or "", sid, last_t, data)
                break
            except sqlite3.OperationalError:
                time.sleep(0.01 * (attempt + 1))
        entry = {"seq": seq, "type": kind, "id": row_id, "session_id": sid, "t": last_t, "data": data}
        log.write(json.dumps(entry) + "\n")
        seq += 1
        if interval:
            time.sleep(interval)

    try:
        for m in range(spec["messages"]):
            for s, sid in enumerate(spec["sessions"]):
                mid = f"msg_{s:02d}{m:04d}"
                pid = f"prt_{s:02d}{m:04d}"
                info = {"role": "assistant", "modelID": "claude-sonnet-4", "time": {"created": last_t}}
                write("message", mid, sid, None, info)
                text = ""
                for u in range(spec["updates"]):
                    text += f"word{u} "
                    write("part", pid, sid, mid, {"type": "text", "text": text})
                write("message", mid, sid, None, {**info, "time": {**info["time"], "completed": last_t}})
    finally:
        log.close()
        db.close()


if __name__ == "__main__":
    main()
