"""Where the engine's own scrape-time gauges read their levels: the tail (rows outstanding, the oldest
one's age), a disk pause, and the fleet's politeness store when one is shared."""

from __future__ import annotations

from fetcher.boxslots import SharedSlots
from fetcher.diskguard import DiskGuard
from fetcher.fleet import RedisSlots
from fetcher.monitor import Monitor
from fetcher.openrows import OpenRows


def watch_engine(monitor: Monitor, rows: OpenRows, disk: DiskGuard, shared: SharedSlots | None) -> None:
    """Point ``monitor``'s engine gauges at the live parts (read at scrape time, never copied)."""
    sources = monitor.metrics.sources
    sources.disk_paused = lambda: int(disk.paused)
    if isinstance(shared, RedisSlots):
        store = shared.counters
        sources.store_up = lambda: store.up
        sources.store_errors = lambda: store.errors
    monitor.watch_tail(lambda: len(rows), rows.oldest_age)
