"""PartBudget: the bytes of parts in flight across sessions stay within the budget, taken in order."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskStatus

from tracemirrord.writer import PartBudget


@pytest.mark.anyio
async def test_holders_wait_for_room_in_order_and_an_oversize_one_runs_alone() -> None:
    budget = PartBudget()
    log: list[str] = []
    release = {name: anyio.Event() for name in ("a", "b", "c", "d", "e")}

    async def hold(name: str, size: int, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        async with budget.hold(size, 8):
            log.append(f"{name} in ({budget.used})")
            await release[name].wait()
        log.append(f"{name} out")

    async with anyio.create_task_group() as tg:
        await tg.start(hold, "a", 4)
        await tg.start(hold, "b", 4)
        await tg.start(hold, "c", 20)  # larger than the whole budget: waits for it to empty
        await tg.start(hold, "d", 1)  # fits, but waits its turn behind c
        await anyio.wait_all_tasks_blocked()
        assert log == ["a in (4)", "b in (8)"]
        release["a"].set()
        await anyio.wait_all_tasks_blocked()
        assert log == ["a in (4)", "b in (8)", "a out"]
        release["b"].set()
        await anyio.wait_all_tasks_blocked()
        assert log[3:] == ["b out", "c in (20)"]
        await tg.start(hold, "e", 2)
        release["c"].set()
        await anyio.wait_all_tasks_blocked()
        assert log[5:] == ["c out", "d in (3)", "e in (3)"]  # both granted at once
        release["d"].set()
        release["e"].set()
    assert budget.used == 0


@pytest.mark.anyio
async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    budget = PartBudget()
    entered: list[str] = []
    done = anyio.Event()

    async def holder(*, task_status: TaskStatus[None]) -> None:
        async with budget.hold(8, 8):
            task_status.started()
            await done.wait()

    async def waiter(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            async with budget.hold(8, 8):
                entered.append(name)

    first, second = anyio.CancelScope(), anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        await tg.start(holder)
        tg.start_soon(waiter, "first", first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(waiter, "second", second)
        await anyio.wait_all_tasks_blocked()
        first.cancel()
        await anyio.wait_all_tasks_blocked()
        assert entered == []
        done.set()
    assert entered == ["second"]
    assert budget.used == 0
