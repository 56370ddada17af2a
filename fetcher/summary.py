"""Run-wide counters for the end-of-run summary (and the hooks later stages export)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fetcher.records import SampleResult, Status


@dataclass
class RunStats:
    """Counts of one run; updated once per final row result."""

    total_rows: int = 0
    tars_total: int = 0
    tars_skipped: int = 0
    tars_done: int = 0
    rows_done: int = 0
    ok: int = 0
    bytes_downloaded: int = 0
    bytes_written: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    exit_code: int = 0  # 130/143 after a stop signal
    # the tail, refreshed by the monitor: rows read and not final, age of the oldest, hosts given up
    outstanding: int = 0
    oldest_age: float = 0.0
    hosts_given_up: int = 0

    def record(self, res: SampleResult) -> None:
        """Count one final row result."""
        self.rows_done += 1
        self.by_status[res.status.value] += 1
        self.bytes_downloaded += res.bytes_downloaded
        self.bytes_written += res.bytes_written
        if res.status is Status.SUCCESS:
            self.ok += 1
        elif res.reason is not None:
            self.by_reason[res.reason.value] += 1

    @property
    def elapsed(self) -> float:
        end = self.finished if self.finished is not None else time.monotonic()
        return max(end - self.started, 1e-9)

    @property
    def images_per_second(self) -> float:
        return self.ok / self.elapsed

    @property
    def filtered(self) -> int:
        """Rows --filter rejected: recorded, never fetched, not failures."""
        return self.by_status.get(Status.FILTERED.value, 0)

    @property
    def failed(self) -> int:
        return self.rows_done - self.ok - self.filtered

    @property
    def success_ratio(self) -> float:
        return self.ok / self.rows_done if self.rows_done else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the average row rate so far (None before the first row)."""
        if not self.rows_done:
            return None
        return (self.total_rows - self.rows_done) * self.elapsed / self.rows_done

    def as_dict(self) -> dict[str, Any]:
        """The counts and rates as plain JSON-ready values (progress log lines, final JSON summary)."""
        eta = self.eta_seconds
        return {
            "rows_done": self.rows_done,
            "rows_total": self.total_rows,
            "ok": self.ok,
            "failed": self.failed,
            "success_ratio": round(self.success_ratio, 4),
            "images_per_second": round(self.images_per_second, 2),
            "rows_per_second": round(self.rows_done / self.elapsed, 2),
            "downloaded_mb_per_second": round(self.bytes_downloaded / self.elapsed / 1e6, 3),
            "bytes_downloaded": self.bytes_downloaded,
            "bytes_written": self.bytes_written,
            "tars_done": self.tars_done,
            "tars_total": self.tars_total,
            "elapsed_seconds": round(self.elapsed, 2),
            "eta_seconds": None if eta is None else round(eta, 1),
            "rows_outstanding": self.outstanding,
            "oldest_row_age_seconds": round(self.oldest_age, 1),
            "hosts_given_up": self.hosts_given_up,
            "failed_by_reason": dict(self.by_reason.most_common()),
        }

    def format(self) -> str:
        """A human summary table."""
        failed = self.failed
        filtered = self.filtered
        lines = [
            "fetcher summary",
            f"  tars        {self.tars_done} written, {self.tars_skipped} already complete, {self.tars_total} in shard",
            f"  rows        {self.rows_done} of {self.total_rows}",
            f"  ok          {self.ok} ({100 * self.ok / max(self.rows_done, 1):.1f} %)",
            f"  failed      {failed}",
        ]
        for reason, n in self.by_reason.most_common():
            if reason != Status.FILTERED.value:  # --filter rows are not failures: own line below
                lines.append(f"    {reason:<22}{n:<8}{100 * n / max(self.rows_done, 1):.1f} %")
        if filtered:
            lines.append(f"  filtered    {filtered}")
        mb_in, mb_out = self.bytes_downloaded / 1e6, self.bytes_written / 1e6
        lines += [
            f"  time        {self.elapsed:.1f} s, {self.images_per_second:.1f} images/s,"
            f" {self.rows_done / self.elapsed:.1f} rows/s, {mb_in / self.elapsed:.2f} MB/s downloaded",
            f"  bytes       {mb_in:.1f} MB downloaded -> {mb_out:.1f} MB written"
            + (f" ({mb_out / mb_in * 100:.0f} %, {mb_in - mb_out:.1f} MB saved by resizing)" if mb_in else ""),
        ]
        return "\n".join(lines)
