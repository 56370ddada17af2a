"""Per-host scheduling between the reader and the HTTP fetch.

One *slot* per politeness key (hostname, or registrable domain) with its own queue, concurrency cap,
rate limit, adaptive delay and circuit breaker (``fetcher/slot.py``). Slots are served earliest-ready
first, and a job takes a global permit only when its slot is ready, so a slow, throttled or hanging
host never holds global capacity it is not using. Retries are re-queued with a not-before time;
nothing sleeps while holding a permit. Rows of a host the breaker has given up on are handed back
at once with ``host_unavailable``, without a permit.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fetcher.boxslots import SharedSlots
from fetcher.hostkey import POLITENESS_KEYS, key_function
from fetcher.hostkey import hostname as host_key
from fetcher.hostlimits import HostLimits, SlotLimits
from fetcher.options import ConfigError, opt
from fetcher.records import FetchOutcome, InputRow, Reason
from fetcher.retry import RETRYABLE, RetryPolicy
from fetcher.slot import Breaker, SlotState, Tuning

__all__ = ["RETRYABLE", "Job", "Scheduler", "SchedulerCounters", "SchedulerOptions", "host_key"]

# Idle slots that still carry state (rate bucket, delay, failures) are kept, least recently used
# first out, up to this many: enough to remember every busy host, bounded for web-scale lists.
IDLE_SLOTS_KEPT = 100_000


@dataclass(frozen=True)
class SchedulerOptions:
    """Options of the scheduling stage."""

    concurrency: int = opt("--concurrency", 128, "requests in flight across all hosts", aliases=("--thread_count",))
    per_host_concurrency: int = opt("--per-host-concurrency", 8, "requests in flight to one host")
    per_host_rate: float = opt("--per-host-rate", 0.0, "requests per second started to one host (0 = unlimited)")
    per_host_burst: int = opt("--per-host-burst", 2, "requests a host may get at once on top of its rate")
    politeness_key: str = opt(
        "--politeness-key", "host", "what one slot covers: host or domain (registrable)", choices=POLITENESS_KEYS
    )
    host_limits: str = opt("--host-limits", "", "TOML/JSON file of per-host concurrency/rate/burst overrides")
    retries: int = opt("--retries", 2, "retries after a retryable failure (timeouts, resets, 408/429/5xx)")
    read_ahead: int = opt("--read-ahead", 4096, "rows read but not yet started (bounds memory)")
    backoff_base: float = opt("--backoff-base", 1.0, "first retry delay in seconds (doubles, with jitter)")
    backoff_max: float = opt("--backoff-max", 60.0, "longest retry delay in seconds")
    max_retry_after: float = opt("--max-retry-after", 120.0, "longest Retry-After pause honoured, seconds")
    max_host_delay: float = opt("--max-host-delay", 30.0, "largest adaptive delay between requests to a host")
    breaker_threshold: int = opt(
        "--breaker-threshold",
        5,
        "consecutive connect failures/timeouts/5xx (without Retry-After) that open a host's breaker (0 = off)",
    )
    breaker_cooldown: float = opt(
        "--breaker-cooldown", 60.0, "seconds a host's breaker stays open (and rows fail fast) before a probe"
    )
    politeness_store: str = opt(
        "--politeness-store",
        "",
        "redis://HOST:PORT/DB: per-host limits held for every box using this store (default: this box only)",
        metavar="URL",
    )
    politeness_prefix: str = opt(
        "--politeness-prefix", "fetcher", "key prefix in --politeness-store (boxes that share limits use one)"
    )

    def validate(self) -> None:
        for name in ("concurrency", "per_host_concurrency", "per_host_burst", "read_ahead"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("retries", "per_host_rate", "max_retry_after", "max_host_delay", "breaker_threshold"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
        for name in ("backoff_base", "backoff_max", "breaker_cooldown"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0")
        if self.politeness_store and not self.politeness_store.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"--politeness-store {self.politeness_store!r}: expected redis://HOST:PORT/DB")
        if self.politeness_key not in POLITENESS_KEYS:
            raise ConfigError(
                f"--politeness-key must be one of {', '.join(POLITENESS_KEYS)}, not {self.politeness_key!r}"
            )
        self.load_limits()

    def load_limits(self) -> HostLimits:
        """The per-host limits: flag defaults plus the ``--host-limits`` file. Raises ConfigError."""
        default = SlotLimits(self.per_host_concurrency, self.per_host_rate, self.per_host_burst)
        return HostLimits.load(self.host_limits, default) if self.host_limits else HostLimits(default)

    @property
    def tuning(self) -> Tuning:
        return Tuning(self.max_host_delay, self.max_retry_after, self.breaker_threshold, self.breaker_cooldown)


@dataclass
class SchedulerCounters:
    """Event counts the metrics module exports (no per-host labels, by design)."""

    retries: int = 0
    throttled: int = 0  # 429/503 answers
    breaker_openings: int = 0
    delayed_hosts: int = 0  # gauge: slots currently slowed down (adaptive delay, pause, breaker)
    failed_fast: int = 0  # rows given up with host_unavailable without a request


@dataclass(eq=False)
class Job:
    """One row on its way through the fetch stage.

    ``verdict`` is set when the scheduler hands the job back without fetching it (host given up):
    the row is final with that outcome, and ``complete`` must not be called.
    """

    row: InputRow
    url: str
    host: str
    attempts: int = 0
    not_before: float = 0.0
    started: float = 0.0
    verdict: FetchOutcome | None = None


@dataclass(eq=False)
class _Slot:
    key: str
    state: SlotState
    queue: deque[Job]
    in_heap: bool = False


class Scheduler:
    """Hands out jobs whose host slot is ready, one global permit each.

    Single producer (``put``), single dispatcher (``dispatch``), any number of ``complete`` calls.
    With ``box`` (the box's shared table, or a fleet's store) every start also takes a shared lease, so
    per-host limits hold for the box or fleet; ``clock`` must then be ``time.monotonic``.
    """

    def __init__(
        self, opts: SchedulerOptions, clock: Callable[[], float] = time.monotonic, box: SharedSlots | None = None
    ) -> None:
        self.opts = opts
        self.clock = clock
        self.box = box
        self.key_of = key_function(opts.politeness_key)
        self.limits = opts.load_limits()
        self.tuning = opts.tuning
        self.policy = RetryPolicy(opts.retries, opts.backoff_base, opts.backoff_max, opts.max_retry_after)
        self._slots: dict[str, _Slot] = {}
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._slowed: set[str] = set()
        self._ready: list[tuple[float, int, _Slot]] = []
        self._delayed: list[tuple[float, int, Job]] = []
        self._failfast: deque[Job] = deque()
        self._seq = itertools.count()
        self._inflight = 0
        self._pending = 0  # queued + delayed + failing fast, bounded by read_ahead
        self._closed = False
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.counters = SchedulerCounters()

    # -- producer side -------------------------------------------------------------------------
    async def put(self, job: Job) -> None:
        """Queue a new job; waits while read-ahead is full."""
        while self._pending >= self.opts.read_ahead:
            self._room.clear()
            await self._room.wait()
        self._pending += 1
        self._enqueue(job)

    def close(self) -> None:
        """No more input; ``dispatch`` ends once everything queued has been handed out and completed."""
        self._closed = True
        self._wake.set()

    @property
    def pending(self) -> int:
        """Rows read but not yet handed to a fetch."""
        return self._pending

    @property
    def inflight(self) -> int:
        return self._inflight

    # -- dispatcher side -----------------------------------------------------------------------
    async def dispatch(self) -> AsyncIterator[Job]:
        """Yield jobs, each with a global permit and a host slot taken; call ``complete`` after.

        Jobs with ``verdict`` set took no permit: they are final as they are.
        """
        while True:
            now = self.clock()
            self._release_due(now)
            if self._failfast:
                job = self._failfast.popleft()
                self._taken()
                yield job
                continue
            if self._inflight < self.opts.concurrency and self._ready and self._ready[0][0] <= now:
                _, _, slot = heapq.heappop(self._ready)
                slot.in_heap = False
                # The slot may have been paused or slowed since it was queued: look again.
                st = slot.state
                if not slot.queue or st.is_dead(now) or st.ready_at(now) > now or not st.has_room():
                    self._maybe_ready(slot, now)
                    continue
                if self.box is not None and not self._box_lease(slot, now):
                    continue
                job = slot.queue.popleft()
                slot.state.start(now)
                self._inflight += 1
                self._taken()
                job.attempts += 1
                job.started = now
                self._maybe_ready(slot, now)
                yield job
                continue
            if self._closed and self._pending == 0 and self._inflight == 0:
                return
            timeout = self._next_event(now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def complete(self, job: Job, outcome: FetchOutcome) -> bool:
        """Release the job's permit and learn from its outcome.

        Returns True if the outcome is final, False if the job was re-queued for a retry.
        """
        now = self.clock()
        slot = self._slots[job.host]
        self._inflight -= 1
        st = slot.state
        shared = self.box.learned(job.host) if self.box is not None else None
        if shared is not None:  # breaker count and adaptive delay are the whole box's (or fleet's)
            st.failures, st.delay = shared.failures, shared.delay
        v = st.record(outcome, job.started, now)
        if self.box is not None:
            cooling = st.cooldown_until if st.breaker is Breaker.OPEN else 0.0
            dead = st.dead_until if st.is_dead(now) else 0.0
            self.box.finish(job.host, st.pause_until, st.delay, dead, st.failures, cooling)
        self.counters.throttled += v.throttled
        self.counters.breaker_openings += v.breaker_opened
        final = True
        decision = self.policy.decide(outcome, job.attempts)
        if decision.retry:
            self._pending += 1
            self.counters.retries += 1
            final = False
            if slot.state.is_dead(now):
                self._fail_fast(job, slot)
            else:
                job.not_before = now + decision.wait
                heapq.heappush(self._delayed, (job.not_before, next(self._seq), job))
        self._maybe_ready(slot, now)
        self._wake.set()
        return final

    def drop(self, keys: set[str] | None = None) -> list[Job]:
        """Take queued jobs (all, or those of the rows named by ``keys``) out of the scheduler, unfetched.

        In-flight jobs are untouched (their ``complete`` still comes). Used when rows are given up
        (tail bound) or a stop leaves them for the next run, so no queue outlives its rows.
        """

        def hit(job: Job) -> bool:
            return keys is None or job.row.key in keys

        now = self.clock()
        dropped: list[Job] = []
        for slot in list(self._slots.values()):
            if slot.queue and any(hit(j) for j in slot.queue):
                dropped.extend(j for j in slot.queue if hit(j))
                slot.queue = deque(j for j in slot.queue if not hit(j))
                self._track(slot, now)
        dropped.extend(e[2] for e in self._delayed if hit(e[2]))
        self._delayed = [e for e in self._delayed if not hit(e[2])]
        heapq.heapify(self._delayed)
        dropped.extend(j for j in self._failfast if hit(j))
        self._failfast = deque(j for j in self._failfast if not hit(j))
        self._pending -= len(dropped)
        self._room.set()
        self._wake.set()
        return dropped

    def struggling(self, key: str) -> bool:
        """True when host ``key`` is failing or slowed down (its rows are the tail a tar may give up)."""
        slot = self._slots.get(key)
        return slot is not None and (slot.state.failures > 0 or slot.state.is_delayed(self.clock()))

    def given_up(self, key: str) -> str | None:
        """Why host ``key`` is given up while its breaker is open (cooling down, probing) or dead; else None."""
        slot = self._slots.get(key)
        if slot is None or slot.state.breaker is Breaker.CLOSED:
            return None
        return f"host {key} given up after {slot.state.failures} consecutive connect failures/timeouts/5xx"

    @property
    def hosts_given_up(self) -> int:
        """Hosts whose breaker is open or dead right now."""
        return sum(1 for k in self._slowed if self._slots[k].state.breaker is not Breaker.CLOSED)

    # -- internals -----------------------------------------------------------------------------
    def _box_lease(self, slot: _Slot, now: float) -> bool:
        """Take the box-wide lease for the slot's next start; otherwise park the slot until it may."""
        assert self.box is not None
        busy = self.box.try_start(slot.key, slot.state.limits, now)
        if busy is None:
            return True
        if busy.dead:  # another process's breaker gave the host up: fail fast here too
            slot.state.give_up(busy.at)
            self._maybe_ready(slot, now)
        else:
            shared = self.box.learned(slot.key)
            if shared is not None:
                slot.state.mirror(shared.failures, busy.at)
            slot.in_heap = True
            heapq.heappush(self._ready, (busy.at, next(self._seq), slot))
        return False

    def _taken(self) -> None:
        self._pending -= 1
        self._room.set()

    def _slot(self, key: str) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(key, SlotState(self.limits.for_key(key), self.tuning), deque())
        else:
            self._idle.pop(key, None)
        return slot

    def _enqueue(self, job: Job) -> None:
        slot = self._slot(job.host)
        slot.queue.append(job)
        self._maybe_ready(slot, self.clock())
        self._wake.set()

    def _fail_fast(self, job: Job, slot: _Slot) -> None:
        until = slot.state.dead_until - self.clock()
        job.verdict = FetchOutcome(
            reason=Reason.HOST_UNAVAILABLE,
            detail=f"{self.given_up(slot.key)} (next probe in {max(0.0, until):.0f}s)",
        )
        self.counters.failed_fast += 1
        self._failfast.append(job)

    def _maybe_ready(self, slot: _Slot, now: float) -> None:
        """Put the slot where it belongs: fail-fast, the ready heap, idle, or nowhere (busy)."""
        st = slot.state
        if st.is_dead(now):
            while slot.queue:
                self._fail_fast(slot.queue.popleft(), slot)
        elif slot.queue and not slot.in_heap and st.has_room():
            slot.in_heap = True
            heapq.heappush(self._ready, (st.ready_at(now), next(self._seq), slot))
        self._track(slot, now)

    def _track(self, slot: _Slot, now: float) -> None:
        st = slot.state
        if st.is_delayed(now):
            self._slowed.add(slot.key)
        else:
            self._slowed.discard(slot.key)
        if not slot.queue and st.inflight == 0 and not slot.in_heap:
            if st.is_clean(now):
                self._forget(slot.key)
            else:
                self._idle[slot.key] = None
                self._idle.move_to_end(slot.key)
                if len(self._idle) > IDLE_SLOTS_KEPT:
                    self._forget(next(iter(self._idle)))
        self.counters.delayed_hosts = len(self._slowed)

    def _forget(self, key: str) -> None:
        self._idle.pop(key, None)
        self._slowed.discard(key)
        del self._slots[key]

    def _release_due(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, job = heapq.heappop(self._delayed)
            slot = self._slot(job.host)
            slot.queue.append(job)  # already counted in _pending since its retry was queued
            self._maybe_ready(slot, now)

    def _next_event(self, now: float) -> float | None:
        times: list[float] = []
        if self._ready and self._inflight < self.opts.concurrency:
            times.append(self._ready[0][0])
        if self._delayed:
            times.append(self._delayed[0][0])
        return max(0.0, min(times) - now) if times else None
