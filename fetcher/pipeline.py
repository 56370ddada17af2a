"""The data flow of one run, top to bottom:

reader (rows of this shard's tars) -> URL policy -> scheduler (per-host slots, global permits)
  -> http fetch -> imaging process pool (bounded bytes in flight) -> ShardWriter (tar, parquet, stats)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass, field

from fetcher.config import Config
from fetcher.diskguard import DiskFull, DiskGuard, is_disk_full
from fetcher.http import HttpClient
from fetcher.lifecycle import RunAborted, SignalGate, exit_code_for
from fetcher.monitor import Monitor
from fetcher.netguard import UrlRefused
from fetcher.options import ConfigError
from fetcher.reader import InputDataError, InputFile, TarPlan, iter_rows, open_inputs, plan_tars
from fetcher.records import FetchOutcome, InputRow, Reason, SampleResult, Status
from fetcher.retry_failed import RetryPlan, plan_retry
from fetcher.runrecord import claim_output
from fetcher.scheduler import Job, Scheduler
from fetcher.summary import RunStats
from fetcher.workers import ImagingPool
from storage.backend import is_remote
from storage.layout import ShardFiles
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
    retries: dict[int, RetryPlan] = field(default_factory=dict)  # --retry-failed: finished tars to revisit


def prepare(cfg: Config) -> RunPlan:
    """Open inputs, plan this shard's tars and find those already complete. Raises ConfigError."""
    files = open_inputs(cfg.run.input, cfg.input, cfg.imaging.verify_hash)
    total = sum(f.num_rows for f in files)
    tars = plan_tars(total, cfg.run.samples_per_tar, cfg.run.shard_pair)
    try:
        output = Output(cfg.run.output, cfg.output, cfg.input.save_list, cfg.imaging.hash_column)
    except OSError as exc:  # /proc/x, an existing file, no permission: a bad --output, not a crash
        why = exc.strerror or exc
        raise ConfigError(f"--output {cfg.run.output}: cannot use it as the output folder ({why})") from None
    if cfg.durability.retry_failed and (cfg.output.output_format != "webdataset" or is_remote(cfg.run.output)):
        raise ConfigError("--retry-failed rewrites tars in a local folder: use it with --output-format webdataset")
    claim_output(cfg, files, output)  # a rerun that would make other tars stops here (storage.manifest)
    todo: list[TarPlan] = []
    retries: dict[int, RetryPlan] = {}
    for t in tars:
        if not output.is_complete(t.index):
            todo.append(t)
        elif cfg.durability.retry_failed:
            retry = plan_retry(ShardFiles(output.local_root, t.index), t, cfg.input.save_list)
            if retry is not None:
                retries[t.index] = retry
                todo.append(t)
    return RunPlan(cfg=cfg, files=files, tars=tars, todo=todo, output=output, retries=retries)


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
            total_rows=sum(len(plan.retries[t.index].retry_rows) if t.index in plan.retries else t.size
                           for t in plan.todo),
            tars_total=len(plan.tars),
            tars_skipped=len(plan.tars) - len(plan.todo),
        )  # fmt: skip
        self.scheduler = Scheduler(self.cfg.scheduler)
        self.budget = ByteBudget(self.cfg.run.max_bytes_in_flight)
        self.monitor = Monitor(self.cfg.monitor, self.stats, self.cfg.run.shard_pair, plan.output.local_root)
        self.disk = DiskGuard(plan.output.local_root, self.cfg.durability)
        self.monitor.metrics.sources.disk_paused = lambda: int(self.disk.paused)
        self.writers: dict[int, ShardWriter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._finalizers: list[asyncio.Task[None]] = []
        self._open_rows: dict[str, InputRow] = {}  # read, not yet final: what the watchdog may fail
        self._row_tasks: dict[str, asyncio.Task[None]] = {}
        self.stopping = False
        self.stop_signal: signal.Signals | None = None
        self.fatal: RunAborted | None = None
        self.tars_abandoned = 0
        self._guards: list[asyncio.Task[None]] = []

    async def run(self) -> RunStats:
        """Fetch, process and write every row of the planned tars (until stopped by a signal)."""
        self.plan.output.cleanup([t.index for t in self.plan.todo])
        async with (
            HttpClient(self.cfg.http) as self.http,
            ImagingPool(self.cfg.run.worker_count, self.cfg.imaging, self.cfg.durability.worker_max_bytes) as self.pool,
            self.monitor.watching(self.scheduler, self.budget, self.pool),
        ):
            self._producer = asyncio.create_task(self._produce())
            self._dispatcher = asyncio.create_task(self._dispatch())
            guards = self._guards = [asyncio.create_task(self._watchdog()), asyncio.create_task(self._disk_monitor())]
            try:
                with SignalGate(self.stop):
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._dispatcher
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._producer
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                    await asyncio.gather(*self._finalizers, return_exceptions=True)
            finally:
                for g in guards:
                    g.cancel()
                for w in list(self.writers.values()):
                    self._abandon(w)  # left open only when stopped: never finalize half a tar
        self.stats.finished = time.monotonic()
        if self.fatal is not None:
            raise self.fatal
        return self.stats

    # -- stopping ------------------------------------------------------------------------------
    def stop(self, sig: signal.Signals | None = None, timeout: float | None = None) -> None:
        """Stop reading; tars still being read are abandoned now, the others get ``timeout`` seconds."""
        if self.stopping:
            return
        self.stopping = True
        self.stop_signal = sig
        self._producer.cancel()
        for w in list(self.writers.values()):
            if not w.reading_done:
                self._abandon(w)
        wait = self.cfg.durability.shutdown_timeout if timeout is None else timeout
        self._guards.append(asyncio.create_task(self._stop_after(wait)))
        self._maybe_stopped()

    def _fail_run(self, exc: RunAborted) -> None:
        if self.fatal is None:
            self.fatal = exc
        self.stopping = False  # a fatal error overrides a gentle stop already under way
        self.stop(timeout=0)

    async def _stop_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        for w in list(self.writers.values()):
            self._abandon(w)
        self._maybe_stopped()

    def _abandon(self, writer: ShardWriter) -> None:
        """Drop an unfinished tar: its .tmp goes, its in-flight rows are cancelled."""
        del self.writers[writer.files.index]
        writer.abort()
        self.tars_abandoned += 1
        for key, row in list(self._open_rows.items()):
            if row.tar_index == writer.files.index:
                del self._open_rows[key]
                task = self._row_tasks.pop(key, None)
                if task is not None:
                    task.cancel()

    def _maybe_stopped(self) -> None:
        if self.stopping and not self.writers:
            self._dispatcher.cancel()

    def summary_line(self) -> str:
        """The one line printed when a run ends early."""
        why = self.stop_signal.name if self.stop_signal else "error"
        return (
            f"fetcher: stopped by {why}: {self.stats.tars_done} tars written, {self.tars_abandoned} abandoned "
            f"(redone on the next run), {self.stats.rows_done} rows done, {self.stats.ok} ok"
        )

    # -- guards --------------------------------------------------------------------------------
    async def _watchdog(self) -> None:
        """No hang at the end of a tar: rows of a fully read tar without progress for too long fail."""
        limit = self.cfg.durability.shard_watchdog
        if limit <= 0:
            return
        while True:
            await asyncio.sleep(min(5.0, limit / 4))
            now = time.monotonic()
            for w in list(self.writers.values()):
                if w.reading_done and not w.complete and now - w.last_progress > limit:
                    self._expire(w, limit)

    def _expire(self, writer: ShardWriter, limit: float) -> None:
        for key, row in list(self._open_rows.items()):
            if row.tar_index != writer.files.index:
                continue
            task = self._row_tasks.pop(key, None)
            if task is not None:
                task.cancel()
            self._finish(SampleResult.failure(row, Reason.TIMEOUT, f"shard watchdog: no progress for {limit:g}s"))

    async def _disk_monitor(self) -> None:
        try:
            await self.disk.monitor()
        except DiskFull as exc:
            self._fail_run(exc)

    # -- stages --------------------------------------------------------------------------------
    async def _produce(self) -> None:
        try:
            for tar in self.plan.todo:
                try:
                    await self.disk.ensure()
                except DiskFull as exc:
                    self._fail_run(exc)
                    return
                retry = self.plan.retries.get(tar.index)
                try:
                    writer = self.plan.output.new_writer(tar.index, tar.size, replace=retry is not None)
                except OSError as exc:  # read-only folder, no inodes left: one line, exit 75
                    self._fail_run(_storage_error(exc, f"creating tar {tar.index:05d} in {self.cfg.run.output}"))
                    return
                self.writers[tar.index] = writer
                if retry is not None:
                    for kept in retry.keep:
                        writer.add_existing(kept.result, kept.members)
                try:
                    await self._read_tar(tar, retry)
                except InputDataError as exc:
                    self._fail_run(exc)
                    return
                writer.reading_done = True
                self._maybe_finalize(writer)
        finally:
            self.scheduler.close()

    async def _read_tar(self, tar: TarPlan, retry: RetryPlan | None) -> None:
        policy = self.http.policy
        rows = iter_rows(
            self.plan.files, tar, self.cfg.input, self.cfg.run.samples_per_tar, self.cfg.imaging.verify_hash
        )
        for row in rows:
            if retry is not None and row.row_in_tar not in retry.retry_rows:
                continue
            self.monitor.row_read()
            self._open_rows[row.key] = row
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

    async def _dispatch(self) -> None:
        async for job in self.scheduler.dispatch():
            if job.verdict is not None:  # host given up by the breaker: final without a request (no permit)
                if job.row.key in self._open_rows:
                    self._finish(self._fetch_failure(job, job.verdict))
                continue
            if job.row.key not in self._open_rows:
                # Its tar was abandoned or the watchdog already failed it: release the permit only.
                self.scheduler.complete(job, FetchOutcome(reason=Reason.SHUTDOWN))
                continue
            task = asyncio.create_task(self._handle(job))
            self._tasks.add(task)
            self._row_tasks[job.row.key] = task
            task.add_done_callback(self._tasks.discard)
            await self.budget.wait_room()
            await self.disk.wait_ok()

    async def _handle(self, job: Job) -> None:
        try:
            outcome = await self.http.fetch(job.url)
        except asyncio.CancelledError:
            self.scheduler.complete(job, FetchOutcome(reason=Reason.SHUTDOWN))
            raise
        self.monitor.fetched(outcome)
        if not self.scheduler.complete(job, outcome):
            if self._row_tasks.get(job.row.key) is asyncio.current_task():
                del self._row_tasks[job.row.key]
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
        if self._open_rows.pop(res.row.key, None) is None:
            return  # its tar was abandoned, or the watchdog already recorded it
        self._row_tasks.pop(res.row.key, None)
        writer = self.writers[res.row.tar_index]
        try:
            if not writer.add(res):
                return
        except OSError as exc:
            self._storage_failed(writer, exc)
            return
        self.monitor.row_done(res)
        self._maybe_finalize(writer)

    def _storage_failed(self, writer: ShardWriter, exc: OSError) -> None:
        self._fail_run(_storage_error(exc, f"writing tar {writer.files.index:05d} in {self.cfg.run.output}"))

    def _maybe_finalize(self, writer: ShardWriter) -> None:
        if not writer.complete or self.writers.get(writer.files.index) is not writer:
            return
        del self.writers[writer.files.index]
        self._finalizers.append(asyncio.create_task(self._finalize(writer)))
        self._maybe_stopped()

    async def _finalize(self, writer: ShardWriter) -> None:
        try:
            await asyncio.to_thread(writer.finalize)
        except OSError as exc:
            writer.abort()
            self._storage_failed(writer, exc)
            return
        self.monitor.tar_done()


def _storage_error(exc: OSError, where: str) -> RunAborted:
    if is_disk_full(exc):  # ENOSPC covers both bytes and inodes
        return DiskFull(f"disk full {where} ({exc.strerror}); nothing half-written was kept, "
                        "rerun the same command to resume")  # fmt: skip
    return RunAborted(f"I/O error {where}: {exc}; rerun the same command to resume")


def run(cfg: Config) -> RunStats:
    """Plan and run, on uvloop. Raises ConfigError before any traffic if the input is bad."""
    import uvloop

    plan = prepare(cfg)
    pipeline = Pipeline(plan)
    try:
        stats = uvloop.run(pipeline.run())
    except RunAborted:
        print(pipeline.summary_line(), file=sys.stderr)
        raise
    if pipeline.stop_signal is not None:
        print(pipeline.summary_line(), file=sys.stderr)
    else:
        print(stats.format(), file=sys.stderr)
    stats.exit_code = exit_code_for(pipeline.stop_signal)
    return stats
