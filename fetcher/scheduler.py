"""Per-host scheduling between the reader and the HTTP fetch.

One *slot* per host with its own queue and concurrency cap. A job takes a global permit only when
its slot is ready, so a slow or throttled host never holds global capacity. Retries are re-queued
with a not-before time; nothing sleeps while holding a permit.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fetcher.options import ConfigError, opt
from fetcher.records import FetchOutcome, InputRow, Reason

RETRYABLE = frozenset(
    {
        Reason.CONNECT_ERROR,
        Reason.CONNECTION_RESET,
        Reason.TIMEOUT,
        Reason.TRUNCATED_BODY,
        Reason.DNS_ERROR,
        Reason.HTTP_429,
        Reason.HTTP_5XX,
    }
)


@dataclass(frozen=True)
class SchedulerOptions:
    """Options of the scheduling stage."""

    concurrency: int = opt("--concurrency", 128, "requests in flight across all hosts", aliases=("--thread_count",))
    per_host_concurrency: int = opt("--per-host-concurrency", 8, "requests in flight to one host")
    retries: int = opt("--retries", 2, "retries after a retryable failure (timeouts, 408/429/5xx, resets)")
    read_ahead: int = opt("--read-ahead", 4096, "rows read but not yet started (bounds memory)")
    backoff_base: float = opt("--backoff-base", 1.0, "first retry delay in seconds (doubles, with jitter)")
    backoff_max: float = opt("--backoff-max", 60.0, "longest retry delay in seconds")

    def validate(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be >= 1")
        if self.per_host_concurrency < 1:
            raise ConfigError("--per-host-concurrency must be >= 1")
        if self.retries < 0:
            raise ConfigError("--retries must be >= 0")
        if self.read_ahead < 1:
            raise ConfigError("--read-ahead must be >= 1")


@dataclass
class SchedulerCounters:
    """Event counts the metrics module exports (no per-host labels, by design)."""

    retries: int = 0
    throttled: int = 0  # 429/503 answers
    breaker_openings: int = 0
    delayed_hosts: int = 0  # gauge: slots currently waiting out a delay


@dataclass(eq=False)
class Job:
    """One row on its way through the fetch stage."""

    row: InputRow
    url: str
    host: str
    attempts: int = 0
    not_before: float = 0.0


@dataclass(eq=False)
class _Slot:
    host: str
    queue: deque[Job] = field(default_factory=deque)
    inflight: int = 0
    next_allowed: float = 0.0
    in_heap: bool = False


def host_key(url: str) -> str:
    """The politeness key of a URL: its lower-cased hostname."""
    return (urlsplit(url).hostname or "").lower()


class Scheduler:
    """Hands out jobs whose host slot is ready, one global permit each.

    Single producer (``put``), single dispatcher (``dispatch``), any number of ``complete`` calls.
    """

    def __init__(self, opts: SchedulerOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.opts = opts
        self.clock = clock
        self._slots: dict[str, _Slot] = {}
        self._ready: list[tuple[float, int, _Slot]] = []
        self._delayed: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._inflight = 0
        self._pending = 0  # queued + delayed, bounded by read_ahead
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
        """Yield jobs, each with a global permit and a host slot taken; call ``complete`` after."""
        while True:
            now = self.clock()
            self._release_due(now)
            if self._inflight < self.opts.concurrency and self._ready and self._ready[0][0] <= now:
                _, _, slot = heapq.heappop(self._ready)
                slot.in_heap = False
                job = slot.queue.popleft()
                slot.inflight += 1
                self._inflight += 1
                self._pending -= 1
                self._room.set()
                self._maybe_ready(slot, now)
                job.attempts += 1
                yield job
                continue
            if self._closed and self._pending == 0 and self._inflight == 0:
                return
            timeout = self._next_event(now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def complete(self, job: Job, outcome: FetchOutcome) -> bool:
        """Release the job's permit. Returns True if the outcome is final, False if it was re-queued."""
        slot = self._slots[job.host]
        slot.inflight -= 1
        self._inflight -= 1
        final = True
        if not outcome.ok and outcome.reason in RETRYABLE and job.attempts <= self.opts.retries:
            delay = self._backoff(job.attempts)
            if outcome.retry_after is not None:
                delay = max(delay, min(outcome.retry_after, self.opts.backoff_max))
            job.not_before = self.clock() + delay
            heapq.heappush(self._delayed, (job.not_before, next(self._seq), job))
            self._pending += 1
            self.counters.retries += 1
            final = False
        self._maybe_ready(slot, self.clock())
        if slot.inflight == 0 and not slot.queue and not slot.in_heap:
            del self._slots[slot.host]
        self._wake.set()
        return final

    # -- internals -----------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        base = min(self.opts.backoff_max, self.opts.backoff_base * 2.0 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)

    def _enqueue(self, job: Job) -> None:
        slot = self._slots.get(job.host)
        if slot is None:
            slot = self._slots[job.host] = _Slot(job.host)
        slot.queue.append(job)
        self._maybe_ready(slot, self.clock())
        self._wake.set()

    def _maybe_ready(self, slot: _Slot, now: float) -> None:
        if slot.queue and not slot.in_heap and slot.inflight < self.opts.per_host_concurrency:
            slot.in_heap = True
            heapq.heappush(self._ready, (max(now, slot.next_allowed), next(self._seq), slot))

    def _release_due(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, job = heapq.heappop(self._delayed)
            self._enqueue(job)  # already counted in _pending since its retry was queued

    def _next_event(self, now: float) -> float | None:
        times: list[float] = []
        if self._ready and self._inflight < self.opts.concurrency:
            times.append(self._ready[0][0])
        if self._delayed:
            times.append(self._delayed[0][0])
        return max(0.0, min(times) - now) if times else None
