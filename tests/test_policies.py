"""Each per-host policy alone on a fake clock (time is a number passed in), and the registry: a policy
added to ``POLICIES`` is consulted by every ``SlotState`` with no other change."""

from __future__ import annotations

import pytest

from fetcher.hostlimits import SlotLimits
from fetcher.policies import (
    NEVER,
    POLICIES,
    AdaptiveDelay,
    Breaker,
    CircuitBreaker,
    HostPolicy,
    RateLimit,
    Tuning,
    Verdict,
)
from fetcher.policies.delay import DELAY_STEP
from fetcher.records import FetchOutcome, Reason, reason_for_http_status
from fetcher.slot import SlotState

OK = FetchOutcome(body=b"x", http_status=200)


def http(code: int, retry_after: float | None = None) -> FetchOutcome:
    return FetchOutcome(reason=reason_for_http_status(code), http_status=code, retry_after=retry_after)


def fail(reason: Reason) -> FetchOutcome:
    return FetchOutcome(reason=reason)


def answer(p: HostPolicy, outcome: FetchOutcome, started: float, now: float) -> Verdict:
    v = Verdict()
    p.on_answer(outcome, started, now, v)
    return v


# -- rate ----------------------------------------------------------------------------------------------
def test_rate_lets_a_burst_through_then_spaces_starts() -> None:
    p = RateLimit(SlotLimits(100, rate=2.0, burst=3), Tuning())
    starts = []
    for _ in range(5):
        t = p.ready_at(0.0)
        starts.append(max(t, 0.0))
        p.on_start(max(t, 0.0))
    assert starts == [0.0, 0.0, 0.0, 0.5, 1.0]
    assert not p.is_clean(1.0) and p.is_clean(p.tat) and not p.is_delayed(0.0)


def test_rate_zero_holds_nothing_back() -> None:
    p = RateLimit(SlotLimits(4), Tuning())
    for _ in range(50):
        p.on_start(0.0)
    assert p.ready_at(0.0) == NEVER and p.is_clean(0.0)


# -- adaptive delay and Retry-After --------------------------------------------------------------------
def test_delay_raised_once_per_round_doubled_capped_and_decayed() -> None:
    p = AdaptiveDelay(SlotLimits(8), Tuning(max_delay=1.0))
    p.on_start(0.0)
    assert all(answer(p, http(429), 0.0, 0.1).throttled for _ in range(8))
    assert p.delay == DELAY_STEP and p.ready_at(0.1) == DELAY_STEP  # one raise for a round of 8
    answer(p, http(503), 0.05, 0.2)  # sent before the raise: no news
    assert p.delay == DELAY_STEP
    for k in range(4):
        answer(p, http(429), 1.0 + k, 1.0 + k)
    assert p.delay == 1.0  # doubled, then capped by max_delay
    answer(p, fail(Reason.TIMEOUT), 9.0, 9.0)
    answer(p, http(404), 9.0, 9.0)
    assert p.delay == 1.0 and p.is_delayed(9.0)  # errors never lower it
    for k in range(100):
        answer(p, OK, 10.0 + k, 10.0 + k)
    assert p.delay == 0.0 and not p.is_delayed(200.0) and p.is_clean(200.0)


def test_retry_after_pauses_capped_and_never_shortens() -> None:
    p = AdaptiveDelay(SlotLimits(8), Tuning(max_retry_after=10.0))
    answer(p, http(429, retry_after=3.0), 0.0, 1.0)
    assert p.pause_until == 4.0 and p.ready_at(1.0) == 4.0
    answer(p, http(503, retry_after=3600.0), 1.0, 2.0)
    assert p.pause_until == 12.0
    answer(p, http(429, retry_after=1.0), 2.0, 3.0)
    assert p.pause_until == 12.0
    answer(p, http(500, retry_after=50.0), 3.0, 3.0)  # not a throttle: no pause
    assert p.pause_until == 12.0 and p.is_delayed(11.9)


# -- breaker -------------------------------------------------------------------------------------------
def breaker(threshold: int = 3, cooldown: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker(SlotLimits(4), Tuning(breaker_threshold=threshold, breaker_cooldown=cooldown))


def open_it(p: CircuitBreaker, now: float = 1.0) -> None:
    opened = [answer(p, fail(Reason.CONNECT_ERROR), 0.0, now).breaker_opened for _ in range(3)]
    assert opened == [False, False, True] and p.state is Breaker.OPEN


def test_breaker_opens_probes_dies_and_closes() -> None:
    p = breaker()
    assert p.has_room(3) and p.ready_at(0.0) == NEVER and p.is_clean(0.0)
    open_it(p)
    assert p.ready_at(1.0) == 11.0 and p.is_delayed(1.0) and not p.is_clean(1.0)
    assert p.has_room(0) and not p.has_room(1)  # the next start is the single probe
    p.on_start(11.0)
    assert p.state is Breaker.PROBING and not p.has_room(0)
    assert answer(p, fail(Reason.TIMEOUT), 11.0, 12.0).died
    assert p.is_dead(21.9) and not p.is_dead(22.0) and p.has_room(0)
    p.on_start(22.0)
    answer(p, http(404), 22.0, 22.5)  # any HTTP answer: the host is up
    assert p.state is Breaker.CLOSED and p.failures == 0 and p.ready_at(23.0) == NEVER and p.is_clean(23.0)


def test_breaker_probe_without_news_reopens_and_answers_end_the_cooldown() -> None:
    p = breaker()
    open_it(p)
    p.on_start(11.0)
    answer(p, fail(Reason.BLOCKED_ADDRESS), 11.0, 11.5)  # refused URL: says nothing about the host
    assert p.state is Breaker.OPEN and p.failures == 3
    answer(p, OK, 0.5, 12.0)  # a late answer closes it: the cool-down no longer holds
    assert p.state is Breaker.CLOSED and p.ready_at(12.0) == NEVER


@pytest.mark.parametrize(
    ("outcome", "counts"),
    [(http(500), True), (http(503), True), (http(503, retry_after=5.0), False), (fail(Reason.DNS_TIMEOUT), True),
     (fail(Reason.DNS_NXDOMAIN), False), (http(429), False)],
)  # fmt: skip
def test_breaker_counts_host_down_and_5xx_without_retry_after(outcome: FetchOutcome, counts: bool) -> None:
    p = breaker(threshold=1)
    answer(p, outcome, 0.0, 0.0)
    assert (p.state is Breaker.OPEN) is counts


def test_breaker_threshold_zero_never_opens() -> None:
    p = breaker(threshold=0)
    for _ in range(50):
        answer(p, fail(Reason.TIMEOUT), 0.0, 0.0)
    p.mirror(99, 60.0)
    assert p.state is Breaker.CLOSED and p.failures == 99 and not p.is_clean(0.0)


def test_breaker_mirror_and_give_up_follow_the_box() -> None:
    p = breaker()
    p.mirror(2, 30.0)
    assert p.state is Breaker.CLOSED and p.failures == 2
    p.mirror(5, 30.0)  # the box's count crossed the threshold: open here too, until the box's time
    assert p.state is Breaker.OPEN and p.cooldown_until == 30.0 and p.failures == 5
    p.give_up(40.0)
    assert p.is_dead(39.0) and not p.is_dead(40.0)
    p.give_up(35.0)  # never shortened
    assert p.dead_until == 40.0


# -- the registry --------------------------------------------------------------------------------------
class Curfew(HostPolicy):
    """Test-only policy: no start before ``until``, at most one request in flight, counts answers."""

    __slots__ = ("answers", "until")

    def __init__(self, limits: SlotLimits, tuning: Tuning) -> None:
        self.until = 50.0
        self.answers = 0

    def ready_at(self, now: float) -> float:
        return self.until

    def has_room(self, inflight: int) -> bool:
        return inflight == 0

    def on_answer(self, outcome: FetchOutcome, started: float, now: float, verdict: Verdict) -> None:
        self.answers += 1

    def is_delayed(self, now: float) -> bool:
        return now < self.until


def test_a_registered_policy_is_consulted_by_every_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    limits, tuning = SlotLimits(4, rate=1.0, burst=1), Tuning()
    plain = SlotState(limits, tuning)
    assert plain.ready_at(0.0) == 0.0 and plain.is_clean(0.0)
    monkeypatch.setitem(POLICIES, "curfew", Curfew)  # the whole change: one registry entry
    s = SlotState(limits, tuning)
    assert [type(p) for p in s.policies] == [RateLimit, AdaptiveDelay, CircuitBreaker, Curfew]
    assert s.ready_at(0.0) == 50.0 and s.is_delayed(0.0) and not s.is_clean(0.0)
    s.start(50.0)
    assert not s.has_room()  # the curfew's veto, though concurrency is 4
    assert s.ready_at(50.0) == 51.0  # composed with the built-in rate limit: the latest wins
    s.record(OK, 50.0, 50.2)
    assert s.part(Curfew).answers == 1 and s.has_room() and not s.is_delayed(60.0)
    monkeypatch.undo()
    assert SlotState(limits, tuning).ready_at(0.0) == 0.0


def test_slot_keeps_its_named_state_in_the_policies() -> None:
    s = SlotState(SlotLimits(2), Tuning(breaker_threshold=1))
    s.start(0.0)
    s.record(http(429, retry_after=2.0), 0.0, 1.0)
    assert (s.delay, s.pause_until, s.raised_at, s.last_start) == (DELAY_STEP, 3.0, 1.0, 0.0)
    s.failures, s.delay = 4, 0.5  # the box's shared view, as the scheduler writes it
    assert s.part(CircuitBreaker).failures == 4 and s.part(AdaptiveDelay).delay == 0.5
    s.start(3.0)
    s.record(fail(Reason.TIMEOUT), 3.0, 4.0)
    assert s.breaker is Breaker.OPEN and s.cooldown_until == 64.0 and s.ready_at(4.0) == 64.0
