"""The box's tar queue: every tar of the plan to exactly one engine, in the plan's order."""

from __future__ import annotations

import multiprocessing
from multiprocessing.queues import Queue
from typing import Any

from fetcher.tarfeed import ListFeed, SharedFeed

CTX = multiprocessing.get_context("spawn")


def _drain(order: tuple[int, ...], cursor: Any, out: Queue[list[int]]) -> None:
    feed = SharedFeed(order, cursor)
    got = []
    while (index := feed.take()) is not None:
        got.append(index)
    out.put(got)


def test_shared_feed_gives_each_tar_to_exactly_one_process_in_order() -> None:
    order = tuple(range(3, 3 + 2 * 500, 2))  # a shard's tars: every other index
    cursor = CTX.Value("q", 0)
    out: Queue[list[int]] = CTX.Queue()
    procs = [CTX.Process(target=_drain, args=(order, cursor, out)) for _ in range(4)]
    for p in procs:
        p.start()
    parts = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    taken = [i for part in parts for i in part]
    assert sorted(taken) == list(order), "a tar was lost or given twice"
    for part in parts:
        assert part == sorted(part)  # each engine's tars come in the plan's order
    assert cursor.value == len(order)


def test_list_feed_is_the_plan_in_order_then_none() -> None:
    feed = ListFeed([4, 9, 2])
    assert [feed.take(), feed.take(), feed.take(), feed.take()] == [4, 9, 2, None]
