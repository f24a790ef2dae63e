"""A MirrorContext on real parts (a checkpoint file, the embedded bucket) for tests that drive a
HarnessTask in process; closed after the test, pass or fail."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from tracemirrord.checkpoint import Checkpointer
from tracemirrord.mirror import MirrorContext
from tracemirrord.redact import Redactor
from tracemirrord.store.local import LocalStore


@contextlib.asynccontextmanager
async def local_context(
    tmp_path: Path,
    *,
    redactor: Redactor,
    flush_interval_s: float,
    part_max_bytes: int,
    max_line_bytes: int,
    upload_slots: int,
) -> AsyncIterator[MirrorContext]:
    """Checkpoint under ``tmp_path/state``, bucket at ``tmp_path/bucket``, project "p"."""
    checkpoint = Checkpointer(tmp_path / "state" / "checkpoint.sqlite3", bucket="b", project="p")
    await checkpoint.open()
    store = LocalStore(tmp_path / "bucket")
    try:
        yield MirrorContext(
            store=store,
            checkpoint=checkpoint,
            redactor=redactor,
            project="p",
            agent_id="tester@host",
            instance="i",
            host="h",
            flush_interval_s=flush_interval_s,
            part_max_bytes=part_max_bytes,
            meta_interval_s=30.0,
            max_line_bytes=max_line_bytes,
            limiter=anyio.CapacityLimiter(upload_slots),
        )
    finally:
        await checkpoint.close()
        await store.close()
