"""The data flow of one run, top to bottom:

reader (rows of this shard's tars) -> URL policy -> scheduler (per-host slots, global permits)
  -> http fetch -> imaging process pool (bounded bytes in flight) -> ShardWriter (tar, parquet, stats)
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

from fetcher.config import Config
from fetcher.http import HttpClient
from fetcher.monitor import Monitor
from fetcher.netguard import UrlRefused
from fetcher.reader import InputFile, TarPlan, iter_rows, open_inputs, plan_tars
from fetcher.records import FetchOutcome, Reason, SampleResult, Status
from fetcher.scheduler import Job, Scheduler
from fetcher.summary import RunStats
from fetcher.workers import ImagingPool
from storage.output import Output
from storage.shard import ShardWriter


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, worked out (and validated) before any network traffic."""

    cfg: Config
    files: list[InputFile]
    tars: list[TarPlan]
    todo: list[TarPlan]
    output: Output


def prepare(cfg: Config) -> RunPlan:
    """Open inputs, plan this shard's tars and find those already complete. Raises ConfigError."""
    files = open_inputs(cfg.run.input, cfg.input, cfg.imaging.verify_hash)
    total = sum(f.num_rows for f in files)
    tars = plan_tars(total, cfg.run.samples_per_tar, cfg.run.shard_pair)
    output = Output(cfg.run.output, cfg.output, cfg.input.save_list, cfg.imaging.hash_column)
    todo = [t for t in tars if not output.is_complete(t.index)]
    return RunPlan(cfg=cfg, files=files, tars=tars, todo=todo, output=output)


class ByteBudget:
    """Bytes downloaded but not yet through imaging; fetching pauses while it is over the cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self._room = asyncio.Event()
        self._room.set()

    def take(self, n: int) -> None:
        self.used += n
        if self.used >= self.cap:
            self._room.clear()

    def give(self, n: int) -> None:
        self.used -= n
        if self.used < self.cap:
            self._room.set()

    async def wait_room(self) -> None:
        await self._room.wait()


class Pipeline:
    """Runs one RunPlan to completion."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.cfg = plan.cfg
        self.stats = RunStats(
            total_rows=sum(t.size for t in plan.todo),
            tars_total=len(plan.tars),
            tars_skipped=len(plan.tars) - len(plan.todo),
        )
        self.scheduler = Scheduler(self.cfg.scheduler)
        self.budget = ByteBudget(self.cfg.run.max_bytes_in_flight)
        self.monitor = Monitor(self.cfg.monitor, self.stats, self.cfg.run.shard_pair, plan.output.local_root)
        self.writers: dict[int, ShardWriter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._finalizers: list[asyncio.Task[None]] = []

    async def run(self) -> RunStats:
        """Fetch, process and write every row of the planned tars."""
        self.plan.output.cleanup([t.index for t in self.plan.todo])
        async with (
            HttpClient(self.cfg.http) as self.http,
            ImagingPool(self.cfg.run.worker_count, self.cfg.imaging) as self.pool,
            self.monitor.watching(self.scheduler, self.budget, self.pool),
        ):
            try:
                producer = asyncio.create_task(self._produce())
                await self._dispatch()
                await producer
                if self._tasks:
                    await asyncio.gather(*self._tasks)
                if self._finalizers:
                    await asyncio.gather(*self._finalizers)
            except BaseException:
                for w in self.writers.values():
                    w.abort()
                raise
        self.stats.finished = time.monotonic()
        return self.stats

    # -- stages --------------------------------------------------------------------------------
    async def _produce(self) -> None:
        policy = self.http.policy
        try:
            for tar in self.plan.todo:
                writer = self.plan.output.new_writer(tar.index, tar.size)
                self.writers[tar.index] = writer
                rows = iter_rows(
                    self.plan.files, tar, self.cfg.input, self.cfg.run.samples_per_tar, self.cfg.imaging.verify_hash
                )
                for row in rows:
                    self.monitor.row_read()
                    if row.skip_reason is not None:  # --filter / bad --key-col: recorded, never fetched
                        self._finish(SampleResult.failure(row, row.skip_reason, row.skip_detail))
                        continue
                    try:
                        url = policy.check_url(row.url)
                    except UrlRefused as exc:
                        self._finish(SampleResult.failure(row, exc.reason, exc.detail))
                        continue
                    await self.scheduler.put(Job(row=row, url=url, host=self.scheduler.key_of(url)))
                    self.monitor.row_scheduled()
                writer.reading_done = True
                self._maybe_finalize(writer)
        finally:
            self.scheduler.close()

    async def _dispatch(self) -> None:
        async for job in self.scheduler.dispatch():
            if job.verdict is not None:  # host given up by the breaker: final without a request
                self._finish(self._fetch_failure(job, job.verdict))
                continue
            task = asyncio.create_task(self._handle(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await self.budget.wait_room()

    async def _handle(self, job: Job) -> None:
        outcome = await self.http.fetch(job.url)
        self.monitor.fetched(outcome)
        if not self.scheduler.complete(job, outcome):
            return  # re-queued for a retry
        if not outcome.ok or outcome.body is None:
            self._finish(self._fetch_failure(job, outcome))
            return
        size = len(outcome.body)
        self.budget.take(size)
        try:
            image = await self.pool.run(outcome.body, job.row.expected_hash)
            self.monitor.imaged(image)
        finally:
            self.budget.give(size)
        common = dict(
            image=image,
            http_status=outcome.http_status,
            attempts=job.attempts,
            bytes_downloaded=size,
            fetch_ms=outcome.fetch_ms,
        )
        if image.ok:
            self._finish(SampleResult(row=job.row, status=Status.SUCCESS, **common))  # type: ignore[arg-type]
        else:
            reason = image.reason or Reason.INTERNAL_ERROR
            self._finish(SampleResult.failure(job.row, reason, image.detail, **common))

    @staticmethod
    def _fetch_failure(job: Job, outcome: FetchOutcome) -> SampleResult:
        return SampleResult.failure(
            job.row,
            outcome.reason or Reason.INTERNAL_ERROR,
            outcome.detail,
            http_status=outcome.http_status,
            attempts=job.attempts,
            fetch_ms=outcome.fetch_ms,
        )

    # -- results -------------------------------------------------------------------------------
    def _finish(self, res: SampleResult) -> None:
        writer = self.writers[res.row.tar_index]
        writer.add(res)
        self.monitor.row_done(res)
        self._maybe_finalize(writer)

    def _maybe_finalize(self, writer: ShardWriter) -> None:
        if not writer.complete:
            return
        del self.writers[writer.files.index]
        self._finalizers.append(asyncio.create_task(self._finalize(writer)))

    async def _finalize(self, writer: ShardWriter) -> None:
        await asyncio.to_thread(writer.finalize)
        self.monitor.tar_done()


def run(cfg: Config) -> RunStats:
    """Plan and run, on uvloop. Raises ConfigError before any traffic if the input is bad."""
    import uvloop

    plan = prepare(cfg)
    stats = uvloop.run(Pipeline(plan).run())
    print(stats.format(), file=sys.stderr)
    return stats
