"""The imaging process pool: plain bytes in, ImageOutcome out."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fetcher.imaging import ImageOptions, process_image
from fetcher.records import ImageOutcome, Reason


class ImagingPool:
    """``workers`` processes running :func:`fetcher.imaging.process_image`.

    forkserver, not fork: the parent runs threads (resolver, to_thread) that fork would copy mid-state.
    """

    def __init__(self, workers: int, opts: ImageOptions) -> None:
        self.workers = workers
        self.opts = opts
        self.busy = 0
        self._ctx = multiprocessing.get_context("forkserver")
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=self._ctx)

    async def __aenter__(self) -> ImagingPool:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def run(self, data: bytes, expected_hash: str | None = None) -> ImageOutcome:
        """Process one image in a worker; a crashed worker becomes a named failure, not a crash."""
        loop = asyncio.get_running_loop()
        self.busy += 1
        try:
            return await loop.run_in_executor(self._pool, process_image, data, self.opts, expected_hash)
        except BrokenProcessPool:
            # A worker died (OOM killer, segfault in a codec): replace the pool, fail this image only.
            self._pool.shutdown(wait=False, cancel_futures=False)
            self._pool = self._new_pool()
            return ImageOutcome(reason=Reason.INTERNAL_ERROR, detail="imaging worker died")
        finally:
            self.busy -= 1
