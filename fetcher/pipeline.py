"""The engine: the data flow of one process, top to bottom. Each stage is its own module; this one wires
them and moves rows between them: reader (rows of this shard's tars) -> admission (URL policy, politeness
key) -> scheduler (per-host slots, global permits) -> fetch -> imaging -> open tars (tar, parquet, stats)."""

from __future__ import annotations

import asyncio
import signal
import time

from fetcher.admission import admit
from fetcher.boxslots import BoxSlots
from fetcher.budget import ByteBudget
from fetcher.config import Config
from fetcher.diskguard import DiskGuard
from fetcher.fetchers import FetchFor
from fetcher.fleet import shared_slots
from fetcher.gauges import watch_engine
from fetcher.guards import Guards
from fetcher.hostmix import HostMix
from fetcher.lifecycle import RunAborted
from fetcher.monitor import Monitor
from fetcher.openrows import OpenRows
from fetcher.plan import RunPlan, prepare
from fetcher.records import FetchOutcome, Reason, SampleResult
from fetcher.results import fetch_failure, imaged
from fetcher.scheduler import Job, Scheduler
from fetcher.stages import open_io
from fetcher.stopping import Stop, StopCounts, stop_line, telling_end
from fetcher.summary import RunStats
from fetcher.tars import OpenTars

__all__ = ["Pipeline", "RunPlan", "StopCounts", "prepare", "run", "stop_line"]


class Pipeline:
    """Runs one RunPlan to completion, or until stopped (what is final stays, the rest is the next run's)."""

    def __init__(self, plan: RunPlan, box: BoxSlots | None = None, fetch: FetchFor | None = None) -> None:
        """``box``: the box's politeness table; ``fetch``: makes the fetch seam (else HTTP, or local files)."""
        self.plan, self.cfg, self.stats, self.fetch_for = plan, plan.cfg, plan.new_stats(), fetch
        sched, root = self.cfg.scheduler, plan.output.local_root
        # A lease never outlives its request's hard deadline, so a dead box's leases lapse soon after.
        self.shared = shared_slots(sched.politeness_store, sched.politeness_prefix, self.cfg.http.timeout + 10, box)
        self.scheduler = Scheduler(sched, box=self.shared)
        self.hostmix = HostMix(sched.concurrency, self.scheduler.limits)
        self.budget = ByteBudget(self.cfg.run.max_bytes_in_flight)
        self.monitor = Monitor(self.cfg.monitor, self.stats, self.cfg.run.shard_pair, root)
        self.disk = DiskGuard(root, self.cfg.durability)
        self.rows = OpenRows()
        self.stop = Stop(self.cfg.durability.shutdown_timeout, self.rows, self.scheduler)
        self.tars = OpenTars(plan.output, self.cfg.run.output, self.monitor, self.stop.fail)
        self.guards = Guards(self.cfg, self.rows, self.tars, self.scheduler, self.disk, self.stop, self._finish)
        watch_engine(self.monitor, self.rows, self.disk, self.shared)

    @property
    def stop_signal(self) -> signal.Signals | None:
        """The signal that stopped the run (None: not stopped, or stopped by an error)."""
        return self.stop.signal

    @property
    def stop_counts(self) -> StopCounts:
        """What a stop did with the open tars."""
        return self.tars.stop_counts

    async def run(self) -> RunStats:
        """Fetch, process and write every row of the planned tars (until stopped by a signal or an error)."""
        self.plan.output.cleanup()
        io = open_io(self.plan, self.budget, self.monitor, self.scheduler, self.fetch_for)
        async with io as (self.fetch, self.pool):
            guards = self.guards.start()
            try:
                await self.stop.run(self._produce(), self._dispatch(), self.tars.publishing)
            finally:
                for task in guards + self.stop.timers:
                    task.cancel()
                for index in self.tars.suspend_all():  # open only after a stop: checkpointed, never published
                    self.rows.forget_tar(index)
        self.stats.finished = time.monotonic()
        if self.stop.fatal is not None:
            raise self.stop.fatal
        return self.stats

    async def _produce(self) -> None:
        try:
            async for row in self.tars.read(self.plan, self.disk):
                self.monitor.row_read()
                self.rows.add(row)
                job = admit(row, self.fetch, self.scheduler, self.hostmix)
                if isinstance(job, SampleResult):  # --filter, bad --key-col, refused URL: final, never fetched
                    self._finish(job)
                    continue
                self.rows.admitted(row.key, job.host)
                await self.scheduler.put(job)
                self.monitor.row_scheduled()
        except RunAborted as exc:  # disk full, an unwritable output, bad input data: one line, exit 75
            self.stop.fail(exc)
        finally:
            self.scheduler.close()
            if self.hostmix.decide():
                self.stats.notes.append(str(self.hostmix.note))

    async def _dispatch(self) -> None:
        async for job in self.scheduler.dispatch():
            if job.verdict is not None:  # host given up by the breaker: final without a request (no permit)
                self._finish(fetch_failure(job, job.verdict))
            elif job.row.key not in self.rows or self.stop.stopping:
                # Given up, left for the next run, or stopping: release the permit only.
                self.scheduler.complete(job, FetchOutcome(reason=Reason.SHUTDOWN))
            else:
                self.stop.track(job.row.key, asyncio.create_task(self._handle(job)))
                await self.budget.wait_room()
                await self.pool.wait_room()
                await self.disk.wait_ok()

    async def _handle(self, job: Job) -> None:
        try:
            outcome = await self.fetch.fetch(job.url)
        except asyncio.CancelledError:
            self.scheduler.complete(job, FetchOutcome(reason=Reason.SHUTDOWN))
            raise
        size = len(outcome.body) if outcome.body is not None else 0
        try:  # the fetch reserved the body's bytes in self.budget: they go back once imaging is done
            self.monitor.fetched(outcome)
            if not self.scheduler.complete(job, outcome):
                self.rows.requeued(job.row.key)
                return  # re-queued for a retry
            if not outcome.ok or outcome.body is None:
                self._finish(fetch_failure(job, outcome))
                return
            image = await self.pool.run(outcome.body, job.row.expected_hash)
            self.monitor.imaged(image)
        finally:
            self.budget.give(size)
        self._finish(imaged(job, outcome, image, size))

    def _finish(self, res: SampleResult) -> None:
        if self.rows.finish(res.row.key):  # else left for the next run, or already given up (tail, watchdog)
            self.tars.add(res)


def run(cfg: Config, plan: RunPlan | None = None) -> RunStats:
    """Plan (unless given the plan) and run in this process, on uvloop. Raises ConfigError before any
    traffic if the input is bad, RunAborted when the run stops on an error."""
    import uvloop

    pipeline = Pipeline(prepare(cfg) if plan is None else plan)
    with telling_end(pipeline, cfg.monitor.log_format):
        uvloop.run(pipeline.run())
    return pipeline.stats
