"""Model-based test of one session's mirror against the embedded bucket (in-process, real files).

Random sequences of appends (whole and partial lines), rewrites (truncate, replace), syncs, restarts
with and without the local state, and part-size changes; after every sync the bucket must reassemble
to exactly what the model predicts: each generation's complete lines, nothing missing, nothing twice.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracemirrord.checkpoint import Checkpointer
from tracemirrord.harnesses import REGISTRY
from tracemirrord.harnesses.base import SessionRef
from tracemirrord.mirror import MirrorContext, SessionMirror
from tracemirrord.model import SessionKey
from tracemirrord.reassemble import reassemble
from tracemirrord.redact import Redactor
from tracemirrord.store.local import LocalStore

KEY = SessionKey("claude-code", "model-session")

line = st.binary(min_size=0, max_size=300).map(lambda b: b.replace(b"\n", b" ") + b"\n")
ops = st.one_of(
    st.tuples(st.just("append"), st.lists(line, min_size=1, max_size=8)),
    st.tuples(st.just("partial"), line),
    st.tuples(st.just("truncate"), st.lists(line, max_size=3)),
    st.tuples(st.just("replace"), st.lists(line, max_size=3)),
    st.tuples(st.just("sync"), st.none()),
    st.tuples(st.just("crash_after_put"), st.none()),
    st.tuples(st.just("restart"), st.none()),
    st.tuples(st.just("lose_state"), st.none()),
    st.tuples(st.just("part_size"), st.sampled_from([1024, 4096, 1 << 20])),
)


def complete(data: bytes) -> bytes:
    return data[: data.rfind(b"\n") + 1]


class World:
    """The real pieces (file, store, checkpoint, mirror) and the model of what the bucket must hold."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "src" / "model-session.jsonl"
        self.path.parent.mkdir(parents=True)
        self.path.write_bytes(b"")
        self.store = LocalStore(root / "bucket")
        self.db = root / "state" / "checkpoint.sqlite3"
        self.part_max = 4096
        self.file = b""
        self.rewritten = False
        self.expected: list[bytes] = [b""]
        self.rewrites = 0
        self.checkpoint: Checkpointer | None = None
        self.mirror: SessionMirror | None = None

    async def open(self) -> None:
        self.checkpoint = Checkpointer(self.db, bucket="b", project="p")
        await self.checkpoint.open()
        ctx = MirrorContext(
            store=self.store,
            checkpoint=self.checkpoint,
            redactor=Redactor(enabled=False),
            project="p",
            agent_id="me",
            instance="i",
            host="h",
            flush_interval_s=1.0,
            part_max_bytes=self.part_max,
            meta_interval_s=30.0,
            max_line_bytes=1 << 20,
            limiter=anyio.CapacityLimiter(1),
        )
        harness = REGISTRY["claude-code"]()
        source = harness.open_source(SessionRef(KEY.session_id, self.path), max_line_bytes=1 << 20)
        self.mirror = SessionMirror(KEY, source, ctx)

    async def close(self) -> None:
        if self.checkpoint is not None:
            await self.checkpoint.close()

    def write(self, data: bytes, mode: str) -> None:
        if mode == "replace":
            tmp = self.path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        else:
            with self.path.open("ab" if mode == "append" else "r+b") as f:
                if mode == "truncate":
                    f.truncate(0)
                f.write(data)

    async def apply(self, op: str, arg: object) -> None:
        if op in ("append", "partial"):
            data = b"".join(arg) if isinstance(arg, list) else arg[: max(1, len(arg) // 2)]  # type: ignore[index]
            self.write(data, "append")
            self.file += data
        elif op in ("truncate", "replace"):
            self.rewrites += 1
            data = f'{{"rewrite":{self.rewrites}}}\n'.encode() + b"".join(arg)  # type: ignore[arg-type]
            self.write(data, op)
            self.file = data
            self.rewritten = True
        elif op == "sync":
            await self.sync()
        elif op == "crash_after_put":
            await self.sync(crash=True)
            await self.close()
            await self.open()
        elif op == "restart":
            await self.close()
            await self.open()
        elif op == "lose_state":
            await self.close()
            shutil.rmtree(self.db.parent, ignore_errors=True)
            await self.open()
        elif op == "part_size":
            self.part_max = int(arg)  # type: ignore[call-overload]
            await self.close()
            await self.open()

    async def sync(self, crash: bool = False) -> None:
        """Mirror everything; with ``crash``, die after the PUTs: no meta.json, no checkpoint."""
        assert self.mirror is not None and self.checkpoint is not None
        if crash:
            save = self.checkpoint.save

            async def lost(state: object) -> bool:
                return True

            self.checkpoint.save = lost  # type: ignore[method-assign]
            try:
                while await self.mirror.step(flush_all=True) == 0.0:
                    pass
            finally:
                self.checkpoint.save = save  # type: ignore[method-assign]
        else:
            await self.mirror.sync_once()
        if self.rewritten and self.expected[-1]:
            self.expected.append(b"")
        self.rewritten = False
        self.expected[-1] = complete(self.file)
        got = await reassemble(self.store, "p", KEY)
        non_empty = [got.generations[g] for g in sorted(got.generations) if got.generations[g]]
        assert non_empty == [e for e in self.expected if e]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=1, max_size=25))
def test_bucket_always_reassembles_to_the_model(steps: list[tuple[str, object]]) -> None:
    """Whatever happens to the file and the daemon, every sync leaves an exact, disjoint copy."""

    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            world = World(Path(tmp))
            await world.open()
            try:
                for op, arg in [*steps, ("sync", None)]:
                    await world.apply(op, arg)
            finally:
                await world.close()
                await world.store.close()

    anyio.run(run)
