"""The I/O stages of one run, open for its length: the fetch seam (HTTP client, or the local files the
rows name) and the imaging pool, with the monitor's gauges reading them and the scheduler."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fetcher.budget import ByteBudget
from fetcher.fetchers import Fetch, FetchFor, HttpFetch, LocalFetch
from fetcher.http import HttpClient
from fetcher.monitor import Monitor
from fetcher.plan import RunPlan
from fetcher.scheduler import Scheduler
from fetcher.workers import ImagingPool


@contextlib.asynccontextmanager
async def open_io(
    plan: RunPlan,
    budget: ByteBudget,
    monitor: Monitor,
    scheduler: Scheduler,
    fetch_for: FetchFor | None = None,
) -> AsyncIterator[tuple[Fetch, ImagingPool]]:
    """The run's fetch and imaging pool (a body holds ``budget`` from its fetch until imaging is done),
    watched by ``monitor`` (with ``scheduler``) while open. ``fetch_for`` makes the fetch instead (tests
    drive the engine in-process through it; it reserves each body's bytes in the budget it is given)."""
    cfg, roots = plan.cfg, plan.local_roots
    async with (
        HttpClient(cfg.http, budget, cfg.dns, monitor.metrics, monitor.stats.dns) as http,
        ImagingPool(
            cfg.run.worker_count,
            cfg.imaging,
            cfg.durability.worker_max_bytes,
            threads=cfg.run.imaging_pool == "threads",
        ) as pool,
        monitor.watching(scheduler, budget, pool),
    ):
        fetch: Fetch = HttpFetch(http) if roots is None else LocalFetch(roots, cfg.http.max_body_bytes, budget)
        yield (fetch if fetch_for is None else fetch_for(budget)), pool
