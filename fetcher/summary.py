"""Run-wide counters for the end-of-run summary (and the hooks later stages export)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fetcher.dns import DnsStats
from fetcher.records import Reason, SampleResult, Status


@dataclass
class RunStats:
    """Counts of one run; updated once per final row result."""

    total_rows: int = 0
    rows_skipped: int = 0  # planned rows this run will not do: kept in a checkpoint, or their tar busy elsewhere
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
    notes: list[str] = field(default_factory=list)  # said at start, repeated in the summary (e.g. one-host lists)
    dns: DnsStats = field(default_factory=DnsStats)  # this process's name resolutions
    # the tail, refreshed by the monitor: rows read and not final, age of the oldest, hosts given up
    outstanding: int = 0
    oldest_age: float = 0.0
    hosts_given_up: int = 0

    def skip_rows(self, n: int) -> None:
        """``n`` planned rows are not this run's to do after all."""
        self.total_rows -= n
        self.rows_skipped += n

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

    def sum_of(self, parts: list[RunStats]) -> None:
        """Set this run's counts to the sum of ``parts`` (the engine processes of one box)."""
        for name in ("tars_done", "rows_done", "rows_skipped", "ok", "bytes_downloaded", "bytes_written"):
            setattr(self, name, sum(getattr(p, name) for p in parts))
        self.by_status = sum((p.by_status for p in parts), Counter())
        self.by_reason = sum((p.by_reason for p in parts), Counter())
        self.notes = list(dict.fromkeys(n for p in parts for n in p.notes))
        self.dns = DnsStats.sum_of([p.dns for p in parts])
        self.outstanding = sum(p.outstanding for p in parts)
        self.oldest_age = max((p.oldest_age for p in parts), default=0.0)
        self.hosts_given_up = sum(p.hosts_given_up for p in parts)

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
            "hints": self.hints(),
            "dns": {
                "resolutions": self.dns.resolutions,
                "cache_hit_ratio": round(self.dns.hit_ratio, 4),
                "lookups": self.dns.lookups,
                "failures": dict(self.dns.failures),
            },
        }

    def hints(self) -> list[str]:
        """What to do next, when the counts say a rerun as-is would not help."""
        out = list(self.notes)
        blocked = self.by_reason.get(Reason.BLOCKED_ADDRESS.value, 0)
        if blocked:
            share = f"all {blocked}" if blocked == self.rows_done else f"{blocked}"
            out.append(
                f"{share} rows were refused as loopback/private/link-local addresses (blocked_address). If those "
                "hosts are yours, allow them with --allow-private-networks (or --allow-network CIDR) and rerun "
                "with --retry-failed, or into a fresh --output: a plain rerun skips finished tars"
            )
        if self.tars_total and self.tars_skipped == self.tars_total and not self.rows_done:
            out.append(
                "every tar of this shard was already complete: nothing was fetched. --retry-failed re-fetches "
                "rows that failed for retryable or policy reasons; a fresh --output starts over"
            )
        return out

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
        if not mb_in:
            change = ""
        elif mb_out <= mb_in:
            change = f" ({mb_out / mb_in * 100:.0f} %, {mb_in - mb_out:.1f} MB saved by resizing)"
        else:  # upscaling or re-encoding small, well-compressed images makes them bigger
            change = f" ({mb_out / mb_in * 100:.0f} %, {mb_out - mb_in:.1f} MB more than downloaded)"
        lines += [
            f"  time        {self.elapsed:.1f} s, {self.images_per_second:.1f} images/s,"
            f" {self.rows_done / self.elapsed:.1f} rows/s, {mb_in / self.elapsed:.2f} MB/s downloaded",
            f"  bytes       {mb_in:.1f} MB downloaded -> {mb_out:.1f} MB written{change}",
        ]
        lines += [f"  hint        {hint}" for hint in self.hints()]
        if self.dns.format():
            lines.append(self.dns.format())
        return "\n".join(lines)
