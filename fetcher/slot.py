"""One host's politeness state: rate limit, adaptive delay and circuit breaker.

Pure bookkeeping with the time passed in, so it is tested with a fake clock; the Scheduler owns the
queues and the event loop. A slot says *when* its next request may start (``ready_at``) and learns
from each answer (``record``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from fetcher.hostlimits import SlotLimits
from fetcher.records import FetchOutcome
from fetcher.retry import HOST_DOWN, is_throttle

# First adaptive delay after a throttling answer; it doubles on each further one.
DELAY_STEP = 0.25
# Each good answer multiplies the delay by this; below DELAY_FLOOR it is dropped.
DELAY_DECAY = 0.9
DELAY_FLOOR = 0.02


class Breaker(Enum):
    """Circuit breaker state of a slot."""

    CLOSED = "closed"  # normal
    OPEN = "open"  # cooling down; the first request after ``cooldown_until`` is a probe
    PROBING = "probing"  # one probe in flight, nothing else starts
    DEAD = "dead"  # probe failed: queued rows fail fast until ``dead_until``, then probe again


@dataclass(frozen=True)
class Tuning:
    """Run-wide knobs of the adaptive delay and the breaker."""

    max_delay: float = 30.0
    max_retry_after: float = 120.0
    breaker_threshold: int = 5  # 0 disables the breaker
    breaker_cooldown: float = 60.0


@dataclass
class Verdict:
    """What one answer changed, for the scheduler's counters."""

    throttled: bool = False
    breaker_opened: bool = False
    died: bool = False


class SlotState:
    """Timing state of one politeness key.

    Rate limit: GCRA (a token bucket written as one timestamp): request k may start at
    ``tat - (burst-1)/rate``, and each start pushes ``tat`` by ``1/rate``, so no window of W seconds
    holds more than ``rate*W + burst`` starts.
    """

    def __init__(self, limits: SlotLimits, tuning: Tuning) -> None:
        self.limits = limits
        self.tuning = tuning
        self.tat = 0.0
        self.delay = 0.0  # adaptive: seconds between starts, raised by 429/503
        self.last_start = float("-inf")
        self.pause_until = 0.0  # Retry-After (the server's word: it holds whatever the breaker does)
        self.cooldown_until = 0.0  # the open breaker's cool-down: gone as soon as an answer closes it
        self.raised_at = float("-inf")
        self.failures = 0  # consecutive host-down outcomes
        self.breaker = Breaker.CLOSED
        self.dead_until = 0.0
        self.inflight = 0

    # -- when may the next request start -------------------------------------------------------
    def ready_at(self, now: float) -> float:
        """Earliest time the next request may start (concurrency aside)."""
        t = max(self.pause_until, self.last_start + self.delay)
        if self.breaker is Breaker.OPEN:
            t = max(t, self.cooldown_until)
        if self.limits.rate > 0:
            t = max(t, self.tat - (self.limits.burst - 1) / self.limits.rate)
        return max(t, now)

    def has_room(self) -> bool:
        """True when another request may be in flight now."""
        if self.breaker is Breaker.PROBING:
            return False
        if self.breaker in (Breaker.OPEN, Breaker.DEAD):
            return self.inflight == 0  # the next start is the single probe
        return self.inflight < self.limits.concurrency

    def is_dead(self, now: float) -> bool:
        """True while queued requests should fail fast instead of being sent."""
        return self.breaker is Breaker.DEAD and now < self.dead_until

    def start(self, now: float) -> None:
        """A request starts now."""
        if self.limits.rate > 0:
            self.tat = max(self.tat, now) + 1.0 / self.limits.rate
        self.last_start = now
        self.inflight += 1
        if self.breaker in (Breaker.OPEN, Breaker.DEAD):
            self.breaker = Breaker.PROBING

    # -- learning from answers -----------------------------------------------------------------
    def record(self, outcome: FetchOutcome, started: float, now: float) -> Verdict:
        """Update delay and breaker from the answer of a request that started at ``started``."""
        self.inflight -= 1
        v = Verdict()
        answered = outcome.http_status is not None  # any HTTP answer: the host is up
        if is_throttle(outcome):
            v.throttled = True
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
        # A 5xx without Retry-After says as little about recovery as a timeout: it feeds the breaker,
        # or an always-503 host would keep getting requests (at its adaptive delay) for ever.
        failing = outcome.http_status is not None and outcome.http_status >= 500 and outcome.retry_after is None
        if failing or (not answered and outcome.reason in HOST_DOWN):
            self._host_down(now, v)
        elif answered:
            self.failures = 0
            self.breaker = Breaker.CLOSED
        elif self.breaker is Breaker.PROBING:
            self.breaker = Breaker.OPEN  # probe ended without news (e.g. refused URL): probe again
        return v

    def _host_down(self, now: float, v: Verdict) -> None:
        self.failures += 1
        cooldown = self.tuning.breaker_cooldown
        if self.breaker is Breaker.PROBING:
            self.breaker = Breaker.DEAD
            self.dead_until = now + cooldown
            v.died = True
        elif (
            self.breaker is Breaker.CLOSED
            and self.tuning.breaker_threshold
            and self.failures >= self.tuning.breaker_threshold
        ):
            self.breaker = Breaker.OPEN
            self.cooldown_until = max(self.cooldown_until, now + cooldown)
            v.breaker_opened = True

    def mirror(self, failures: int, busy_until: float) -> None:
        """The box (or fleet) counts ``failures`` in a row for this host and holds it until ``busy_until``:
        when that opens the breaker, open it here too, so this process's rows know the host is failing."""
        self.failures = max(self.failures, failures)
        threshold = self.tuning.breaker_threshold
        if self.breaker is Breaker.CLOSED and threshold and self.failures >= threshold:
            self.breaker = Breaker.OPEN
            self.cooldown_until = max(self.cooldown_until, busy_until)

    def give_up(self, until: float) -> None:
        """Another process on the box found the host dead: fail queued rows fast until ``until``."""
        self.breaker = Breaker.DEAD
        self.dead_until = max(self.dead_until, until)

    # -- bookkeeping ---------------------------------------------------------------------------
    def is_delayed(self, now: float) -> bool:
        """True while the host is slowed down (adaptive delay, Retry-After pause or breaker)."""
        return self.delay > 0 or self.pause_until > now or self.breaker is not Breaker.CLOSED

    def is_clean(self, now: float) -> bool:
        """True when forgetting this slot loses nothing (full bucket, no delay, no failures)."""
        return self.tat <= now and not self.is_delayed(now) and self.failures == 0
