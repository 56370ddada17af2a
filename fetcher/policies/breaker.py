"""Circuit breaker of one host: a host that keeps failing is cut off, probed, and given up for a while.

Connect failures, timeouts and 5xx answers without Retry-After count; any HTTP answer closes the breaker.
Open: no start until the cool-down ends, then one probe. A probe that fails kills the host for a
cool-down (its queued rows fail fast); one that ends without news (e.g. a refused URL) reopens it.
"""

from __future__ import annotations

from enum import Enum

from fetcher.hostlimits import SlotLimits
from fetcher.policies.base import NEVER, HostPolicy, Tuning, Verdict
from fetcher.records import FetchOutcome
from fetcher.retry import HOST_DOWN


class Breaker(Enum):
    """Circuit breaker state of a slot."""

    CLOSED = "closed"  # normal
    OPEN = "open"  # cooling down; the first request after ``cooldown_until`` is a probe
    PROBING = "probing"  # one probe in flight, nothing else starts
    DEAD = "dead"  # probe failed: queued rows fail fast until ``dead_until``, then probe again


class CircuitBreaker(HostPolicy):
    """Counts consecutive host-down outcomes (``failures``) and holds the breaker ``state``."""

    __slots__ = ("cooldown_until", "dead_until", "failures", "state", "tuning")

    def __init__(self, limits: SlotLimits, tuning: Tuning) -> None:
        self.tuning = tuning
        self.failures = 0
        self.state = Breaker.CLOSED
        self.cooldown_until = 0.0  # the open breaker's cool-down: gone as soon as an answer closes it
        self.dead_until = 0.0

    def ready_at(self, now: float) -> float:
        return self.cooldown_until if self.state is Breaker.OPEN else NEVER

    def has_room(self, inflight: int) -> bool:
        if self.state is Breaker.PROBING:
            return False
        if self.state in (Breaker.OPEN, Breaker.DEAD):
            return inflight == 0  # the next start is the single probe
        return True

    def is_dead(self, now: float) -> bool:
        return self.state is Breaker.DEAD and now < self.dead_until

    def on_start(self, now: float) -> None:
        if self.state in (Breaker.OPEN, Breaker.DEAD):
            self.state = Breaker.PROBING

    def on_answer(self, outcome: FetchOutcome, started: float, now: float, verdict: Verdict) -> None:
        status = outcome.http_status
        answered = status is not None  # any HTTP answer: the host is up
        # A 5xx without Retry-After says as little about recovery as a timeout: it feeds the breaker,
        # or an always-503 host would keep getting requests (at its adaptive delay) for ever.
        failing = status is not None and status >= 500 and outcome.retry_after is None
        if failing or (not answered and outcome.reason in HOST_DOWN):
            self._host_down(now, verdict)
        elif answered:
            self.failures = 0
            self.state = Breaker.CLOSED
        elif self.state is Breaker.PROBING:
            self.state = Breaker.OPEN  # probe ended without news (e.g. refused URL): probe again

    def _host_down(self, now: float, verdict: Verdict) -> None:
        self.failures += 1
        cooldown = self.tuning.breaker_cooldown
        if self.state is Breaker.PROBING:
            self.state = Breaker.DEAD
            self.dead_until = now + cooldown
            verdict.died = True
        elif self.state is Breaker.CLOSED and self._over_threshold():
            self.state = Breaker.OPEN
            self.cooldown_until = max(self.cooldown_until, now + cooldown)
            verdict.breaker_opened = True

    def _over_threshold(self) -> bool:
        threshold = self.tuning.breaker_threshold
        return bool(threshold) and self.failures >= threshold

    def mirror(self, failures: int, busy_until: float) -> None:
        """The box (or fleet) counts ``failures`` in a row for this host and holds it until ``busy_until``:
        when that opens the breaker, open it here too, so this process's rows know the host is failing."""
        self.failures = max(self.failures, failures)
        if self.state is Breaker.CLOSED and self._over_threshold():
            self.state = Breaker.OPEN
            self.cooldown_until = max(self.cooldown_until, busy_until)

    def give_up(self, until: float) -> None:
        """Another process on the box found the host dead: fail queued rows fast until ``until``."""
        self.state = Breaker.DEAD
        self.dead_until = max(self.dead_until, until)

    def is_delayed(self, now: float) -> bool:
        return self.state is not Breaker.CLOSED

    def is_clean(self, now: float) -> bool:
        return not self.is_delayed(now) and self.failures == 0
