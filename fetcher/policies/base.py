"""What every per-host politeness policy shares: the hooks a slot calls, the run-wide knobs, the verdict.

A policy is pure bookkeeping on an injected clock (time is a number passed in), so each is tested alone
with a fake clock. ``SlotState`` composes the registered policies and asks each in turn; the base class
answers "no opinion" to every hook, so a policy overrides only the hooks it cares about.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fetcher.hostlimits import SlotLimits
from fetcher.records import FetchOutcome

NEVER = float("-inf")  # a ready time that holds nothing back


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


class HostPolicy:
    """One per-host rule. The slot starts a request only when every policy agrees (latest ``ready_at``,
    all ``has_room``, none ``is_dead``), then tells each about the start and the answer."""

    __slots__ = ()

    def ready_at(self, now: float) -> float:
        """Earliest time this policy lets the next request start (``NEVER``: no limit)."""
        return NEVER

    def has_room(self, inflight: int) -> bool:
        """False to hold back another request while ``inflight`` are out (the slot checks concurrency)."""
        return True

    def is_dead(self, now: float) -> bool:
        """True while queued requests should fail fast instead of being sent."""
        return False

    def on_start(self, now: float) -> None:
        """A request starts now."""

    def on_answer(self, outcome: FetchOutcome, started: float, now: float, verdict: Verdict) -> None:
        """Learn from the answer of a request that started at ``started``; note news in ``verdict``."""

    def is_delayed(self, now: float) -> bool:
        """True while this policy slows the host down (the scheduler reports such hosts as struggling)."""
        return False

    def is_clean(self, now: float) -> bool:
        """True when forgetting this policy's state loses nothing."""
        return not self.is_delayed(now)


# A registry entry: builds one host's policy from its limits and the run's tuning.
PolicyFactory = Callable[[SlotLimits, Tuning], HostPolicy]
