"""The imaging process pool: plain bytes in, ImageOutcome out."""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
import signal
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fetcher.deathsig import die_with_parent, mark_owner
from fetcher.imaging import ImageOptions, process_image
from fetcher.records import ImageOutcome, Reason


class ImagingPool:
    """``workers`` processes running :func:`fetcher.imaging.process_image`.

    forkserver, not fork: the parent runs threads (resolver, to_thread) that fork would copy mid-state.
    """

    def __init__(self, workers: int, opts: ImageOptions, max_memory: int = 0, threads: bool = False) -> None:
        self.workers = workers
        self.opts = opts
        self.max_memory = max_memory
        self.threads = threads
        self.busy = 0
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

    async def run(self, data: bytes, expected_hash: str | None = None) -> ImageOutcome:
        """Process one image in a worker; a crashed worker becomes a named failure, not a crash."""
        self.busy += 1
        try:
            return await self._run(data, expected_hash)
        except MemoryError:
            return ImageOutcome(reason=Reason.DECOMPRESSION_BOMB, detail="image needs more than --worker-max-memory")
        except Exception as exc:  # a codec bug must cost one row, never the run
            return ImageOutcome(reason=Reason.INTERNAL_ERROR, detail=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            self.busy -= 1

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
