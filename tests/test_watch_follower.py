"""A notified follower holding a batch is not woken by notifications, and loses none.

In-process: one ``SessionMirror`` on a real session file, the embedded bucket, the real checkpoint
and a real ``TreeWatcher`` whose notifications reach the follower as the harness task passes them
(``SessionMirror.notify``). The appends come from another process (tests/appender.py). The flush
interval is long, and nothing polls the file (a notified follower waits minutes for a wake-up), so
what lands in the bucket was read because of a notification or a flush request, nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tracemirrord.checkpoint import Checkpointer
from tracemirrord.harnesses import REGISTRY
from tracemirrord.harnesses.base import SessionRef
from tracemirrord.mirror import MirrorContext, SessionMirror
from tracemirrord.model import SessionKey
from tracemirrord.reassemble import reassemble
from tracemirrord.redact import Redactor
from tracemirrord.store.local import LocalStore
from tracemirrord.watch import TreeWatcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux only")

APPENDER = Path(__file__).parent / "appender.py"
KEY = SessionKey("claude-code", "batch-session")
GUARD_S = 30.0  # a hang guard, not a timing expectation: without the fix the wait is minutes


def append(path: Path, lines: int, first: int) -> None:
    """``lines`` whole lines appended by another process (which has exited on return)."""
    spec = {
        "files": [["claude-code", KEY.session_id, str(path), first]],
        "lines": lines,
        "rate": 0,
        "seed": 7,
    }
    subprocess.run([sys.executable, str(APPENDER), json.dumps(spec)], check=True, timeout=60)


class PutHook:
    """The embedded store; ``before_part`` runs before each part's put reaches it."""

    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner
        self.before_part = None
        self.parts = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def put(self, key: str, *args: object, **kwargs: object) -> object:
        if "/part-" in key:
            self.parts += 1
            if self.before_part is not None:
                hook, self.before_part = self.before_part, None
                await hook()
        return await self.inner.put(key, *args, **kwargs)


class Rig:
    def __init__(self, root: Path, flush_interval_s: float) -> None:
        self.path = root / "projects" / "-p" / f"{KEY.session_id}.jsonl"
        self.path.parent.mkdir(parents=True)
        append(self.path, 3, 0)
        self.store = PutHook(LocalStore(root / "bucket"))
        self.checkpoint = Checkpointer(root / "state" / "checkpoint.sqlite3", bucket="b", project="p")
        self.flush_interval_s = flush_interval_s
        self.watcher = TreeWatcher([self.path.parent], 1)
        self.watcher.refresh()
        self.mirror: SessionMirror | None = None
        self.steps = 0

    async def open(self) -> SessionMirror:
        await self.checkpoint.open()
        ctx = MirrorContext(
            store=self.store,  # type: ignore[arg-type]
            checkpoint=self.checkpoint,
            redactor=Redactor(enabled=False),
            project="p",
            agent_id="me",
            instance="i",
            host="h",
            flush_interval_s=self.flush_interval_s,
            part_max_bytes=1 << 20,
            meta_interval_s=30.0,
            max_line_bytes=1 << 20,
            limiter=anyio.CapacityLimiter(1),
        )
        source = REGISTRY["claude-code"]().open_source(
            SessionRef(KEY.session_id, self.path), max_line_bytes=1 << 20
        )
        mirror = SessionMirror(KEY, source, ctx)
        mirror.watched = True
        step = mirror.step

        async def counted(**kwargs: bool) -> float | None:
            self.steps += 1
            return await step(**kwargs)

        mirror.step = counted  # type: ignore[method-assign]
        self.mirror = mirror
        return mirror

    async def notifications(self) -> None:
        """What the harness task does with the watcher's reports (``HarnessTask._apply``)."""
        assert self.mirror is not None
        while True:
            changes = await self.watcher.changes()
            if str(self.path) in changes.written:
                self.mirror.notify()

    async def copy(self) -> bytes:
        got = await reassemble(self.store.inner, "p", KEY)
        return b"".join(got.generations[g] for g in sorted(got.generations))

    async def close(self) -> None:
        self.watcher.close()
        await self.checkpoint.close()


async def until(check: object, what: str) -> None:
    """Poll ``check`` (the bucket and the follower signal nothing) until it holds."""
    try:
        with anyio.fail_after(GUARD_S):
            while not await check():  # type: ignore[operator]  # noqa: ASYNC110
                await anyio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"never came: {what}") from None


def test_notifications_do_not_wake_a_follower_holding_a_batch(tmp_path: Path) -> None:
    """Written while the follower holds a batch: it is told (``_notified``) but not woken (one step
    so far); the read before the put (here asked by a flush request) takes those lines too, so the
    first part holds the 3 lines it started with and the 5 appended."""

    async def main() -> None:
        rig = Rig(tmp_path, flush_interval_s=3600.0)
        mirror = await rig.open()
        stopping = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(rig.notifications)
                tg.start_soon(mirror.run, stopping)

                async def holding() -> bool:
                    return bool(mirror._batch)

                await until(holding, "the first read")
                assert rig.steps == 1
                append(rig.path, 5, 3)

                async def told() -> bool:
                    return mirror._notified

                await until(told, "the notification")
                assert not mirror.nudged  # told, not woken
                assert rig.steps == 1
                assert rig.store.parts == 0
                await mirror.request_flush().wait()
                assert rig.store.parts == 1
                assert await rig.copy() == rig.path.read_bytes()
                assert rig.path.read_bytes().count(b"\n") == 8
                stopping.set()
                mirror.nudge()
                tg.cancel_scope.cancel()
        finally:
            await rig.close()

    anyio.run(main)


def test_a_write_during_the_put_is_read_at_once(tmp_path: Path) -> None:
    """Lines appended while the batch's part is being put (after the read that made it): their
    notification comes while the follower still holds the batch, so it wakes nothing then; once
    the part is in, the follower reads again by itself (no further write, nothing polling), and the
    copy ends equal to the file in two parts."""

    async def main() -> None:
        rig = Rig(tmp_path, flush_interval_s=0.5)
        mirror = await rig.open()
        stopping = anyio.Event()

        async def write_during_put() -> None:
            append(rig.path, 2, 3)

            async def told() -> bool:
                return mirror._notified

            await until(told, "the notification during the put")
            assert not mirror.nudged

        rig.store.before_part = write_during_put
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(rig.notifications)
                tg.start_soon(mirror.run, stopping)

                async def current() -> bool:
                    return rig.store.parts == 2 and await rig.copy() == rig.path.read_bytes()

                await until(current, "the lines written during the put")
                assert rig.path.read_bytes().count(b"\n") == 5
                stopping.set()
                mirror.nudge()
                tg.cancel_scope.cancel()
        finally:
            await rig.close()

    anyio.run(main)
