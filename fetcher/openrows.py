"""Every "is this row live" fact of one engine, in one place.

A row is open from the moment it is read until it is final (its result reaches its tar), given up (tail
bound, watchdog) or left for the next run (a stop, a suspended tar). While open it has a read time (the
tail gauges show the oldest one's age), a politeness key once admitted (the tail bound asks which hosts a
tar still waits on) and, while its request runs, the task doing it (so a stop or a give-up can cancel it,
and a stop knows when nothing runs any more). Nothing else in the engine keeps a copy of these facts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fetcher.records import InputRow


@dataclass(slots=True)
class OpenRow:
    """One open row and what the engine knows about it."""

    row: InputRow
    read_at: float  # clock time it was read
    host: str = ""  # its politeness key, "" until admitted
    task: asyncio.Task[None] | None = None  # its request, while one runs


class OpenRows:
    """The open rows of one engine, oldest first (read order)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._rows: dict[str, OpenRow] = {}  # key -> row; dicts keep insertion order, so oldest first
        self._running: set[str] = set()  # keys whose request task runs: a stop waits for this to empty

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    @property
    def running(self) -> int:
        """How many open rows have a request running."""
        return len(self._running)

    def add(self, row: InputRow) -> None:
        """A row was read: open from now."""
        self._rows[row.key] = OpenRow(row, self.clock())

    def admitted(self, key: str, host: str) -> None:
        """The row is scheduled under politeness key ``host``."""
        self._rows[key].host = host

    def started(self, key: str, task: asyncio.Task[None]) -> None:
        """``task`` runs the row's request."""
        self._rows[key].task = task
        self._running.add(key)

    def requeued(self, key: str) -> None:
        """The current task, the row's request, ends without a final result (the scheduler re-queued the
        row for a retry): the row stays open with no request running."""
        entry = self._rows.get(key)
        if entry is not None and entry.task is asyncio.current_task():
            entry.task = None
            self._running.discard(key)

    def finish(self, key: str) -> bool:
        """Close a row whose result is final; False when it was not open (given up, or left for the next
        run), so its result must be dropped: every row ends exactly once."""
        if self._rows.pop(key, None) is None:
            return False
        self._running.discard(key)  # its own task is ending: nothing to cancel
        return True

    def cancel(self, key: str) -> InputRow:
        """Cancel the row's request, if one runs; the row stays open (its caller finishes it)."""
        entry = self._rows[key]
        self._stop_task(key, entry)
        return entry.row

    def forget(self, keys: Iterable[str]) -> None:
        """Close rows left unfinished in this run, cancelling their requests: the next run does them."""
        for key in keys:
            entry = self._rows.pop(key, None)
            if entry is not None:
                self._stop_task(key, entry)

    def forget_running(self) -> None:
        """Forget every row whose request still runs (a stop's grace time is over)."""
        self.forget(list(self._running))

    def forget_tar(self, index: int) -> None:
        """Forget the open rows of tar ``index`` (it was suspended: its checkpoint has what is final)."""
        self.forget(self.keys_of_tar(index))

    def keys_of_tar(self, index: int, host: str | None = None) -> set[str]:
        """Keys of tar ``index``'s open rows (only those on ``host`` when given)."""
        return {k for k, e in self._rows.items() if e.row.tar_index == index and (host is None or e.host == host)}

    def hosts_of_tar(self, index: int) -> set[str]:
        """The politeness keys tar ``index`` still waits on."""
        return {e.host for e in self._rows.values() if e.row.tar_index == index}

    def oldest_age(self) -> float:
        """Seconds since the oldest open row was read (0 when none)."""
        first = next(iter(self._rows.values()), None)
        return self.clock() - first.read_at if first is not None else 0.0

    def _stop_task(self, key: str, entry: OpenRow) -> None:
        self._running.discard(key)
        if entry.task is not None:
            entry.task.cancel()
            entry.task = None
