"""hermes sessions for the harness contract suite: rows in ``$HERMES_HOME/state.db`` (WAL).

Rows are inserted as hermes does (tests/hermes_writer.py). ``expected()`` is what the inserts
recorded, kept in a JSONL file beside the database (``append`` may run in another process);
``remove()`` deletes the session's messages and its ``sessions`` row in one transaction, as
hermes' ``delete_session`` does.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

from hermes_writer import add_session, connect, create_db, delete_session, insert, message


class HermesSession:
    harness = "hermes"

    def __init__(self, db: Path, session_id: str, seed: int) -> None:
        self.db = db
        self.session_id = session_id
        self.seed = seed
        self.record = db.parent.parent / f"hermes-expected-{session_id}.jsonl"  # outside HERMES_HOME

    def expected(self) -> list[Any]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def append(self, n: int) -> None:
        count = len(self.expected())
        rng = random.Random(self.seed * 1_000_003 + count)
        conn = connect(self.db)
        try:
            rows = [insert(conn, message(self.session_id, i, rng)) for i in range(count, count + n)]
        finally:
            conn.close()
        with self.record.open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)

    def remove(self) -> None:
        conn = connect(self.db)
        try:
            delete_session(conn, self.session_id)
        finally:
            conn.close()


class HermesFixture:
    harness = "hermes"

    def env(self, home: Path) -> dict[str, str]:
        return {"HERMES_HOME": str(home / "hermes-home")}

    def create(self, home: Path, rng: random.Random) -> HermesSession:
        db = home / "hermes-home" / "state.db"
        if not db.exists():
            create_db(db)
        # hermes' ids look like 20260501_080000_1a2b3c
        sid = f"20260501_080000_{uuid.UUID(int=rng.getrandbits(128)).hex[:6]}"
        conn = connect(db)
        try:
            add_session(conn, sid, title="fixture session")
        finally:
            conn.close()
        session = HermesSession(db, sid, rng.getrandbits(32))
        session.append(1)
        return session


FIXTURE = HermesFixture()
