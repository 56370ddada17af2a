"""The imaging pool (threads of the engine, or isolated processes): plain bytes in, ImageOutcome out."""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import signal
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fetcher.deathsig import die_with_parent, mark_owner
from fetcher.imaging import ImageOptions, finish_image, process_image, process_small_image
from fetcher.records import ImageOutcome, Reason

# Images this small (bytes and header pixels) are imaged on the event loop itself (threads pool): a
# thumbnail costs ~0.2 ms there, while a hand-off to a thread costs more in GIL waits than the work
# (bench scaling, thumbs: 1,016 -> 1,478 images/s on one engine, CPU 1.05 -> 0.69 ms/image). The pixel
# bound keeps a small hostile file (a flat 30 KB PNG of 100 MP) off the loop.
INLINE_MAX_BYTES = 32 * 1024
INLINE_MAX_PIXELS = 100_000
# Images handed out and not yet back, per worker, before the dispatcher waits: fetching stops running
# ahead of imaging (without it a busy loop starved the imaging threads and 20,000 fetched bodies queued).
BACKLOG_PER_WORKER = 16


class ImagingPool:
    """``workers`` threads (or processes) running :func:`fetcher.imaging.process_image`.

    Processes: forkserver, not fork: the parent runs threads (resolver, to_thread) that fork would copy
    mid-state.
    """

    def __init__(self, workers: int, opts: ImageOptions, max_memory: int = 0, threads: bool = False) -> None:
        self.workers = workers
        self.opts = opts
        self.max_memory = max_memory
        self.threads = threads
        self.busy = 0
        self._backlog = workers * BACKLOG_PER_WORKER
        self._room = asyncio.Event()
        self._room.set()
        self._ctx = multiprocessing.get_context("forkserver")
        # The forkserver and the workers die with this process, even on SIGKILL (fetcher.deathsig).
        mark_owner()
        self._ctx.set_forkserver_preload(["fetcher.forkserver_guard"])
        self._pool = self._new_pool()

    def _new_pool(self) -> Executor:
        if self.threads:  # Pillow releases the GIL in decode, resize and encode; bytes never leave the process
            return ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="imaging")
        return ProcessPoolExecutor(
            max_workers=self.workers, mp_context=self._ctx, initializer=worker_init, initargs=(self.max_memory,)
        )

    async def __aenter__(self) -> ImagingPool:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def wait_room(self) -> None:
        """Wait while the workers have a full backlog (the dispatcher starts no new fetch before)."""
        await self._room.wait()

    async def run(self, data: bytes, expected_hash: str | None = None) -> ImageOutcome:
        """Process one image in a worker; a crashed worker becomes a named failure, not a crash."""
        self.busy += 1
        if self.busy >= self._backlog:
            self._room.clear()
        try:
            if self.threads and len(data) <= INLINE_MAX_BYTES:
                here = process_small_image(data, self.opts, expected_hash, INLINE_MAX_PIXELS)
                if isinstance(here, ImageOutcome):
                    return here
                # Too many pixels for the loop: a thread finishes it from the header and hash read here.
                return await asyncio.get_running_loop().run_in_executor(self._pool, finish_image, data, self.opts, here)
            return await self._run(data, expected_hash)
        except MemoryError:
            return ImageOutcome(reason=Reason.DECOMPRESSION_BOMB, detail="image needs more than --worker-max-memory")
        except Exception as exc:  # a codec bug must cost one row, never the run
            return ImageOutcome(reason=Reason.INTERNAL_ERROR, detail=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            self.busy -= 1
            if self.busy < self._backlog:
                self._room.set()

    async def _run(self, data: bytes, expected_hash: str | None) -> ImageOutcome:
        loop = asyncio.get_running_loop()
        # A dead worker (OOM killer, codec segfault) breaks the whole pool and fails every image in
        # it: each gets one more try on a fresh pool, so only the image that kills twice is lost.
        for _try in range(2):
            pool = self._pool
            try:
                return await loop.run_in_executor(pool, process_image, data, self.opts, expected_hash)
            except BrokenProcessPool:
                if self._pool is pool:  # the first of the failed calls replaces the pool
                    pool.shutdown(wait=False, cancel_futures=False)
                    self._pool = self._new_pool()
        return ImageOutcome(reason=Reason.INTERNAL_ERROR, detail="imaging worker died twice on this image")


def worker_init(max_memory: int) -> None:
    """Runs in each worker: die with the forkserver, cap its address space, leave Ctrl-C to the parent.

    The cap turns a huge allocation (a bomb that slips past the pixel check) into a MemoryError for
    that one image instead of the OOM killer taking the box's memory.
    """
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if max_memory > 0:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = max_memory if hard == resource.RLIM_INFINITY else min(max_memory, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
