"""The human view of a run: a progress bar on a TTY, periodic log lines otherwise, and the end summary."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from fetcher.logs import set_line_owner
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


@dataclass(frozen=True)
class BarField:
    """One ``|``-separated part of the bar line; when the terminal is too narrow the lowest
    ``priority`` goes first (ties: the rightmost), so new fields only need a priority."""

    text: str
    priority: int


# Priorities of the built-in fields; other stages' fields slot in between (higher = kept longer).
PRIO_ROWS = 100  # never dropped: the one thing a glance must show
PRIO_ETA = 80
PRIO_TAIL = 75  # rows outstanding and the oldest one's age
PRIO_IMAGES = 70
PRIO_BAR = 50
PRIO_OK = 40
PRIO_BYTES = 20
MIN_BAR_WIDTH = 10


def progress_bar(
    stats: RunStats,
    rates: Rates | None = None,
    width: int = BAR_WIDTH,
    columns: int | None = None,
    extra: tuple[BarField, ...] = (),
) -> str:
    """One line: rows done/total, images/s, success %, MB/s, ETA (at ``rates``, default: run averages).

    ``columns``: the terminal width the line must fit in (None: no limit); the ``#`` bar shrinks
    first, then fields drop by priority. ``extra`` fields go before the ETA.
    """
    if rates is None:
        e = stats.elapsed
        rates = Rates(stats.ok / e, stats.rows_done / e, stats.bytes_downloaded / e)
    total = max(stats.total_rows, 1)
    frac = min(stats.rows_done / total, 1.0)
    left = stats.total_rows - stats.rows_done
    eta = left / rates.rows if rates.rows > 0 else (0.0 if left <= 0 else None)
    rows = BarField(f"{stats.rows_done}/{stats.total_rows} rows {100 * frac:5.1f} %", PRIO_ROWS)
    fields = [
        BarField(f"{rates.images:6.1f} img/s", PRIO_IMAGES),
        BarField(f"ok {100 * stats.success_ratio:5.1f} %", PRIO_OK),
        BarField(f"{rates.bytes / 1e6:6.2f} MB/s", PRIO_BYTES),
        *extra,
        BarField(f"ETA {format_duration(eta)}", PRIO_ETA),
    ]
    if stats.outstanding:  # the tail: an ETA from the row rate says nothing about rows stuck on a slow host
        tail = f"{stats.outstanding} open, oldest {format_duration(stats.oldest_age)}"
        if stats.hosts_given_up:
            tail += f", {stats.hosts_given_up} hosts given up"
        fields.append(BarField(tail, PRIO_TAIL))
    bar_width: int | None = width

    def render() -> str:
        head = rows.text
        if bar_width is not None:
            filled = int(frac * bar_width)
            head = "[" + "#" * filled + "-" * (bar_width - filled) + "] " + head
        return " | ".join([head, *(f.text for f in fields)])

    line = render()
    while columns is not None and len(line) > columns:
        if bar_width is not None and bar_width > MIN_BAR_WIDTH:
            bar_width = max(MIN_BAR_WIDTH, bar_width - (len(line) - columns))
        else:
            candidates = [(f.priority, -i) for i, f in enumerate(fields)]
            if bar_width is not None:
                candidates.append((PRIO_BAR, 1))
            if not candidates:
                return line[:columns]
            _prio, neg_i = min(candidates)
            if neg_i == 1:
                bar_width = None
            else:
                del fields[-neg_i]
        line = render()
    if columns is not None and bar_width is not None and bar_width < width and len(line) < columns:
        bar_width = min(width, bar_width + columns - len(line))  # a dropped field left room: widen the bar again
        line = render()
    return line


def terminal_columns(stream: TextIO) -> int:
    """Usable width of the terminal behind ``stream``: one less than its columns, because writing
    the last column makes many terminals wrap before the ``\r`` comes."""
    try:
        cols = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        cols = 0
    if cols <= 0:  # not a terminal, or one that reports no size (a bare pty): $COLUMNS, else 80
        cols = shutil.get_terminal_size().columns
    return max(cols - 1, 20)


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
        # Other stages add bar fields here (each called per redraw; None = nothing to show now).
        self.fields: list[Callable[[], BarField | None]] = []

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def tick(self) -> None:
        """Redraw the bar or write one log line."""
        if self.mode == "bar":
            extra = tuple(f for f in (get() for get in self.fields) if f is not None)
            rates = self._window.update(self.stats)
            line = progress_bar(self.stats, rates, columns=terminal_columns(self.stream), extra=extra)
            self.stream.write("\r" + line + "\x1b[K")
            if not self._drawn:
                set_line_owner(self.clear_line)
            self._drawn = True
        elif self.mode == "log":
            self.stream.write(log_line(self.stats, self.log_format, self.shard) + "\n")
        self.stream.flush()

    def clear_line(self, stream: TextIO) -> None:
        """Called before a log message: wipe the bar so the message gets the line (the next tick redraws)."""
        if self._drawn and stream is self.stream:
            stream.write("\r\x1b[K")

    def close(self) -> None:
        """Final state: the bar at its end value on its own line; in JSON mode the summary as one object."""
        if self.mode == "bar" and self._drawn:
            self.tick()
            self.stream.write("\n")
            set_line_owner(None)
            self._drawn = False
        if self.log_format == "json":
            self.stream.write(json.dumps({"event": "summary", "shard": self.shard, **self.stats.as_dict()}) + "\n")
        self.stream.flush()
