"""Adaptive delay of one host (AutoThrottle-style) and the server's Retry-After pause.

Throttling answers (429/503) raise the gap between starts; good answers let it decay; other errors never
lower it. A Retry-After is the server's word: it pauses the host whatever the breaker does.
"""

from __future__ import annotations

from fetcher.hostlimits import SlotLimits
from fetcher.policies.base import NEVER, HostPolicy, Tuning, Verdict
from fetcher.records import FetchOutcome
from fetcher.retry import is_throttle

# First adaptive delay after a throttling answer; it doubles on each further one.
DELAY_STEP = 0.25
# Each good answer multiplies the delay by this; below DELAY_FLOOR it is dropped.
DELAY_DECAY = 0.9
DELAY_FLOOR = 0.02


class AdaptiveDelay(HostPolicy):
    """Seconds between starts (``delay``), raised by throttling, plus a Retry-After pause."""

    __slots__ = ("delay", "last_start", "pause_until", "raised_at", "tuning")

    def __init__(self, limits: SlotLimits, tuning: Tuning) -> None:
        self.tuning = tuning
        self.delay = 0.0
        self.last_start = NEVER
        self.raised_at = NEVER
        self.pause_until = 0.0

    def ready_at(self, now: float) -> float:
        return max(self.pause_until, self.last_start + self.delay)

    def on_start(self, now: float) -> None:
        self.last_start = now

    def on_answer(self, outcome: FetchOutcome, started: float, now: float, verdict: Verdict) -> None:
        if is_throttle(outcome):
            verdict.throttled = True
            # Raise once per round of requests: answers to requests sent before the last raise
            # carry no news, or a burst of 8 parallel 429s would double the delay 8 times.
            if started >= self.raised_at:
                self.delay = min(self.tuning.max_delay, max(DELAY_STEP, self.delay * 2))
                self.raised_at = now
            if outcome.retry_after is not None:
                wait = min(outcome.retry_after, self.tuning.max_retry_after)
                self.pause_until = max(self.pause_until, now + wait)
        elif outcome.ok and started >= self.raised_at:
            self.delay = self.delay * DELAY_DECAY if self.delay * DELAY_DECAY >= DELAY_FLOOR else 0.0

    def is_delayed(self, now: float) -> bool:
        return self.delay > 0 or self.pause_until > now
