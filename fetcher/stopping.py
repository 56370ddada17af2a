"""How one engine winds down, and what it says when it ends.

A gentle stop (the first SIGTERM/SIGINT) ends reading at once, leaves queued rows for the next run and
gives requests in flight ``--shutdown-timeout`` seconds; a fatal error (disk full, storage, bad input) stops
the same way with no grace and overrides a gentle stop under way. Dispatching ends once no request of an
open row runs; open tars are then checkpointed (fetcher/tars.py), so a stop loses no finished sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from fetcher.lifecycle import RunAborted, SignalGate, exit_code_for
from fetcher.openrows import OpenRows
from fetcher.scheduler import Scheduler
from fetcher.summary import RunStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StopCounts:
    """Open tars at a stop: checkpointed (continued by the next run) with the rows and samples they
    keep, and dropped (formats that cannot continue a tar)."""

    suspended: int = 0
    kept_rows: int = 0
    kept_samples: int = 0
    dropped: int = 0

    @classmethod
    def sum_of(cls, parts: list[StopCounts]) -> StopCounts:
        return cls(*(sum(getattr(p, f) for p in parts) for f in ("suspended", "kept_rows", "kept_samples", "dropped")))


def stop_line(why: str, stats: RunStats, c: StopCounts) -> str:
    """The one line a run that ends early says (one engine, or a whole box)."""
    dropped = f"{c.dropped} open tars dropped (this output format redoes them), " * bool(c.dropped)
    return (
        f"fetcher: stopped by {why}: {stats.tars_done} tars written, {c.suspended} open tars checkpointed"
        f" with {c.kept_rows} rows kept ({c.kept_samples} samples; the next run continues them), "
        f"{dropped}{stats.rows_done} rows done, {stats.ok} ok"
    )


class Engine(Protocol):
    """What the end of a run in this process is told from."""

    stats: RunStats

    @property
    def stop_signal(self) -> signal.Signals | None: ...

    @property
    def stop_counts(self) -> StopCounts: ...


@contextlib.contextmanager
def telling_end(engine: Engine, log_format: str) -> Iterator[None]:
    """Around a run in this process: say how it ended (the stop line when it ended early, by a signal or
    a RunAborted, which goes on; else the summary table, in text logs only: with json logs the progress
    view already wrote the summary object) and set its exit code."""
    try:
        yield
    except RunAborted:
        _say_stopped(engine)
        raise
    if engine.stop_signal is not None:
        _say_stopped(engine)
    elif log_format == "text":
        sys.stderr.write(engine.stats.format() + "\n")
    engine.stats.exit_code = exit_code_for(engine.stop_signal)


def _say_stopped(engine: Engine) -> None:
    why = engine.stop_signal.name if engine.stop_signal else "error"
    log.info("%s", stop_line(why, engine.stats, engine.stop_counts).removeprefix("fetcher: "))


class Stop:
    """One engine's stop: whether it is stopping, why (signal, fatal error), and the steps to get there."""

    def __init__(self, grace: float, rows: OpenRows, scheduler: Scheduler) -> None:
        self.grace = grace  # --shutdown-timeout
        self.rows = rows
        self.scheduler = scheduler
        self.stopping = False
        self.signal: signal.Signals | None = None
        self.fatal: RunAborted | None = None
        self.timers: list[asyncio.Task[None]] = []  # grace periods under way, cancelled when the run ends
        self.requests: set[asyncio.Task[None]] = set()  # every request task, awaited before the run ends
        self._stages: tuple[asyncio.Task[None], asyncio.Task[None]] | None = None

    async def run(
        self,
        reading: Coroutine[Any, Any, None],
        dispatching: Coroutine[Any, Any, None],
        publishing: list[asyncio.Task[None]],
    ) -> None:
        """Run the reading and dispatching stages until both end (a first signal stops them gently), then
        wait for every request and for the tars being published."""
        self._stages = (asyncio.create_task(reading), asyncio.create_task(dispatching))
        with SignalGate(self.request):
            for stage in reversed(self._stages):  # dispatching ends after reading, or when a stop ends it
                with contextlib.suppress(asyncio.CancelledError):
                    await stage
            await asyncio.gather(*self.requests, return_exceptions=True)
            await asyncio.gather(*publishing, return_exceptions=True)

    def track(self, key: str, task: asyncio.Task[None]) -> None:
        """``task`` runs row ``key``'s request: a stop waits for it (up to its grace time), the run for all."""
        self.requests.add(task)
        self.rows.started(key, task)
        task.add_done_callback(self.requests.discard)
        task.add_done_callback(lambda _t: self.check())

    def request(self, sig: signal.Signals | None = None, grace: float | None = None) -> None:
        """Stop reading and starting requests; requests in flight get ``grace`` seconds to finish.

        Queued rows stay unfinished (the next run fetches them); open tars are checkpointed at the end.
        """
        if self.stopping or self._stages is None:
            return
        self.stopping, self.signal = True, sig
        self._stages[0].cancel()
        self.rows.forget(job.row.key for job in self.scheduler.drop())
        self.timers.append(asyncio.create_task(self._after(self.grace if grace is None else grace)))
        self.check()

    def fail(self, exc: RunAborted) -> None:
        """Stop now on an error the operator must fix; the run raises it once wound down."""
        if self.fatal is None:
            self.fatal = exc
        self.stopping = False  # a fatal error overrides a gentle stop already under way
        self.request(grace=0)

    async def _after(self, grace: float) -> None:
        await asyncio.sleep(grace)
        self.rows.forget_running()
        self.check()

    def check(self) -> None:
        """End dispatching if stopping and no request of an open row runs any more."""
        if self.stopping and not self.rows.running and self._stages is not None:
            self._stages[1].cancel()
