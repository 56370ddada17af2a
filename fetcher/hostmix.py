"""Notice when a list is mostly one host: politeness then caps the whole run at that host's slot
(``--per-host-concurrency``, 8 by default) whatever ``--concurrency`` / ``--thread_count`` says, and
a user who raised ``--thread_count`` deserves to hear it once, with the flag that changes it.
"""

from __future__ import annotations

import logging
from collections import Counter

from fetcher.hostlimits import HostLimits

log = logging.getLogger(__name__)

SAMPLE_ROWS = 1000  # enough to tell "mostly one host" at the start, cheap to count
DOMINANT_SHARE = 0.5


class HostMix:
    """Counts the politeness keys of the first ``sample`` scheduled rows; says once if one dominates."""

    def __init__(self, concurrency: int, limits: HostLimits, sample: int = SAMPLE_ROWS) -> None:
        self.concurrency = concurrency
        self.limits = limits
        self.sample = sample
        self.counts: Counter[str] = Counter()
        self.note: str | None = None
        self._decided = False

    def see(self, host: str) -> None:
        """Count one scheduled row's host; decide after ``sample`` rows."""
        if self._decided:
            return
        self.counts[host] += 1
        if self.counts.total() >= self.sample:
            self.decide()

    def decide(self) -> str | None:
        """Make (once) and log the note, if one host dominates and its cap is below --concurrency."""
        if self._decided:
            return self.note
        self._decided = True
        seen = self.counts.total()
        if not seen:
            return None
        host, n = self.counts.most_common(1)[0]
        cap = self.limits.for_key(host).concurrency
        if n / seen >= DOMINANT_SHARE and cap < self.concurrency:
            self.note = (
                f"{100 * n / seen:.0f} % of the first {seen} rows are on {host}: at most {cap} requests run at once "
                f"there (--per-host-concurrency, or --host-limits), whatever --concurrency {self.concurrency} says; "
                "raise it only as far as that host allows"
            )
            log.info("%s", self.note)
        return self.note
