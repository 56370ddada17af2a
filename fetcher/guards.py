"""What keeps a run from hanging or filling the disk, beside the flow: checkpoints on time, the tail
bound, the shard watchdog and the free-space monitor.

The tail bound: once a fully read tar has only rows on struggling hosts left (failing, throttled, breaker
open), they are given up after ``--tail-timeout`` (at once when every such host's breaker already gave
up), so a few rows on a bad host never hold a tar open. The watchdog is the last resort for anything
else: a fully read tar without progress for ``--shard-watchdog`` seconds fails its outstanding rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fetcher.config import Config
from fetcher.diskguard import DiskFull, DiskGuard
from fetcher.openrows import OpenRows
from fetcher.records import Reason, SampleResult
from fetcher.scheduler import Scheduler
from fetcher.stopping import Stop
from fetcher.tars import OpenTars

TICK = 0.5  # seconds between checkpoint-interval and tail-bound checks


class Guards:
    """The engine's background checks, as tasks that run until the run ends."""

    def __init__(
        self,
        cfg: Config,
        rows: OpenRows,
        tars: OpenTars,
        scheduler: Scheduler,
        disk: DiskGuard,
        stop: Stop,
        finish: Callable[[SampleResult], None],
    ) -> None:
        self.rows, self.tars, self.scheduler, self.disk = rows, tars, scheduler, disk
        self.stop, self.finish = stop, finish
        self.tail_bound = cfg.durability.tail_timeout or 3 * cfg.http.timeout
        self.watchdog_limit = cfg.durability.shard_watchdog
        self._tail_since: dict[int, float] = {}  # tar -> when only rows on struggling hosts were left

    def start(self) -> list[asyncio.Task[None]]:
        """Start the checks; cancel the tasks to end them."""
        return [asyncio.create_task(c) for c in (self._watchdog(), self._on_tick(), self._disk_monitor())]

    def give_up(self, index: int, reason: Reason, detail: str, host: str | None = None) -> None:
        """End every open row of fully read tar ``index`` (or its rows on ``host``) with ``reason``,
        queued ones included."""
        keys = self.rows.keys_of_tar(index, host)
        self.scheduler.drop(keys)
        for key in keys:
            self.finish(SampleResult.failure(self.rows.cancel(key), reason, detail))

    async def _watchdog(self) -> None:
        limit = self.watchdog_limit
        if limit <= 0:
            return
        while True:
            await asyncio.sleep(min(5.0, limit / 4))
            now = time.monotonic()
            for w in self.tars.fully_read():
                if now - w.last_progress > limit:
                    self.give_up(w.files.index, Reason.TIMEOUT, f"shard watchdog: no progress for {limit:g}s")

    async def _on_tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            self.tars.tick()
            for w in self.tars.fully_read():
                if not self.stop.stopping:  # a stop leaves the tail to the next run; so does a failed tick
                    self._check_tail(w.files.index, now)

    def _check_tail(self, index: int, now: float) -> None:
        hosts = self.rows.hosts_of_tar(index)
        if not hosts or not all(self.scheduler.struggling(h) for h in hosts):
            self._tail_since.pop(index, None)
            return
        why = {h: self.scheduler.given_up(h) for h in hosts}
        if all(why.values()):
            # Their breakers already say these hosts fail (timeouts, 5xx, refused): waiting out a cool-down
            # would only hold the tar open. Retryable: --retry-failed fetches them later.
            for host, reason in why.items():
                detail = f"{reason}; its last rows given up with their tar (--retry-failed retries them)"
                self.give_up(index, Reason.HOST_UNAVAILABLE, detail, host)
            return
        since = self._tail_since.setdefault(index, now)
        if now - since >= self.tail_bound:
            detail = f"given up after {self.tail_bound:g}s with only rows on failing or slowed hosts left in the tar"
            self.give_up(index, Reason.TAIL_TIMEOUT, detail)

    async def _disk_monitor(self) -> None:
        try:
            await self.disk.monitor()
        except DiskFull as exc:
            self.stop.fail(exc)
