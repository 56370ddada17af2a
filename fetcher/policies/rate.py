"""Rate limit of one host: GCRA, a token bucket written as one timestamp.

Request k may start at ``tat - (burst-1)/rate`` and each start pushes ``tat`` (the theoretical arrival
time) by ``1/rate``, so no window of W seconds holds more than ``rate*W + burst`` starts.
"""

from __future__ import annotations

from fetcher.hostlimits import SlotLimits
from fetcher.policies.base import NEVER, HostPolicy, Tuning


class RateLimit(HostPolicy):
    """``--per-host-rate`` / burst; a rate of 0 means no limit."""

    __slots__ = ("limits", "tat")

    def __init__(self, limits: SlotLimits, tuning: Tuning) -> None:
        self.limits = limits
        self.tat = 0.0

    def ready_at(self, now: float) -> float:
        if self.limits.rate <= 0:
            return NEVER
        return self.tat - (self.limits.burst - 1) / self.limits.rate

    def on_start(self, now: float) -> None:
        if self.limits.rate > 0:
            self.tat = max(self.tat, now) + 1.0 / self.limits.rate

    def is_clean(self, now: float) -> bool:
        return self.tat <= now  # a full bucket: a fresh slot would allow the same
