"""The byte budget: body bytes held in this process (being read, or waiting for imaging), capped.

Bytes are reserved *before* they are held: a body's Content-Length up front, then each streamed chunk
beyond it, and given back once imaging is done with them (or the body is dropped). So memory holds
at most ``cap`` bytes of bodies, plus at most one body's overdraft (see ``take``), whatever the mix of
body sizes and however many requests are in flight.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(eq=False)  # identity: two waiters are never the same one
class _Waiter:
    order: float  # when the waiting body started: older bodies first, so one of them finishes
    n: int
    held: int
    future: asyncio.Future[None]


class ByteBudget:
    """Bytes downloaded or being downloaded but not yet through imaging; readers wait while over the cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self._stuck = 0  # bytes held by readers that are waiting for more
        self._waiters: list[_Waiter] = []
        self._room = asyncio.Event()
        self._room.set()

    async def take(self, n: int, held: int = 0, order: float | None = None) -> None:
        """Reserve ``n`` more bytes for a body that already holds ``held``.

        Waits while they do not fit under the cap. When every reserved byte belongs to a waiting reader,
        nothing would ever be given back (each waits for the others): the oldest body (smallest ``order``)
        then goes over the cap, and keeps priority until it is complete, so the overdraft is one body.
        """
        if not self._waiters and self.used + n <= self.cap:
            self._add(n)
            return
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.time() if order is None else order, n, held, loop.create_future())
        self._waiters.append(waiter)
        self._stuck += held
        self._grant()
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter in self._waiters:  # never granted
                self._waiters.remove(waiter)
                self._stuck -= held
                self._grant()
            elif not waiter.future.cancelled():
                self.give(n)  # granted, but the reader is gone
            raise

    def give(self, n: int) -> None:
        """Return ``n`` reserved bytes."""
        self.used -= n
        if self.used < self.cap:
            self._room.set()
        self._grant()

    async def wait_room(self) -> None:
        """Wait until some of the cap is free (the dispatcher starts no new fetch before)."""
        await self._room.wait()

    def _add(self, n: int) -> None:
        self.used += n
        if self.used >= self.cap:
            self._room.clear()

    def _grant(self) -> None:
        while self._waiters:
            first = min(self._waiters, key=lambda w: w.order)
            if first.future.done():  # cancelled; its task takes it out of the list
                self._waiters.remove(first)
                self._stuck -= first.held
                continue
            deadlocked = self._stuck >= self.used  # only waiting readers hold bytes: none will come back
            if self.used + first.n > self.cap and not deadlocked:
                return
            self._waiters.remove(first)
            self._stuck -= first.held
            self._add(first.n)
            first.future.set_result(None)
