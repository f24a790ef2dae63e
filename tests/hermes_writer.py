"""A hermes ``state.db`` written the way hermes-agent writes it, and a writer process for the tests.

The schema is a subset of hermes' own (``hermes_state_common.SCHEMA_SQL``, v30), written here from
its column list: WAL mode, ``sessions`` and ``messages`` with AUTOINCREMENT ids, multimodal
content stored as ``"\\x00json:" + json``, a BLOB column (``display_identity``).

Every insert returns the JSON object the bucket copy must hold for that row, built here from the
values inserted (never by tracemirrord's code): all columns by name, ``\\x00json:`` content as
the JSON value, the BLOB as ``{"$base64": ...}``.

As a process (``python tests/hermes_writer.py --spec '<json>'``) it inserts rows into several
sessions at a given rate and appends each row's expected object, with its session id, to a log
file after the commit (so the log is the writer's own record of what it inserted). With
``hold_lock_s`` it instead holds the database locked (exclusive locking mode) for that long.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

JSON_PREFIX = "\x00json:"
WORDS = ("read", "the", "file", "fix", "test", "bug", "run", "pytest", "ok", "deploy", "lint")

SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    model TEXT,
    parent_session_id TEXT,
    started_at REAL NOT NULL,
    ended_at REAL,
    end_reason TEXT,
    message_count INTEGER DEFAULT 0,
    cwd TEXT,
    git_branch TEXT,
    title TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    role TEXT NOT NULL,
    content TEXT,
    tool_call_id TEXT,
    tool_calls TEXT,
    tool_name TEXT,
    timestamp REAL NOT NULL,
    token_count INTEGER,
    finish_reason TEXT,
    active INTEGER NOT NULL DEFAULT 1,
    compacted INTEGER NOT NULL DEFAULT 0,
    display_identity BLOB
);
CREATE INDEX IF NOT EXISTS idx_messages_session_id ON messages(session_id, id);
"""
MESSAGE_COLUMNS = (
    "id",
    "session_id",
    "role",
    "content",
    "tool_call_id",
    "tool_calls",
    "tool_name",
    "timestamp",
    "token_count",
    "finish_reason",
    "active",
    "compacted",
    "display_identity",
)


def connect(path: Path) -> sqlite3.Connection:
    """A writer connection as hermes opens one: WAL, a busy timeout, autocommit statements."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def create_db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO schema_version VALUES (30)")
    conn.close()


def add_session(
    conn: sqlite3.Connection,
    session_id: str,
    *,
    started_at: float = 1_790_000_000.0,
    title: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO sessions (id, source, model, started_at, cwd, git_branch, title)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (session_id, "cli", "hermes-4-405b", started_at, "/home/dev/proj", "main", title),
    )


def message(session_id: str, i: int, rng: random.Random) -> dict[str, Any]:
    """The values of message ``i`` of a session (every fifth one multimodal, some tool calls)."""
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
    role = ("user", "assistant", "tool")[i % 3]
    content: Any = text
    if i % 5 == 4:
        content = [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": "file:///tmp/a.png"}},
        ]
    tool_calls = (
        json.dumps([{"id": f"call_{i}", "function": {"name": "read_file"}}]) if role == "assistant" else None
    )
    return {
        "session_id": session_id,
        "role": role,
        "content": content,
        "tool_call_id": f"call_{i - 1}" if role == "tool" else None,
        "tool_calls": tool_calls,
        "tool_name": "read_file" if role == "tool" else None,
        "timestamp": round(time.time(), 6),
        "token_count": rng.randint(1, 900),
        "finish_reason": "stop" if role == "assistant" else None,
        "display_identity": rng.randbytes(8) if i % 7 == 0 else None,
    }


def insert(conn: sqlite3.Connection, values: dict[str, Any]) -> dict[str, Any]:
    """Insert one message; return the JSON object its mirrored line must equal."""
    content = values["content"]
    stored = content if isinstance(content, str) else JSON_PREFIX + json.dumps(content)
    cur = conn.execute(
        "INSERT INTO messages (session_id, role, content, tool_call_id, tool_calls, tool_name, timestamp,"
        " token_count, finish_reason, display_identity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            values["session_id"],
            values["role"],
            stored,
            values["tool_call_id"],
            values["tool_calls"],
            values["tool_name"],
            values["timestamp"],
            values["token_count"],
            values["finish_reason"],
            values["display_identity"],
        ),
    )
    blob = values["display_identity"]
    expected = dict(values, id=cur.lastrowid, active=1, compacted=0)
    expected["display_identity"] = None if blob is None else {"$base64": base64.b64encode(blob).decode()}
    return {name: expected[name] for name in MESSAGE_COLUMNS}


def delete_session(conn: sqlite3.Connection, session_id: str) -> None:
    """What hermes' delete_session does: the session's messages and its row, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
    conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
    conn.execute("COMMIT")


def run(spec: dict[str, Any]) -> None:
    """Insert ``rows`` rows round-robin over ``sessions`` at ``rate`` rows/s; log each after its commit."""
    path = Path(spec["db"])
    conn = connect(path)
    rng = random.Random(spec.get("seed", 1))
    if spec.get("hold_lock_s"):
        # exclusive locking mode: after this commit the lock stays held until the connection closes
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        sid = spec["sessions"][0]
        count = conn.execute("SELECT COUNT(*) FROM messages WHERE session_id = ?", (sid,)).fetchone()[0]
        done = [insert(conn, message(sid, count + i, rng)) for i in range(spec["rows"])]
        conn.execute("COMMIT")
        with open(spec["log"], "a") as log:
            log.writelines(json.dumps({"row": row, "at": time.monotonic()}) + "\n" for row in done)
            log.write("locked\n")
        time.sleep(spec["hold_lock_s"])
        conn.close()
        return
    sessions: list[str] = spec["sessions"]
    known = {row[0] for row in conn.execute("SELECT id FROM sessions")}
    for sid in sessions:
        if sid not in known:
            add_session(conn, sid)
    counts = {
        sid: conn.execute("SELECT COUNT(*) FROM messages WHERE session_id = ?", (sid,)).fetchone()[0]
        for sid in sessions
    }
    interval = 1.0 / spec["rate"]
    batch = max(1, int(spec.get("batch", 1)))
    start = time.monotonic()
    with open(spec["log"], "a", buffering=1) as log:
        for n in range(0, spec["rows"], batch):
            delay = start + n * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            conn.execute("BEGIN IMMEDIATE")
            done = []
            for k in range(n, min(n + batch, spec["rows"])):
                sid = sessions[k % len(sessions)]
                done.append(insert(conn, message(sid, counts[sid], rng)))
                counts[sid] += 1
            conn.execute("COMMIT")
            inserted_at = time.monotonic()
            for row in done:
                log.write(json.dumps({"row": row, "at": inserted_at}) + "\n")
            if spec.get("fsync_log"):
                os.fsync(log.fileno())
    conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--spec", required=True, help="JSON: db, sessions, rows, rate, log, seed, batch, hold_lock_s"
    )
    run(json.loads(parser.parse_args().spec))
