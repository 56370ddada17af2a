"""Retry policy: which fetch failures are retried, how many times, and how long to wait first.

tenacity supplies the policy pieces (retry predicate, stop rule, wait with jitter). We only ask it for
*decisions*; its own loop would sleep inside the request, holding a concurrency permit, so the
scheduler re-queues the job with a not-before time instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import tenacity

from fetcher.records import FetchOutcome, reasons_where

# Transient by nature: the same request may well work a moment later (facts: fetcher/records.py).
RETRYABLE = reasons_where(retry=True)

# Answers that mean "slow down": they raise the host's adaptive delay.
THROTTLING_STATUSES = frozenset({429, 503})

# Failures that say the host itself is unreachable (no HTTP answer at all); they feed the breaker.
HOST_DOWN = reasons_where(host_down=True)


def is_retryable(outcome: FetchOutcome) -> bool:
    """True for failures worth another try (never 403/404/410, decode errors or policy refusals)."""
    return not outcome.ok and outcome.reason in RETRYABLE


def is_throttle(outcome: FetchOutcome) -> bool:
    """True when the server asked us to slow down (429, 503)."""
    return outcome.http_status in THROTTLING_STATUSES


@dataclass(frozen=True)
class RetryDecision:
    """Retry or not, and the earliest moment (seconds from now) the retry may start."""

    retry: bool
    wait: float = 0.0


class RetryPolicy:
    """Retry decisions from tenacity strategies, without tenacity's sleeping loop.

    ``retries`` is the number of retries after the first attempt. The wait is "equal jitter":
    half of ``base * 2**(n-1)`` fixed plus a random part up to the other half (capped at ``cap``),
    so retries spread out yet never come back sooner than half the nominal backoff.
    A ``Retry-After`` from the server is a floor for the wait, itself capped at ``max_retry_after``.
    """

    def __init__(self, retries: int, base: float, cap: float, max_retry_after: float) -> None:
        self.max_retry_after = max_retry_after
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_result(is_retryable),
            stop=tenacity.stop_after_attempt(retries + 1),
            wait=tenacity.wait_exponential(multiplier=base / 2, max=cap / 2)
            + tenacity.wait_random_exponential(multiplier=base / 2, max=cap / 2),
        )

    def decide(self, outcome: FetchOutcome, attempts: int) -> RetryDecision:
        """Decide after attempt number ``attempts`` (1-based) ended with ``outcome``."""
        if outcome.ok:
            return RetryDecision(False)  # the common case, without building tenacity's call state
        state = tenacity.RetryCallState(self._retrying, None, (), {})
        state.attempt_number = attempts
        state.set_result(outcome)
        r = self._retrying
        if not r.retry(state) or r.stop(state):
            return RetryDecision(False)
        wait = float(r.wait(state))
        if outcome.retry_after is not None:
            wait = max(wait, min(outcome.retry_after, self.max_retry_after))
        return RetryDecision(True, wait)
