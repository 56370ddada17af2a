"""ByteBudget: reservations before bytes are held, waiting in age order, no deadlock, exact accounting."""

from __future__ import annotations

import asyncio

import pytest

from fetcher.budget import ByteBudget


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_reservations_wait_for_room_in_age_order() -> None:
    async def main() -> list[str]:
        budget = ByteBudget(100)
        order: list[str] = []
        assert await budget.take(60, order=1.0) == 0.0
        holder = asyncio.create_task(budget.take(30, held=10, order=0.5))  # an active reader, growing: fits
        await _settle()
        assert holder.done() and budget.used == 90

        async def reader(name: str, n: int, age: float) -> None:
            await budget.take(n, order=age)
            order.append(name)

        young = asyncio.create_task(reader("young", 50, 3.0))
        old = asyncio.create_task(reader("old", 50, 2.0))
        await _settle()
        assert order == [] and budget.used == 90  # neither fits, and a body is still being imaged
        budget.give(60)
        await _settle()
        assert order == ["old"] and budget.used == 80
        budget.give(50)
        await asyncio.gather(young, old)
        assert order == ["old", "young"] and budget.used == 80
        return order

    asyncio.run(main())


def test_readers_holding_the_whole_cap_do_not_deadlock() -> None:
    """Every reserved byte held by a waiting reader: the oldest goes over the cap, only it."""

    async def main() -> None:
        budget = ByteBudget(100)
        await budget.take(50, order=1.0)  # reader A holds 50
        await budget.take(50, order=2.0)  # reader B holds 50
        b_more = asyncio.create_task(budget.take(10, held=50, order=2.0))
        await _settle()
        assert not b_more.done()  # A is not waiting: its bytes will come back
        a_more = asyncio.create_task(budget.take(10, held=50, order=1.0))
        await asyncio.wait_for(a_more, 1)  # now both wait: the older one is let through
        await _settle()
        assert not b_more.done() and budget.used == 110
        budget.give(60)  # A's body is done with
        await asyncio.wait_for(b_more, 1)
        assert budget.used == 60

    asyncio.run(main())


def test_cancelled_waiter_leaves_exact_accounting() -> None:
    async def main() -> None:
        budget = ByteBudget(100)
        await budget.take(100)
        waiter = asyncio.create_task(budget.take(40, held=0))
        await _settle()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        budget.give(100)
        assert budget.used == 0
        assert await budget.take(100) == 0.0  # nothing stale holds room
        assert budget.used == 100

    asyncio.run(main())
