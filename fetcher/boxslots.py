"""Box-global politeness: one shared-memory table of per-host state read by every engine process.

Each engine process keeps its own Scheduler and SlotState (queues, retries, breaker bookkeeping).
Before a request starts it also takes a *box lease* here, so ``--per-host-concurrency``,
``--per-host-rate``/burst, Retry-After pauses, the adaptive delay and a breaker's dead time hold for
the whole box: an operator who sets 8 per host gets 8 per host however many processes run.

Politeness keys hash (crc32, stable across processes) into a fixed table. Two hosts that share an
entry share their limits: stricter than asked for those two, never looser. One lock guards each
read-modify-write; the critical sections are a few microseconds. Leases are also counted per
process, so the box can hand back the leases of a process that died.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from multiprocessing import shared_memory
from multiprocessing.synchronize import Lock
from typing import Any, Protocol

from fetcher.hostlimits import SlotLimits

ENTRIES = 1 << 17  # ~6 MB of doubles; collisions among 2,000 busy hosts: ~15 pairs, each only stricter
POLL = 0.02  # seconds before looking again at a host whose box-wide concurrency is full
_TAT, _PAUSE, _LAST, _DELAY, _DEAD, _FAILS, _COOL = range(7)  # doubles per entry
_DOUBLES = 7


@dataclass(frozen=True)
class BoxHandle:
    """What an engine process needs to attach to the box's table (picklable)."""

    name: str
    lock: Lock
    processes: int


@dataclass(frozen=True)
class Learned:
    """What the sharers know of a host that each one's answers move: its breaker count and adaptive delay."""

    failures: int
    delay: float


@dataclass(frozen=True)
class Busy:
    """The box refused to start a request now: look again at ``at``; ``dead`` when the host is given up."""

    at: float
    dead: bool = False


class SharedSlots(Protocol):
    """Per-host state shared beyond one process: the box's table, or a fleet's store."""

    def try_start(self, key: str, limits: SlotLimits, now: float) -> Busy | None:
        """Take a lease for a request to ``key`` starting now, or say when to look again."""

    def finish(
        self, key: str, pause_until: float, delay: float, dead_until: float, failures: int, cooldown_until: float = 0.0
    ) -> None:
        """Hand a lease back with what its answer taught about the host (``cooldown_until``: its breaker is
        open until then; 0 once an answer closed it)."""

    def learned(self, key: str) -> Learned | None:
        """The host's consecutive host-down outcomes and adaptive delay among the sharers (None: unknown)."""


class BoxSlots:
    """The shared table. The box parent creates it; each engine process attaches with its index."""

    def __init__(self, shm: shared_memory.SharedMemory, lock: Lock, processes: int, index: int, owner: bool) -> None:
        self._shm = shm
        self._lock = lock
        self.processes = processes
        self.index = index
        self._owner = owner
        doubles = ENTRIES * _DOUBLES * 8
        totals = ENTRIES * 4
        buf = shm.buf
        assert buf is not None
        self._d = buf[:doubles].cast("d")
        self._inflight = buf[doubles : doubles + totals].cast("i")
        base = doubles + totals
        self._mine = [buf[base + p * ENTRIES * 2 : base + (p + 1) * ENTRIES * 2].cast("h") for p in range(processes)]

    @staticmethod
    def size(processes: int) -> int:
        return ENTRIES * (_DOUBLES * 8 + 4 + 2 * processes)

    @classmethod
    def create(cls, processes: int, lock: Lock) -> BoxSlots:
        """The parent's table (zero-filled by the kernel)."""
        shm = shared_memory.SharedMemory(create=True, size=cls.size(processes))
        return cls(shm, lock, processes, -1, owner=True)

    @property
    def handle(self) -> BoxHandle:
        return BoxHandle(self._shm.name, self._lock, self.processes)

    @classmethod
    def attach(cls, handle: BoxHandle, index: int) -> BoxSlots:
        """An engine process's view of the parent's table."""
        # Spawned engine processes share the parent's resource tracker, so attaching (which
        # registers the name again before Python 3.13) leaves the segment's removal to the parent.
        shm = shared_memory.SharedMemory(name=handle.name)
        return cls(shm, handle.lock, handle.processes, index, owner=False)

    @staticmethod
    def entry(key: str) -> int:
        return zlib.crc32(key.encode("utf-8", "surrogatepass")) % ENTRIES

    def try_start(self, key: str, limits: SlotLimits, now: float) -> Busy | None:
        """Take a lease (and a rate token) for a request to ``key`` starting now; else say when to look again."""
        i = self.entry(key)
        d = self._d
        o = i * _DOUBLES
        with self._lock:
            if d[o + _DEAD] > now:
                return Busy(d[o + _DEAD], dead=True)
            at = max(d[o + _PAUSE], d[o + _COOL], d[o + _LAST] + d[o + _DELAY])
            if limits.rate > 0:
                at = max(at, d[o + _TAT] - (limits.burst - 1) / limits.rate)
            if at > now:
                return Busy(at)
            if self._inflight[i] >= limits.concurrency:
                return Busy(now + POLL)
            self._inflight[i] += 1
            self._mine[self.index][i] += 1
            if limits.rate > 0:
                d[o + _TAT] = max(d[o + _TAT], now) + 1.0 / limits.rate
            d[o + _LAST] = now
        return None

    def learned(self, key: str) -> Learned:
        """Consecutive host-down outcomes (the breaker counts these) and adaptive delay of ``key``, box-wide."""
        o = self.entry(key) * _DOUBLES
        return Learned(int(self._d[o + _FAILS]), self._d[o + _DELAY])

    def finish(
        self, key: str, pause_until: float, delay: float, dead_until: float, failures: int, cooldown_until: float = 0.0
    ) -> None:
        """Hand the lease back and share what the answer taught this process about the host. Retry-After
        pauses and dead times only grow; the breaker's cool-down is the latest answer's view."""
        i = self.entry(key)
        d = self._d
        o = i * _DOUBLES
        with self._lock:
            if self._mine[self.index][i] > 0:
                self._mine[self.index][i] -= 1
                self._inflight[i] -= 1
            d[o + _PAUSE] = max(d[o + _PAUSE], pause_until)
            d[o + _DELAY] = delay
            d[o + _DEAD] = max(d[o + _DEAD], dead_until)
            d[o + _FAILS] = failures
            d[o + _COOL] = cooldown_until

    def inflight(self, key: str) -> int:
        """Requests in flight to ``key`` across the box."""
        return int(self._inflight[self.entry(key)])

    def release_process(self, index: int) -> int:
        """Hand back every lease a (dead) engine process held; returns how many."""
        mine = self._mine[index]
        freed = 0
        with self._lock:
            for i in range(ENTRIES):
                n = mine[i]
                if n:
                    self._inflight[i] -= n
                    mine[i] = 0
                    freed += n
        return freed

    def close(self) -> None:
        """Detach (and, in the parent, remove the segment)."""
        views: list[memoryview[Any]] = [self._d, self._inflight, *self._mine]
        for view in views:
            view.release()
        self._shm.close()
        if self._owner:
            self._shm.unlink()

    def __enter__(self) -> BoxSlots:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
