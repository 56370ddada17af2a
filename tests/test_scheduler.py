"""Scheduler pieces in isolation: slot timing on a fake clock, retry policy, politeness keys, host limits,
and the Scheduler's permits and read-ahead on the real event loop (no network)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fetcher.config import load_config
from fetcher.hostkey import key_function, registrable_domain
from fetcher.hostlimits import HostLimits, SlotLimits
from fetcher.options import ConfigError
from fetcher.records import FetchOutcome, InputRow, Reason, reason_for_http_status
from fetcher.retry import RetryPolicy
from fetcher.scheduler import Job, Scheduler, SchedulerOptions
from fetcher.slot import DELAY_STEP, Breaker, SlotState, Tuning

OK = FetchOutcome(body=b"x", http_status=200)


def http(code: int, retry_after: float | None = None) -> FetchOutcome:
    return FetchOutcome(reason=reason_for_http_status(code), http_status=code, retry_after=retry_after)


def fail(reason: Reason) -> FetchOutcome:
    return FetchOutcome(reason=reason)


# -- slot timing (fake clock: time is just a number passed in) ---------------------------------------
def run_greedy(slot: SlotState, until: float, step: float = 0.001) -> list[float]:
    """Start a request whenever the slot allows, answering each at once; returns start times."""
    starts: list[float] = []
    now = 0.0
    while now < until:
        if slot.ready_at(now) <= now and slot.has_room():
            slot.start(now)
            starts.append(now)
            slot.record(OK, now, now)
        else:
            now = max(now + step, slot.ready_at(now))
    return starts


@pytest.mark.parametrize(("rate", "burst"), [(5.0, 1), (5.0, 3), (0.5, 2), (40.0, 4)])
def test_gcra_window_never_exceeds_rate_plus_burst(rate: float, burst: int) -> None:
    starts = run_greedy(SlotState(SlotLimits(100, rate, burst), Tuning()), until=20)
    for t in starts:
        assert sum(1 for u in starts if t <= u <= t + 1.0) <= rate + burst
    # and it is not slower than the rate either
    assert len(starts) >= rate * 20 + burst - 1


def test_throttle_raises_delay_once_per_round_and_good_answers_decay_it() -> None:
    s = SlotState(SlotLimits(8), Tuning(max_delay=4.0))
    for _ in range(8):  # a burst of 8 parallel requests, all answered 429
        s.start(0.0)
    verdicts = [s.record(http(429), started=0.0, now=0.1) for _ in range(8)]
    assert all(v.throttled for v in verdicts)
    assert s.delay == DELAY_STEP  # raised once, not 8 times
    s.start(0.5)
    s.record(http(503), started=0.5, now=0.6)
    assert s.delay == 2 * DELAY_STEP
    for k in range(20):  # errors never lower it
        s.start(1 + k)
        s.record(fail(Reason.TIMEOUT) if k % 2 else http(404), started=1 + k, now=1 + k)
    assert s.delay == 2 * DELAY_STEP
    for k in range(6):
        s.start(30 + k)
        s.record(http(429), started=30 + k, now=30 + k)
    assert s.delay == 4.0  # capped by --max-host-delay
    delays = []
    for k in range(200):
        s.start(40 + k)
        s.record(OK, started=40 + k, now=40 + k)
        delays.append(s.delay)
    assert delays == sorted(delays, reverse=True) and delays[-1] == 0.0
    assert s.ready_at(300.0) == 300.0 and not s.is_delayed(300.0)


def test_retry_after_pauses_the_host_capped() -> None:
    s = SlotState(SlotLimits(8), Tuning(max_retry_after=10.0))
    s.start(0.0)
    s.record(http(429, retry_after=3.0), started=0.0, now=1.0)
    assert s.ready_at(1.0) == 4.0
    s.start(4.0)
    s.record(http(503, retry_after=3600.0), started=4.0, now=5.0)
    assert s.ready_at(5.0) == 15.0


def test_breaker_opens_probes_dies_and_recovers() -> None:
    s = SlotState(SlotLimits(4), Tuning(breaker_threshold=3, breaker_cooldown=10.0))
    for _ in range(3):
        s.start(0.0)
    opened = [s.record(fail(Reason.CONNECT_ERROR), 0.0, 1.0).breaker_opened for _ in range(3)]
    assert opened == [False, False, True] and s.breaker is Breaker.OPEN
    assert s.ready_at(1.0) == 11.0
    s.start(11.0)  # the probe
    assert s.breaker is Breaker.PROBING and not s.has_room()
    assert s.record(fail(Reason.TIMEOUT), 11.0, 12.0).died
    assert s.is_dead(12.0) and s.is_dead(21.9) and not s.is_dead(22.0)
    s.start(22.0)  # next probe after the cool-down
    s.record(http(404), 22.0, 22.1)  # any HTTP answer: the host is up again
    assert s.breaker is Breaker.CLOSED and s.failures == 0 and s.has_room()


@pytest.mark.parametrize("answer", [http(404), http(200), http(503, retry_after=5.0), http(429)])
def test_http_answers_reset_the_failure_count(answer: FetchOutcome) -> None:
    s = SlotState(SlotLimits(4), Tuning(breaker_threshold=3))
    for k in range(10):
        s.start(k)
        s.record(fail(Reason.TIMEOUT) if k % 2 else answer, k, k)
    assert s.breaker is Breaker.CLOSED and s.failures <= 1


@pytest.mark.parametrize("answer", [http(500), http(503), http(502), fail(Reason.TIMEOUT)])
def test_timeouts_and_5xx_without_retry_after_open_the_breaker(answer: FetchOutcome) -> None:
    # An always-503 host (no Retry-After) must stop getting requests, as a dead one does.
    s = SlotState(SlotLimits(4), Tuning(breaker_threshold=3))
    opened = []
    for k in range(3):
        s.start(k)
        opened.append(s.record(answer, k, k).breaker_opened)
    assert opened == [False, False, True] and s.breaker is Breaker.OPEN


# -- retry policy --------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [403, 404, 410, 400])
def test_permanent_http_errors_not_retried(code: int) -> None:
    assert not RetryPolicy(5, 1.0, 60.0, 120.0).decide(http(code), 1).retry


@pytest.mark.parametrize(
    "reason", [Reason.DECODE_ERROR, Reason.NOT_AN_IMAGE, Reason.BLOCKED_ADDRESS, Reason.BODY_TOO_LARGE]
)
def test_other_failures_not_retried(reason: Reason) -> None:
    assert not RetryPolicy(5, 1.0, 60.0, 120.0).decide(fail(reason), 1).retry


@pytest.mark.parametrize(
    "outcome",
    [http(408), http(429), http(500), http(503), fail(Reason.TIMEOUT), fail(Reason.CONNECT_ERROR)],
    ids=["408", "429", "500", "503", "timeout", "connect"],
)
def test_transient_failures_retried_with_growing_jittered_backoff(outcome: FetchOutcome) -> None:
    policy = RetryPolicy(3, 1.0, 6.0, 120.0)
    for attempt in (1, 2, 3):
        waits = [policy.decide(outcome, attempt).wait for _ in range(200)]
        nominal = min(6.0, 2 ** (attempt - 1))
        assert all(nominal / 2 <= w <= nominal for w in waits)
        assert len(set(waits)) > 100  # jitter
    assert not policy.decide(outcome, 4).retry  # 3 retries after the first try, then stop


def test_retry_after_is_a_capped_floor() -> None:
    policy = RetryPolicy(2, 0.1, 60.0, max_retry_after=30.0)
    assert policy.decide(http(429, retry_after=7.0), 1).wait == 7.0
    assert policy.decide(http(503, retry_after=9999.0), 1).wait == 30.0
    assert not RetryPolicy(0, 0.1, 60.0, 30.0).decide(http(429, retry_after=1.0), 1).retry


# -- politeness keys and host limits -------------------------------------------------------------------
def test_politeness_keys() -> None:
    host, domain = key_function("host"), key_function("domain")
    assert host("https://CDN1.Example.co.uk/a.jpg") == "cdn1.example.co.uk"
    assert domain("https://CDN1.Example.co.uk/a.jpg") == "example.co.uk"
    assert domain("https://images.pexels.com/x") == domain("https://www.pexels.com/y") == "pexels.com"
    assert domain("https://alice.github.io/x") != domain("https://bob.github.io/x")
    assert domain("http://127.0.0.2:8080/x") == "127.0.0.2"
    assert domain("http://[::1]/x") == "::1"
    assert registrable_domain("localhost") == "localhost"
    assert registrable_domain("co.uk") == "co.uk"
    with pytest.raises(ValueError, match="politeness key"):
        key_function("url")


def test_host_limits_file_toml_and_json(tmp_path: Path) -> None:
    default = SlotLimits(8, 0.0, 2)
    toml = tmp_path / "limits.toml"
    toml.write_text('["pexels.com"]\nrate = 0.5\nconcurrency = 2\n\n["img.pexels.com"]\nburst = 1\n')
    limits = HostLimits.load(str(toml), default)
    assert limits.for_key("images.pexels.com") == SlotLimits(2, 0.5, 2)
    assert limits.for_key("img.pexels.com") == SlotLimits(8, 0.0, 1)  # longest match, over the defaults
    assert limits.for_key("example.com") == default
    js = tmp_path / "limits.json"
    js.write_text(json.dumps({"example.org": {"rate": 3}}))
    assert HostLimits.load(str(js), default).for_key("a.example.org").rate == 3.0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('["a.com"]\nrate = -1\n', "a.com: rate must be >= 0"),
        ('["a.com"]\nspeed = 1\n', "unknown field 'speed'"),
        ('["a.com"]\nconcurrency = 1.5\n', "whole number"),
        ('["a.com"]\nrate = "fast"\n', "expected a number"),
        ('"a.com" = 3\n', "expected a table"),
        ("[images.pexels.com]\nrate = 1\n", 'quote host names in TOML, as in ["images.pexels.com"]'),
        ("[[broken\n", "limits.toml"),
    ],
)
def test_bad_host_limits_is_one_line_error(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "limits.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match="--host-limits") as exc:
        load_config(["--input", "x", "--output", "y", "--host-limits", str(f)])
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_bad_politeness_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FETCHER_POLITENESS_KEY", "url")
    with pytest.raises(ConfigError, match="--politeness-key must be one of host, domain"):
        load_config(["--input", "x", "--output", "y"])


def test_missing_host_limits_file_names_it() -> None:
    with pytest.raises(ConfigError, match=r"--host-limits /nonexistent/limits\.toml"):
        load_config(["--input", "x", "--output", "y", "--host-limits", "/nonexistent/limits.toml"])


# -- the Scheduler on the event loop --------------------------------------------------------------------
def job(i: int, host: str) -> Job:
    return Job(InputRow(0, i, f"{i:09d}", f"http://{host}/{i}", None), f"http://{host}/{i}", host)


async def test_read_ahead_bounded_when_one_host_holds_every_row() -> None:
    sched = Scheduler(SchedulerOptions(read_ahead=10, per_host_concurrency=2, per_host_rate=200.0))
    peak = 0

    async def produce() -> None:
        nonlocal peak
        for i in range(100):
            await sched.put(job(i, "one.example"))
            peak = max(peak, sched.pending)
        sched.close()

    producer = asyncio.create_task(produce())
    done = 0
    async for j in sched.dispatch():
        assert sched.inflight <= 2
        asyncio.get_running_loop().call_later(0.002, sched.complete, j, OK)
        done += 1
    await producer
    assert done == 100 and peak <= 10


async def test_paused_host_holds_no_permit_and_others_go_on() -> None:
    # One global permit: if the throttled host's retry waited holding it, nothing else could run.
    sched = Scheduler(SchedulerOptions(concurrency=1, retries=1, backoff_base=0.01, max_retry_after=0.5))
    await sched.put(job(0, "slow.example"))
    for i in range(1, 6):
        await sched.put(job(i, "fast.example"))
    sched.close()
    order: list[tuple[str, float]] = []
    t0 = asyncio.get_running_loop().time()
    async for j in sched.dispatch():
        order.append((j.host, asyncio.get_running_loop().time() - t0))
        outcome = http(429, retry_after=0.3) if j.host == "slow.example" and j.attempts == 1 else OK
        sched.complete(j, outcome)
    hosts = [h for h, _ in order]
    assert hosts == ["slow.example"] + ["fast.example"] * 5 + ["slow.example"]
    assert order[-1][1] >= 0.3  # the retry honoured Retry-After
    assert order[-2][1] < 0.2  # the other host did not wait for it
    assert sched.counters.throttled == 1 and sched.counters.retries == 1


async def test_dead_host_rows_come_back_without_permits() -> None:
    opts = SchedulerOptions(concurrency=2, retries=0, breaker_threshold=2, breaker_cooldown=0.2)
    sched = Scheduler(opts)
    for i in range(20):
        await sched.put(job(i, "dead.example"))
    sched.close()
    fetched, verdicts = 0, []
    async for j in sched.dispatch():
        if j.verdict is not None:
            verdicts.append(j.verdict.reason)
            continue
        fetched += 1
        sched.complete(j, fail(Reason.CONNECT_ERROR))
    # 2 failures open the breaker; after the cool-down one probe fails; the other 17 rows fail fast.
    assert fetched == 3 and verdicts == [Reason.HOST_UNAVAILABLE] * 17
    assert sched.counters.breaker_openings == 1 and sched.counters.failed_fast == 17
    assert sched.inflight == 0 and sched.pending == 0
