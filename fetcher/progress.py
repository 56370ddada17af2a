"""The human view of a run: a progress bar on a TTY, periodic log lines otherwise, and the end summary."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import TextIO

from fetcher.summary import RunStats

BAR_WIDTH = 24
BAR_REFRESH = 0.5  # seconds between redraws of the bar
RATE_WINDOW = 10.0  # seconds of history behind the bar's speeds and ETA


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


@dataclass(frozen=True)
class Rates:
    """Recent speeds: images/s, rows/s, downloaded bytes/s."""

    images: float
    rows: float
    bytes: float


class RateWindow:
    """Speeds over the last ``span`` seconds, so the bar shows now, not the average since a slow start."""

    def __init__(self, span: float = RATE_WINDOW) -> None:
        self.span = span
        self._points: deque[tuple[float, int, int, int]] = deque()

    def update(self, stats: RunStats, now: float | None = None) -> Rates:
        now = time.monotonic() if now is None else now
        self._points.append((now, stats.ok, stats.rows_done, stats.bytes_downloaded))
        while len(self._points) > 2 and now - self._points[1][0] >= self.span:
            self._points.popleft()
        t0, ok0, rows0, bytes0 = self._points[0]
        dt = now - t0
        if dt < 1.0:  # too short a window to mean anything yet: averages since start
            e = stats.elapsed
            return Rates(stats.ok / e, stats.rows_done / e, stats.bytes_downloaded / e)
        return Rates((stats.ok - ok0) / dt, (stats.rows_done - rows0) / dt, (stats.bytes_downloaded - bytes0) / dt)


def progress_bar(stats: RunStats, rates: Rates | None = None, width: int = BAR_WIDTH) -> str:
    """One line: rows done/total, images/s, success %, MB/s, ETA (at ``rates``, default: run averages)."""
    if rates is None:
        e = stats.elapsed
        rates = Rates(stats.ok / e, stats.rows_done / e, stats.bytes_downloaded / e)
    total = max(stats.total_rows, 1)
    frac = min(stats.rows_done / total, 1.0)
    filled = int(frac * width)
    bar = "#" * filled + "-" * (width - filled)
    left = stats.total_rows - stats.rows_done
    eta = left / rates.rows if rates.rows > 0 else (0.0 if left <= 0 else None)
    # The tail: an ETA from the row rate says nothing about rows stuck on a slow host.
    tail = f" | {stats.outstanding} open, oldest {format_duration(stats.oldest_age)}" if stats.outstanding else ""
    if stats.hosts_given_up:
        tail += f", {stats.hosts_given_up} hosts given up"
    return (
        f"[{bar}] {stats.rows_done}/{stats.total_rows} rows {100 * frac:5.1f} %"
        f" | {rates.images:6.1f} img/s | ok {100 * stats.success_ratio:5.1f} %"
        f" | {rates.bytes / 1e6:6.2f} MB/s | ETA {format_duration(eta)}{tail}"
    )


def log_line(stats: RunStats, fmt: str, shard: str) -> str:
    """One structured progress line: ``key=value`` text, or a JSON object."""
    data = {"event": "progress", "shard": shard, **stats.as_dict()}
    if fmt == "json":
        data["time"] = round(time.time(), 3)
        return json.dumps(data, separators=(",", ":"))
    del data["failed_by_reason"]
    parts = [f"{k}={v}" for k, v in data.items() if k != "event"]
    top = stats.by_reason.most_common(3)
    if top:
        parts.append("top_failures=" + ",".join(f"{r}:{n}" for r, n in top))
    return "fetcher progress " + " ".join(parts)


class ProgressView:
    """Draws the bar (TTY) or writes log lines (not a TTY) from a RunStats, on demand."""

    def __init__(
        self, stats: RunStats, mode: str, log_format: str, log_interval: float, shard: str, stream: TextIO | None = None
    ) -> None:
        self.stats = stats
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "log"
        self.mode = mode
        self.log_format = log_format
        self.shard = shard
        self.interval = BAR_REFRESH if mode == "bar" else log_interval
        self._drawn = False
        self._window = RateWindow()

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def tick(self) -> None:
        """Redraw the bar or write one log line."""
        if self.mode == "bar":
            self.stream.write("\r" + progress_bar(self.stats, self._window.update(self.stats)) + "\x1b[K")
            self._drawn = True
        elif self.mode == "log":
            self.stream.write(log_line(self.stats, self.log_format, self.shard) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Final state: the bar at its end value on its own line; in JSON mode the summary as one object."""
        if self.mode == "bar" and self._drawn:
            self.tick()
            self.stream.write("\n")
        if self.log_format == "json" and self.mode != "off":
            self.stream.write(json.dumps({"event": "summary", "shard": self.shard, **self.stats.as_dict()}) + "\n")
        self.stream.flush()
