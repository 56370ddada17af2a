"""Per-host politeness policies and their registry.

``SlotState`` builds one of each registered policy per host, in this order, and consults them all. A new
per-host policy is a module here (a ``HostPolicy`` subclass) plus one line in ``POLICIES``.
"""

from __future__ import annotations

from fetcher.policies.base import NEVER, HostPolicy, PolicyFactory, Tuning, Verdict
from fetcher.policies.breaker import Breaker, CircuitBreaker
from fetcher.policies.delay import AdaptiveDelay
from fetcher.policies.rate import RateLimit

POLICIES: dict[str, PolicyFactory] = {
    "rate": RateLimit,
    "delay": AdaptiveDelay,
    "breaker": CircuitBreaker,
}

__all__ = [
    "NEVER",
    "POLICIES",
    "AdaptiveDelay",
    "Breaker",
    "CircuitBreaker",
    "HostPolicy",
    "PolicyFactory",
    "RateLimit",
    "Tuning",
    "Verdict",
]
