"""The threads pool images small files on the event loop, everything else on its worker threads, and
holds fetching back once its backlog is full."""

from __future__ import annotations

import asyncio
import io
import itertools
import threading
import time

from PIL import Image

from fetcher.farm.images import make_image
from fetcher.imaging import ImageOptions, Pending, finish_image, process_image, process_small_image
from fetcher.records import ImageOutcome
from fetcher.workers import BACKLOG_PER_WORKER, INLINE_MAX_BYTES, INLINE_MAX_PIXELS, ImagingPool

OPTS = ImageOptions(image_size=64, max_image_pixels=100_000_000)


def _flat_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")  # a few KB of file, side*side pixels to decode
    return buf.getvalue()


def test_small_image_is_done_here_and_matches_the_worker_result() -> None:
    thumb = make_image(160, 120, "jpeg")
    here = process_small_image(thumb, OPTS, None, INLINE_MAX_PIXELS)
    assert isinstance(here, ImageOutcome) and here.ok
    worker = process_image(thumb, OPTS)
    assert (here.data, here.width, here.height, here.hash) == (worker.data, worker.width, worker.height, worker.hash)


def test_few_bytes_of_many_pixels_are_left_to_a_worker() -> None:
    bomb = _flat_png(6000)  # 36 MP in a file small enough for the inline path
    assert len(bomb) <= INLINE_MAX_BYTES
    assert isinstance(process_small_image(bomb, OPTS, None, INLINE_MAX_PIXELS), Pending)
    bad = process_small_image(b"not an image at all", OPTS, None, INLINE_MAX_PIXELS)
    assert isinstance(bad, ImageOutcome) and not bad.ok  # failures found from the header are final here too


async def test_threads_pool_keeps_the_loop_free_for_a_small_file_of_many_pixels() -> None:
    bomb = _flat_png(9000)
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async with ImagingPool(1, OPTS, threads=True) as pool:
        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.05)
        start = time.monotonic()
        out = await pool.run(bomb)
        took = time.monotonic() - start
        ticker.cancel()
    assert out.ok and (out.width, out.height) == (64, 64)
    assert took > 0.2  # a real decode: long enough to see a blocked loop
    during = [b - a for a, b in itertools.pairwise(ticks) if a >= start]
    assert during and max(during) < 0.15, f"the loop stalled {max(during):.2f}s while a worker decoded"


async def test_small_image_runs_on_the_loop_thread_and_large_on_a_worker() -> None:
    seen: dict[str, set[str]] = {"small": set(), "large": set()}
    orig = threading.current_thread().name

    async with ImagingPool(1, OPTS, threads=True) as pool:
        for kind, data in (("small", make_image(96, 96, "jpeg")), ("large", make_image(800, 600, "jpeg"))):
            before = {t.name for t in threading.enumerate()}
            assert (await pool.run(data)).ok
            seen[kind] = {t.name for t in threading.enumerate()} - before
    assert not seen["small"], "a thumbnail started an imaging thread"
    assert any(name.startswith("imaging") for name in seen["large"]), seen
    assert threading.current_thread().name == orig


async def test_full_backlog_holds_the_dispatcher_until_images_come_back() -> None:
    big = make_image(1600, 1200, "jpeg", seed=3)  # over the inline bounds: each one goes to the thread
    assert len(big) > INLINE_MAX_BYTES
    async with ImagingPool(1, ImageOptions(image_size=256), threads=True) as pool:
        runs = [asyncio.create_task(pool.run(big)) for _ in range(BACKLOG_PER_WORKER + 4)]
        await asyncio.sleep(0)
        waiter = asyncio.create_task(pool.wait_room())
        await asyncio.sleep(0.001)
        assert not waiter.done(), "the dispatcher was let on with a full backlog"
        results = await asyncio.gather(*runs)
        await asyncio.wait_for(waiter, 5)
    assert all(r.ok for r in results)


def test_cpu_ms_counts_this_images_work_only_while_other_threads_run() -> None:
    photo = make_image(2400, 1800, "jpeg", seed=5)
    opts = ImageOptions(image_size=256)
    alone = min(process_image(photo, opts).cpu_ms for _ in range(3))
    stop = threading.Event()

    def spin() -> None:  # another thread busy on the other core (as the event loop and workers are)
        while not stop.is_set():
            sum(range(10_000))

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        busy = min(process_image(photo, opts).cpu_ms for _ in range(3))
    finally:
        stop.set()
        spinner.join()
    # The process's clock would add the spinner's CPU (about as much again); the thread's clock does not.
    assert busy < 1.5 * alone, (busy, alone)


def test_a_pending_image_finishes_as_the_whole_job_would() -> None:
    photo = make_image(640, 480, "jpeg", seed=9)  # few bytes, over the inline pixel bound
    pending = process_small_image(photo, OPTS, None, INLINE_MAX_PIXELS)
    assert isinstance(pending, Pending)
    done, whole = finish_image(photo, OPTS, pending), process_image(photo, OPTS)
    assert (done.data, done.width, done.height, done.hash) == (whole.data, whole.width, whole.height, whole.hash)
