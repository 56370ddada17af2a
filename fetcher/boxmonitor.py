"""One /metrics, /healthz and progress view for a box of engine processes.

Each engine process keeps its own metrics registry and serves it on a private loopback port. The box
parent's endpoint asks them all at scrape time and adds the samples up (counters, histograms and
most gauges sum; timestamps, lag and flags take the max): no per-process files, no Prometheus
multiprocess mode, nothing done per image. The progress view reads the engines' summed RunStats.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.utils import floatToGoString

from fetcher.metrics import MonitorOptions
from fetcher.monitor import CONTENT_TYPE, Monitor
from fetcher.summary import RunStats

# Gauges whose box value is the largest (or smallest) of the engines', not their sum.
_MAX = frozenset(
    {
        "fetcher_last_progress_timestamp_seconds",
        "fetcher_event_loop_lag_seconds",
        "fetcher_disk_free_bytes",
        "fetcher_disk_paused",
        "fetcher_build_info",
        "fetcher_oldest_outstanding_row_age_seconds",
    }
)
_MIN = frozenset({"fetcher_start_time_seconds"})
_SHARD_INFO = "fetcher_shard_info"
SCRAPE_TIMEOUT = 5.0


def _combine(name: str, old: float, new: float) -> float:
    if name in _MAX:
        return new if math.isnan(old) else max(old, new)
    if name in _MIN:
        return new if math.isnan(old) else min(old, new)
    return old + new


def merge_expositions(texts: list[str], shard: tuple[int, int], box: dict[str, float] | None = None) -> str:
    """Add up Prometheus text expositions sample by sample, families kept together in first-seen order.

    The engines' ``fetcher_shard_info`` is replaced by the box's own shard, and each unlabelled sample
    named in ``box`` by the box's own value (what only the parent knows, such as the rows planned).
    """
    families: dict[str, tuple[list[str], dict[str, float]]] = {}
    for text in texts:
        current: tuple[list[str], dict[str, float]] | None = None
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                current = families.setdefault(name, ([], {}))
                if line not in current[0]:
                    current[0].append(line)
                continue
            if not line or line.startswith("#") or current is None:
                continue
            key, _, value = line.rpartition(" ")
            metric = key.split("{", 1)[0]
            if metric == _SHARD_INFO:
                continue
            samples = current[1]
            v = float(value)
            samples[key] = _combine(metric, samples[key], v) if key in samples else v
    for metric, own in (box or {}).items():
        if metric in families:
            families[metric][1][metric] = own
    shard_info = f'{_SHARD_INFO}{{shard="{shard[0]}",shards="{shard[1]}"}}'
    if _SHARD_INFO in families:
        families[_SHARD_INFO][1][shard_info] = 1.0
    out: list[str] = []
    for comments, samples in families.values():
        out += comments
        out += [f"{key} {floatToGoString(v)}" for key, v in samples.items()]  # type: ignore[no-untyped-call]
    return "\n".join(out) + "\n"


class BoxMonitor(Monitor):
    """The parent's Monitor: its stats are the engines' sum, its /metrics the engines' merged."""

    def __init__(self, opts: MonitorOptions, stats: RunStats, shard: tuple[int, int], output_dir: str) -> None:
        super().__init__(opts, stats, shard, output_dir)
        self.shard = shard
        self.planned = stats.total_rows  # the box's plan: engines count the rows of the tars they take
        self.ports: dict[int, int] = {}  # running engine index -> its private metrics port
        # Last exposition seen of every engine (a finished one's final one), so the box's counters
        # never go down when an engine ends or misses a scrape.
        self.texts: dict[int, str] = {}
        self._client: aiohttp.ClientSession | None = None

    def engines_reported(self, parts: list[RunStats]) -> None:
        """New counts from the engines: sum them; a row finished since last time is progress."""
        before = self.stats.rows_done
        self.stats.sum_of(parts)
        self.stats.total_rows = self.planned - self.stats.rows_skipped
        self.metrics.planned_rows = self.stats.total_rows
        if self.stats.rows_done > before:
            self.metrics.done_rows = self.stats.rows_done
            self.metrics.last_progress = time.time()

    def engine_finished(self, index: int, exposition: str) -> None:
        """An engine ended: keep its final counts in the box's totals."""
        self.ports.pop(index, None)
        self.texts[index] = exposition

    async def _scrape(self, index: int, port: int) -> None:
        assert self._client is not None
        try:
            async with self._client.get(f"http://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return  # finishing right now: its final exposition arrives with its last message
        if index in self.ports:
            self.texts[index] = text

    async def _metrics(self, _req: web.Request) -> web.Response:
        self._note_scrape()
        if self._client is None:
            timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
            self._client = aiohttp.ClientSession(timeout=timeout, trust_env=False)
        await asyncio.gather(*(self._scrape(i, p) for i, p in list(self.ports.items())))
        planned = {"fetcher_shard_rows_planned": float(self.stats.total_rows)}
        body = merge_expositions([self.texts[i] for i in sorted(self.texts)], self.shard, planned)
        body += (
            "# HELP fetcher_engine_processes engine processes of this box still running\n"
            "# TYPE fetcher_engine_processes gauge\n"
            f"fetcher_engine_processes {len(self.ports)}\n"
        )
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: Any) -> None:
        await super().__aexit__(exc_type, *exc)
        if self._client is not None:
            await self._client.close()
