"""ByteBudget: reservations before bytes are held, waiting in age order, no deadlock, exact accounting."""

from __future__ import annotations

import asyncio

import pytest

from fetcher.budget import ByteBudget
from fetcher.farm import Farm
from fetcher.http import HttpClient, HttpOptions

MiB = 2**20


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_reservations_wait_for_room_in_age_order() -> None:
    async def main() -> list[str]:
        budget = ByteBudget(100)
        order: list[str] = []
        await budget.take(60, order=1.0)
        assert budget.used == 60
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
        await asyncio.wait_for(budget.take(100), 1)  # nothing stale holds room
        assert budget.used == 100

    asyncio.run(main())


def test_client_reserves_before_reading_and_waits_outside_its_deadline(farm: Farm) -> None:
    """Through the real client: a body that cannot fit waits (unread) for room, and that wait is not
    charged to the server's total deadline; every byte reserved comes back."""

    async def main() -> None:
        budget = ByteBudget(3 * MiB)
        opts = HttpOptions(allow_network=["127.0.0.2/32"], timeout=2, read_timeout=1, max_body_bytes=16 * MiB)
        async with HttpClient(opts, budget) as client:
            first = await client.fetch(farm.url("/hostile/big/2?budget=first"))
            assert first.ok and budget.used == 2 * MiB  # the returned body stays reserved for imaging
            later = [
                asyncio.create_task(client.fetch(farm.url(f"/hostile/big/{q}"))) for q in ("2?b=1", "4?chunked=1&b=2")
            ]
            await asyncio.sleep(3)  # longer than --timeout: the waiting bodies must not time out
            assert not any(t.done() for t in later)
            assert budget.used <= 3 * MiB
            budget.give(2 * MiB)  # the first body is through imaging
            second = await asyncio.wait_for(later[0], 10)
            assert second.ok and len(second.body or b"") == 2 * MiB, second
            assert not later[1].done()  # the chunked one stops once it cannot grow under the cap
            budget.give(2 * MiB)
            third = await asyncio.wait_for(later[1], 10)
        assert third.ok and len(third.body or b"") == 4 * MiB, third
        assert budget.used == 4 * MiB  # exactly the body handed out: nothing leaked, nothing lost
        budget.give(4 * MiB)
        assert budget.used == 0 and not budget._waiters

    asyncio.run(main())
