"""Which tar an engine does next: its plan's list (one engine), or the box's shared queue.

A box's engines take tars from one queue in the parent's plan order, each tar once, the next free
engine first: a resumed shard whose remaining tars were all one engine's under a fixed split (every
even tar done, say) still keeps every engine busy, and an engine held up by a slow tar does not leave its later tars
waiting while the others idle. Tar ``k`` is still rows ``[kS, (k+1)S)`` whoever writes it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol


class TarFeed(Protocol):
    """The tar indices for one engine to do, in order."""

    def take(self) -> int | None:
        """The next tar index, or None when there is none left."""
        ...


class ListFeed:
    """The tars of the engine's own plan, in order (a run with one engine)."""

    def __init__(self, order: Sequence[int]) -> None:
        self._it: Iterator[int] = iter(order)

    def take(self) -> int | None:
        return next(self._it, None)


class SharedFeed:
    """One queue for every engine of a box: ``order`` (the parent's plan) and a shared cursor into it.

    ``cursor`` is a ``multiprocessing.Value`` made by the parent (a shared-memory integer with its lock);
    taking a tar is one locked increment, so no two engines ever get the same tar.
    """

    def __init__(self, order: Sequence[int], cursor: Any) -> None:
        self.order = tuple(order)
        self.cursor = cursor

    def take(self) -> int | None:
        with self.cursor.get_lock():
            at = int(self.cursor.value)
            if at >= len(self.order):
                return None
            self.cursor.value = at + 1
        return self.order[at]
