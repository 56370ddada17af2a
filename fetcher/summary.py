"""Run-wide counters for the end-of-run summary (and the hooks later stages export)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

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

    def format(self) -> str:
        """A human summary table."""
        failed = self.rows_done - self.ok
        lines = [
            "fetcher summary",
            f"  tars        {self.tars_done} written, {self.tars_skipped} already complete, {self.tars_total} in shard",
            f"  rows        {self.rows_done} of {self.total_rows}",
            f"  ok          {self.ok} ({100 * self.ok / max(self.rows_done, 1):.1f} %)",
            f"  failed      {failed}",
        ]
        for reason, n in self.by_reason.most_common():
            lines.append(f"    {reason:<22}{n}")
        mb_in, mb_out = self.bytes_downloaded / 1e6, self.bytes_written / 1e6
        lines += [
            f"  time        {self.elapsed:.1f} s, {self.images_per_second:.1f} images/s",
            f"  bytes       {mb_in:.1f} MB downloaded -> {mb_out:.1f} MB written"
            + (f" ({mb_out / mb_in * 100:.0f} %)" if mb_in else ""),
        ]
        return "\n".join(lines)
