"""The box's tar queue: every tar of the plan to exactly one engine, in the plan's order."""

from __future__ import annotations

import multiprocessing
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

from fetcher.config import load_config
from fetcher.plan import prepare
from fetcher.tarfeed import ListFeed, SharedFeed
from tests.conftest import write_urls

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


def test_engines_plan_from_the_parents_input_files_not_a_new_listing(tmp_path: Path) -> None:
    # A box's engines take the files the parent opened: a glob that matches more files by the time an
    # engine starts (a dataset still being written) cannot shift which rows make tar k.
    for name in ("a", "b"):
        write_urls(tmp_path / "in" / f"{name}.parquet", [f"http://127.0.0.1:9/{name}/{i}" for i in range(30)])
    cfg = load_config(["--input", str(tmp_path / "in" / "*.parquet"), "--output", str(tmp_path / "out"),
                       "--samples-per-tar", "20"])  # fmt: skip
    parent = prepare(cfg)
    write_urls(tmp_path / "in" / "0-new.parquet", [f"http://127.0.0.1:9/new/{i}" for i in range(30)])
    assert len(prepare(cfg, claim=False).files) == 3  # a fresh listing sees the new file first
    engine = prepare(cfg, claim=False, files=parent.files)
    assert [f.path for f in engine.files] == [f.path for f in parent.files]
    assert engine.tars == parent.tars and engine.todo == parent.todo
