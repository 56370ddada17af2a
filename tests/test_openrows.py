"""OpenRows in process: every "is this row live" fact of the engine (read order and age, politeness key,
running request) and the ways a row stops being live (final, given up, forgotten, its tar suspended)."""

from __future__ import annotations

import asyncio

import pytest

from fetcher.openrows import OpenRows
from fetcher.records import InputRow


class Clock:
    """An injected clock, so ages are exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def row(tar: int, i: int) -> InputRow:
    return InputRow(tar_index=tar, row_in_tar=i, key=f"{tar:05d}{i:04d}", url=f"http://h/{tar}/{i}", caption=None)


async def hang() -> None:
    await asyncio.Event().wait()  # a request that only ends when cancelled


def test_read_order_ages_and_tar_facts() -> None:
    clock = Clock()
    rows = OpenRows(clock)
    assert len(rows) == 0 and rows.oldest_age() == 0.0
    for i, host in enumerate(["a", "b", "a"]):
        rows.add(row(0, i))
        rows.admitted(row(0, i).key, host)
        clock.now += 10
    rows.add(row(1, 0))  # read, not admitted yet: no politeness key
    assert len(rows) == 4 and row(0, 1).key in rows and row(2, 0).key not in rows
    assert rows.oldest_age() == 30.0  # the first row read, 30 s ago
    assert rows.keys_of_tar(0) == {row(0, i).key for i in range(3)}
    assert rows.keys_of_tar(0, "a") == {row(0, 0).key, row(0, 2).key}
    assert rows.hosts_of_tar(0) == {"a", "b"} and rows.hosts_of_tar(1) == {""} and rows.hosts_of_tar(7) == set()
    assert rows.finish(row(0, 0).key)
    assert rows.oldest_age() == 20.0  # now the second row is the oldest
    rows.forget_tar(0)
    assert len(rows) == 1 and rows.keys_of_tar(0) == set() and rows.oldest_age() == 0.0  # clock still at +30


async def test_a_row_ends_exactly_once() -> None:
    rows = OpenRows()
    rows.add(row(0, 0))
    task = asyncio.create_task(hang())
    rows.started(row(0, 0).key, task)
    assert rows.running == 1
    assert rows.finish(row(0, 0).key)  # its own task finishes it: nothing to cancel
    assert not rows.finish(row(0, 0).key)  # a second result (a late duplicate) must be dropped
    assert rows.running == 0 and len(rows) == 0
    await asyncio.sleep(0)
    assert not task.cancelled() and not task.done()
    task.cancel()
    rows.forget([row(0, 0).key])  # forgetting a row that is no longer open is harmless
    assert not rows.finish(row(9, 9).key)  # never read: not open


async def test_forget_cancels_requests_and_cancel_keeps_the_row() -> None:
    rows = OpenRows()
    tasks = []
    for i in range(4):
        rows.add(row(0, i))
        tasks.append(asyncio.create_task(hang()))
        rows.started(row(0, i).key, tasks[-1])
    rows.add(row(0, 4))  # queued: open, no request
    assert rows.running == 4 and len(rows) == 5
    assert rows.cancel(row(0, 0).key) == row(0, 0)  # a give-up: request cancelled, row still open
    assert rows.running == 3 and row(0, 0).key in rows
    rows.forget([row(0, 1).key, row(0, 4).key])  # a stop leaves them for the next run
    assert rows.running == 2 and len(rows) == 3
    rows.forget_running()  # the stop's grace time is over
    assert rows.running == 0 and len(rows) == 1  # only the given-up row, waiting for its final result
    await asyncio.gather(*tasks, return_exceptions=True)
    assert all(t.cancelled() for t in tasks)
    with pytest.raises(KeyError):
        rows.cancel(row(0, 1).key)  # forgotten rows are not open


async def test_requeued_clears_only_its_own_request() -> None:
    rows = OpenRows()
    rows.add(row(0, 0))

    async def request(requeue: bool) -> None:
        if requeue:
            rows.requeued(row(0, 0).key)  # the scheduler re-queued the row for a retry

    other = asyncio.create_task(hang())
    rows.started(row(0, 0).key, other)
    await asyncio.create_task(request(True))  # not the row's request: must not clear it
    assert rows.running == 1
    other.cancel()
    await asyncio.gather(other, return_exceptions=True)
    retry = asyncio.create_task(request(True))
    rows.started(row(0, 0).key, retry)
    await retry
    assert rows.running == 0 and row(0, 0).key in rows  # still open, waiting for its next attempt
    rows.forget([row(0, 0).key])
    assert len(rows) == 0
