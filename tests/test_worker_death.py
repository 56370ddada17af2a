"""A killed imaging worker costs at most the image that was killed twice, never the run."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
from concurrent.futures import ProcessPoolExecutor

from PIL import Image

from fetcher.farm.images import make_image
from fetcher.imaging import ImageOptions
from fetcher.records import Reason
from fetcher.workers import ImagingPool


def _slow_image() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, "PNG")  # small file, half a second or more of decoding
    return buf.getvalue()


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def _kill_worker(pool: ImagingPool, *, busy: bool, not_in: ProcessPoolExecutor | None = None) -> None:
    """SIGKILL the worker of the pool's current executor once it exists (and, if ``busy``, is working)."""
    base: dict[int, int] = {}
    for _ in range(1000):
        executor = pool._pool
        procs = list(executor._processes or {}) if executor is not not_in else []  # type: ignore[attr-defined]
        for pid in procs:
            with contextlib.suppress(FileNotFoundError):
                ticks = _cpu_ticks(pid)
                if not busy or ticks - base.setdefault(pid, ticks) >= 3:
                    os.kill(pid, signal.SIGKILL)
                    return
        await asyncio.sleep(0.01)
    raise AssertionError("never saw a worker to kill")


async def test_killed_worker_is_retried_once_then_named() -> None:
    slow = _slow_image()
    async with ImagingPool(1, ImageOptions(image_size=32, max_image_pixels=100_000_000)) as pool:
        assert (await pool.run(make_image(64, 48, "jpeg"))).ok  # the worker is up and idle

        killer = asyncio.create_task(_kill_worker(pool, busy=True))
        survived = await pool.run(slow)
        await killer
        assert survived.ok, survived  # its second try ran on a fresh pool

        async def kill_twice() -> None:
            first = pool._pool
            await _kill_worker(pool, busy=True)
            await _kill_worker(pool, busy=False, not_in=first)  # the retry's fresh worker

        killer = asyncio.create_task(kill_twice())
        dead = await pool.run(slow)
        await killer
        assert dead.reason is Reason.INTERNAL_ERROR and "died twice" in dead.detail
        assert (await pool.run(make_image(64, 48, "jpeg"))).ok  # and the pool still works
