"""One host's politeness state: the registered per-host policies (rate, delay, breaker, ...) composed.

Pure bookkeeping with the time passed in, so it is tested with a fake clock; the Scheduler owns the
queues and the event loop. A slot says *when* its next request may start (``ready_at``), whether one
more may be in flight (``has_room``) and learns from each answer (``record``). The rules themselves live
in ``fetcher.policies``, one module each; the slot asks every registered policy and owns only the count
of requests in flight against ``--per-host-concurrency``.
"""

from __future__ import annotations

from typing import TypeVar

from fetcher.hostlimits import SlotLimits
from fetcher.policies import POLICIES, AdaptiveDelay, Breaker, CircuitBreaker, HostPolicy, RateLimit, Tuning, Verdict
from fetcher.policies.delay import DELAY_STEP
from fetcher.records import FetchOutcome

__all__ = ["DELAY_STEP", "Breaker", "SlotState", "Tuning", "Verdict"]

P = TypeVar("P", bound=HostPolicy)


class SlotState:
    """Timing state of one politeness key: one instance of each policy in ``POLICIES``, in order.

    The named attributes (``tat``, ``delay``, ``pause_until``, ``breaker``, ``failures``, ...) read the
    built-in policies' state, for the scheduler's box/fleet sharing and for tests.
    """

    # A scheduler keeps up to 100,000 idle slots: no per-instance dict.
    __slots__ = ("_breaker", "_delay", "_rate", "inflight", "limits", "policies", "tuning")

    def __init__(self, limits: SlotLimits, tuning: Tuning) -> None:
        self.limits = limits
        self.tuning = tuning
        self.inflight = 0
        self.policies: list[HostPolicy] = [make(limits, tuning) for make in POLICIES.values()]
        self._rate = self.part(RateLimit)
        self._delay = self.part(AdaptiveDelay)
        self._breaker = self.part(CircuitBreaker)

    def part(self, kind: type[P]) -> P:
        """This slot's policy of type ``kind``."""
        for p in self.policies:
            if isinstance(p, kind):
                return p
        raise LookupError(f"no {kind.__name__} among the registered per-host policies")

    # -- when may the next request start -------------------------------------------------------
    def ready_at(self, now: float) -> float:
        """Earliest time the next request may start (concurrency aside): the latest any policy allows."""
        t = now
        for p in self.policies:
            r = p.ready_at(now)
            if r > t:
                t = r
        return t

    def has_room(self) -> bool:
        """True when another request may be in flight now."""
        n = self.inflight
        # List comprehensions, not generators: with a handful of policies they cost half as much here.
        return n < self.limits.concurrency and all([p.has_room(n) for p in self.policies])

    def is_dead(self, now: float) -> bool:
        """True while queued requests should fail fast instead of being sent."""
        return any([p.is_dead(now) for p in self.policies])

    def start(self, now: float) -> None:
        """A request starts now."""
        self.inflight += 1
        for p in self.policies:
            p.on_start(now)

    # -- learning from answers -----------------------------------------------------------------
    def record(self, outcome: FetchOutcome, started: float, now: float) -> Verdict:
        """Update every policy from the answer of a request that started at ``started``."""
        self.inflight -= 1
        v = Verdict()
        for p in self.policies:
            p.on_answer(outcome, started, now, v)
        return v

    def mirror(self, failures: int, busy_until: float) -> None:
        """The box (or fleet) counts ``failures`` in a row for this host and holds it until ``busy_until``:
        when that opens the breaker, open it here too, so this process's rows know the host is failing."""
        self._breaker.mirror(failures, busy_until)

    def give_up(self, until: float) -> None:
        """Another process on the box found the host dead: fail queued rows fast until ``until``."""
        self._breaker.give_up(until)

    # -- bookkeeping ---------------------------------------------------------------------------
    def is_delayed(self, now: float) -> bool:
        """True while the host is slowed down (adaptive delay, Retry-After pause or breaker)."""
        return any([p.is_delayed(now) for p in self.policies])

    def is_clean(self, now: float) -> bool:
        """True when forgetting this slot loses nothing (full bucket, no delay, no failures)."""
        return all([p.is_clean(now) for p in self.policies])

    # -- the built-in policies' state under the names the scheduler and tests use ---------------
    @property
    def tat(self) -> float:
        return self._rate.tat

    @property
    def delay(self) -> float:
        return self._delay.delay

    @delay.setter
    def delay(self, value: float) -> None:
        self._delay.delay = value

    @property
    def last_start(self) -> float:
        return self._delay.last_start

    @property
    def raised_at(self) -> float:
        return self._delay.raised_at

    @property
    def pause_until(self) -> float:
        return self._delay.pause_until

    @property
    def failures(self) -> int:
        return self._breaker.failures

    @failures.setter
    def failures(self, value: int) -> None:
        self._breaker.failures = value

    @property
    def breaker(self) -> Breaker:
        return self._breaker.state

    @property
    def cooldown_until(self) -> float:
        return self._breaker.cooldown_until

    @property
    def dead_until(self) -> float:
        return self._breaker.dead_until
