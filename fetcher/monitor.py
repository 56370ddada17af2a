"""What the pipeline reports to: one observer feeding RunStats, Prometheus metrics and the progress view.

The pipeline calls a handful of methods (``row_done``, ``fetched``, ``imaged``, ``tar_done``, ...) and
runs the monitor as an async context; the metrics HTTP endpoint, the event-loop lag probe and the
progress ticker live here on the same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web

from fetcher.metrics import LiveSources, Metrics, MonitorOptions
from fetcher.progress import ProgressView
from fetcher.records import FetchOutcome, ImageOutcome, SampleResult
from fetcher.scheduler import Scheduler
from fetcher.summary import RunStats
from fetcher.workers import ImagingPool

log = logging.getLogger(__name__)

LAG_PROBE = 0.25  # seconds between event-loop lag samples
FINAL_SCRAPE_MAX = 60.0  # longest wait at exit for the scrape that sees a finished shard
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Budget(Protocol):
    used: int


class Monitor:
    """The pipeline's observer. Cheap per event; everything periodic runs in ``async with monitor``."""

    def __init__(self, opts: MonitorOptions, stats: RunStats, shard: tuple[int, int], output_dir: str) -> None:
        self.opts = opts
        self.stats = stats
        self.metrics = Metrics(shard, LiveSources(output_dir=output_dir))
        self.metrics.planned_rows = stats.total_rows
        self.progress = ProgressView(stats, opts.progress, opts.log_format, opts.log_interval, f"{shard[0]}/{shard[1]}")
        self.ready = False
        # The endpoint users scrape: announced, and kept up for one last scrape. An engine process of a
        # box is not: only its box parent asks it.
        self.public = True
        self.bound: tuple[str, int] | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._scrapes: list[float] = []  # loop times of the last two /metrics requests
        self._scraped = asyncio.Event()

    # -- events ----------------------------------------------------------------------------------
    def row_read(self) -> None:
        self.metrics.rows_read.inc()

    def row_scheduled(self) -> None:
        self.metrics.rows_scheduled.inc()

    def fetched(self, outcome: FetchOutcome) -> None:
        self.metrics.fetched(outcome)

    def imaged(self, image: ImageOutcome) -> None:
        self.metrics.imaged(image)

    def row_done(self, res: SampleResult) -> None:
        """The one place a final row result is counted."""
        self.stats.record(res)
        self.metrics.row_done(res)

    def tar_done(self) -> None:
        self.stats.tars_done += 1
        self.metrics.tars.inc()

    # -- lifecycle -------------------------------------------------------------------------------
    def watching(self, scheduler: Scheduler, budget: _Budget, pool: ImagingPool) -> Monitor:
        """Point the scrape-time gauges at the live pipeline parts; use as ``async with``."""
        src = self.metrics.sources
        src.pending_rows = lambda: scheduler.pending
        src.inflight_requests = lambda: scheduler.inflight
        src.bytes_in_flight = lambda: budget.used
        # pool.busy counts images submitted and not returned: beyond the worker count they queue.
        src.busy_workers = lambda: min(pool.busy, pool.workers)
        src.imaging_queue = lambda: max(0, pool.busy - pool.workers)
        src.workers = lambda: pool.workers
        counters = scheduler.counters
        src.retries = lambda: counters.retries
        src.throttled = lambda: counters.throttled
        src.breaker_openings = lambda: counters.breaker_openings
        src.delayed_hosts = lambda: counters.delayed_hosts
        src.hosts_given_up = lambda: scheduler.hosts_given_up
        return self

    def watch_tail(self, outstanding: Callable[[], int], oldest_age: Callable[[], float]) -> None:
        """Where the tail gauges (rows outstanding, oldest row's age) come from."""
        self.metrics.sources.outstanding_rows = outstanding
        self.metrics.sources.oldest_row_age = oldest_age

    def refresh_tail(self) -> None:
        """Copy the tail gauges into RunStats for the progress view."""
        src, st = self.metrics.sources, self.stats
        st.outstanding, st.oldest_age = src.outstanding_rows(), src.oldest_row_age()
        st.hosts_given_up = src.hosts_given_up()

    async def __aenter__(self) -> Monitor:
        endpoint = self.opts.metrics_endpoint
        if endpoint is not None:
            await self._serve(*endpoint)
        self._tasks.append(asyncio.create_task(self._probe_lag()))
        if self.progress.enabled:
            self._tasks.append(asyncio.create_task(self._tick()))
        self.ready = True
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: Any) -> None:
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.progress.close()
        if self._runner is not None:
            if self.public and exc_type is None and self.stats.rows_done >= self.stats.total_rows:
                await self._final_scrape()
            await self._runner.cleanup()

    async def _final_scrape(self) -> None:
        """Stay up for one more scrape once the shard is finished, so Prometheus's last sample says
        "done" and FetcherInstanceDown stays quiet. Only when a scraper is seen (two scrapes give its
        interval); nobody scraping costs nothing."""
        if len(self._scrapes) < 2:
            return
        interval = self._scrapes[-1] - self._scrapes[-2]
        self._scraped.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._scraped.wait(), min(1.5 * interval + 1.0, FINAL_SCRAPE_MAX))

    async def _serve(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except (OSError, AttributeError) as exc:
            # Metrics are for watching, not for the data: a busy port (a second run on the box) must
            # not cost a days-long download. Say so on one line and go on without the endpoint.
            # (AttributeError: aiohttp reading the port of a server uvloop closed at once, seen when
            # another process took the port in the same instant.)
            why = exc.strerror if isinstance(exc, OSError) else "the listening socket closed at once"
            log.warning("no metrics endpoint, cannot listen on %s:%s: %s", host, port, why)
            await self._runner.cleanup()
            self._runner = None
            return
        bound = self._runner.addresses[0]
        self.bound = (str(bound[0]), int(bound[1]))
        if self.public:
            log.info("metrics on http://%s:%s/metrics", host, self.bound[1])

    def _note_scrape(self) -> None:
        self._scrapes = [*self._scrapes[-1:], asyncio.get_running_loop().time()]
        self._scraped.set()

    async def _metrics(self, _req: web.Request) -> web.Response:
        self._note_scrape()
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy unless no row finished for --stall-seconds (a finished run stays healthy)."""
        stalled = self.metrics.stalled_for()
        done = self.stats.rows_done >= self.stats.total_rows
        ok = done or stalled <= self.opts.stall_seconds
        return ok, {
            "status": "ok" if ok else "stalled",
            "seconds_since_progress": round(stalled, 1),
            "stall_seconds": self.opts.stall_seconds,
            "rows_done": self.stats.rows_done,
            "rows_total": self.stats.total_rows,
        }

    async def _healthz(self, _req: web.Request) -> web.Response:
        ok, body = self.health()
        return web.json_response(body, status=200 if ok else 503)

    async def _readyz(self, _req: web.Request) -> web.Response:
        return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

    async def _probe_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(LAG_PROBE)
            self.metrics.event_loop_lag = max(0.0, loop.time() - t0 - LAG_PROBE)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.progress.interval)
            self.refresh_tail()
            self.progress.tick()
