"""The data flow of one run, top to bottom:

reader (rows of this shard's tars) -> URL policy -> scheduler (per-host slots, global permits)
  -> http fetch -> imaging process pool (bounded bytes in flight) -> ShardWriter (tar, parquet, stats)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass, field

from fetcher.boxslots import BoxSlots
from fetcher.budget import ByteBudget
from fetcher.config import Config
from fetcher.diskguard import DiskFull, DiskGuard, is_disk_full
from fetcher.fetchers import Fetch, HttpFetch, LocalFetch, LocalRoots, local_roots
from fetcher.fleet import RedisSlots, shared_slots
from fetcher.hostmix import HostMix
from fetcher.http import HttpClient
from fetcher.lifecycle import RunAborted, SignalGate, exit_code_for
from fetcher.monitor import Monitor
from fetcher.netguard import UrlRefused
from fetcher.options import ConfigError
from fetcher.reader import InputDataError, InputFile, TarPlan, iter_rows, open_inputs, plan_tars
from fetcher.readers import reader
from fetcher.records import FetchOutcome, InputRow, Reason, SampleResult, Status
from fetcher.retry_failed import RetryPlan, plan_retry
from fetcher.runrecord import claim_output
from fetcher.scheduler import Job, Scheduler
from fetcher.summary import RunStats
from fetcher.tarfeed import ListFeed, TarFeed
from fetcher.workers import ImagingPool
from storage.backend import is_remote
from storage.journal import LeaseLost, TarBusy
from storage.layout import ShardFiles
from storage.output import Output
from storage.shard import ShardWriter, TarDone

logger = logging.getLogger(__name__)
TICK = 0.5  # seconds between checkpoint-interval and tail-bound checks
OPEN_TARS_PER_ENGINE = 2  # a box engine's tars in progress: one finishing, the next already fetching

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, worked out (and validated) before any network traffic."""

    cfg: Config
    files: list[InputFile]
    tars: list[TarPlan]
    todo: list[TarPlan]
    output: Output
    retries: dict[int, RetryPlan] = field(default_factory=dict)  # --retry-failed: finished tars to revisit
    local_roots: LocalRoots | None = None  # rows are local images in these folders/tars (LocalFetch)

    def rows_of(self, tar: TarPlan) -> int:
        """Rows this run has to finish in ``tar`` (all of them, or those --retry-failed revisits)."""
        return len(self.retries[tar.index].retry_rows) if tar.index in self.retries else tar.size

    def new_stats(self) -> RunStats:
        """Counters for this plan: the rows it has to finish, the tars it covers."""
        rows = sum(self.rows_of(t) for t in self.todo)
        return RunStats(total_rows=rows, tars_total=len(self.tars), tars_skipped=len(self.tars) - len(self.todo))


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


def prepare(cfg: Config, claim: bool = True) -> RunPlan:
    """Open inputs, plan this shard's tars and find those already complete; ``claim``: check (or write)
    the output's run record too. Raises ConfigError."""
    files = open_inputs(cfg.run.input, cfg.input, cfg.imaging.verify_hash)
    roots = local_roots([(f.path, reader(f.source.fmt)) for f in files], cfg.input.images_from)
    total = sum(f.num_rows for f in files)
    tars = plan_tars(total, cfg.run.samples_per_tar, cfg.run.shard_pair)
    try:
        output = Output(cfg.run.output, cfg.output, cfg.input.save_list, cfg.imaging.hash_column)
    except OSError as exc:  # /proc/x, an existing file, no permission: a bad --output, not a crash
        why = exc.strerror or exc
        raise ConfigError(f"--output {cfg.run.output}: cannot use it as the output folder ({why})") from None
    if cfg.durability.retry_failed and is_remote(cfg.run.output):
        raise ConfigError("--retry-failed rewrites finished tars in place: use it with a local --output")
    if claim:  # a box's engines plan after their parent claimed the output: checking again is redundant
        claim_output(cfg, files, output)  # a rerun that would make other tars stops here (storage.manifest)
    todo: list[TarPlan] = []
    retries: dict[int, RetryPlan] = {}
    for t in tars:
        if not output.is_complete(t.index):
            todo.append(t)
        elif cfg.durability.retry_failed:
            retry = plan_retry(ShardFiles(output.local_root, t.index), t, cfg.input.save_list, cfg.output.format)
            if retry is not None:
                retries[t.index] = retry
                todo.append(t)
    return RunPlan(cfg=cfg, files=files, tars=tars, todo=todo, output=output, retries=retries, local_roots=roots)


class Pipeline:
    """Runs one RunPlan to completion."""

    def __init__(self, plan: RunPlan, box: BoxSlots | None = None, feed: TarFeed | None = None) -> None:
        self.plan = plan
        self.cfg = plan.cfg
        self.stats = plan.new_stats()
        # A box engine's share is the tars it takes from the box's queue: its rows count as it takes them.
        self.feed: TarFeed = feed or ListFeed([t.index for t in plan.todo])
        if feed is not None:
            self.stats.total_rows = 0
        self._tar_closed = asyncio.Event()
        sched = self.cfg.scheduler
        # A lease never outlives its request's hard deadline, so a dead box's leases lapse soon after.
        self.shared = shared_slots(sched.politeness_store, sched.politeness_prefix, self.cfg.http.timeout + 10, box)
        self.scheduler = Scheduler(sched, box=self.shared)
        self.hostmix = HostMix(self.cfg.scheduler.concurrency, self.scheduler.limits)
        self.budget = ByteBudget(self.cfg.run.max_bytes_in_flight)
        self.monitor = Monitor(self.cfg.monitor, self.stats, self.cfg.run.shard_pair, plan.output.local_root)
        self.disk = DiskGuard(plan.output.local_root, self.cfg.durability)
        self.monitor.metrics.sources.disk_paused = lambda: int(self.disk.paused)
        if isinstance(self.shared, RedisSlots):
            store = self.shared.counters
            self.monitor.metrics.sources.store_up = lambda: store.up
            self.monitor.metrics.sources.store_errors = lambda: store.errors
        self.monitor.watch_tail(lambda: len(self._open_rows), self.oldest_row_age)
        self.writers: dict[int, ShardWriter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._finalizers: list[asyncio.Task[None]] = []
        self._open_rows: dict[str, InputRow] = {}  # read, not yet final (read order: oldest first)
        self._row_info: dict[str, tuple[str, float]] = {}  # key -> (politeness key, read time)
        self._row_tasks: dict[str, asyncio.Task[None]] = {}
        self._tail_since: dict[int, float] = {}  # tar -> when only rows on struggling hosts were left
        self.tail_bound = self.cfg.durability.tail_timeout or 3 * self.cfg.http.timeout
        self.stopping = False
        self.stop_signal: signal.Signals | None = None
        self.fatal: RunAborted | None = None
        self.tars_suspended = 0
        self.tars_dropped = 0  # open tars of an output format that cannot continue them (redone next run)
        self.tars_busy = 0
        self.kept = [0, 0]  # rows, successes of suspended tars kept in their checkpoints
        self._guards: list[asyncio.Task[None]] = []

    async def run(self) -> RunStats:
        """Fetch, process and write every row of the planned tars (until stopped by a signal)."""
        self.plan.output.cleanup()
        async with (
            HttpClient(self.cfg.http, self.budget, self.cfg.dns, self.monitor.metrics, self.stats.dns) as http,
            ImagingPool(
                self.cfg.run.worker_count,
                self.cfg.imaging,
                self.cfg.durability.worker_max_bytes,
                threads=self.cfg.run.imaging_pool == "threads",
            ) as self.pool,
            self.monitor.watching(self.scheduler, self.budget, self.pool),
        ):
            roots = self.plan.local_roots
            self.fetch: Fetch = (
                HttpFetch(http) if roots is None else LocalFetch(roots, self.cfg.http.max_body_bytes, self.budget)
            )
            self._producer = asyncio.create_task(self._produce())
            self._dispatcher = asyncio.create_task(self._dispatch())
            guards = self._guards = [
                asyncio.create_task(self._watchdog()),
                asyncio.create_task(self._disk_monitor()),
                asyncio.create_task(self._tail_guard()),
            ]
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
                    self._suspend(w)  # left open only when stopped: checkpoint it, never publish half a tar
        self.stats.finished = time.monotonic()
        if self.fatal is not None:
            raise self.fatal
        return self.stats

    # -- stopping ------------------------------------------------------------------------------
    def stop(self, sig: signal.Signals | None = None, timeout: float | None = None) -> None:
        """Stop reading and starting requests; requests in flight get ``timeout`` seconds to finish.

        Queued rows stay unfinished (the next run fetches them); open tars are checkpointed at the end.
        """
        if self.stopping:
            return
        self.stopping = True
        self.stop_signal = sig
        self._producer.cancel()
        for job in self.scheduler.drop():
            self._forget(job.row.key)
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
        for key in list(self._row_tasks):
            self._forget(key)
        self._maybe_stopped()

    def _forget(self, key: str) -> None:
        """Leave a row unfinished in this run (cancelling its request): the next run does it."""
        self._open_rows.pop(key, None)
        self._row_info.pop(key, None)
        task = self._row_tasks.pop(key, None)
        if task is not None:
            task.cancel()

    def _suspend(self, writer: ShardWriter) -> None:
        """Stop an unfinished tar: its checkpoint keeps every finished row for the next run."""
        del self.writers[writer.files.index]
        resumable = writer.resumable
        rows, ok = writer.suspend()
        self.tars_suspended += resumable
        self.tars_dropped += not resumable
        self.kept[0] += rows
        self.kept[1] += ok
        for key, row in list(self._open_rows.items()):
            if row.tar_index == writer.files.index:
                self._forget(key)

    @property
    def stop_counts(self) -> StopCounts:
        """What a stop did with the open tars."""
        return StopCounts(self.tars_suspended, self.kept[0], self.kept[1], self.tars_dropped)

    def _maybe_stopped(self) -> None:
        if self.stopping and not self._row_tasks:
            self._dispatcher.cancel()

    def summary_line(self) -> str:
        """The one line printed when a run ends early."""
        return stop_line(self.stop_signal.name if self.stop_signal else "error", self.stats, self.stop_counts)

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
                    self._give_up(w, Reason.TIMEOUT, f"shard watchdog: no progress for {limit:g}s")

    def _give_up(self, writer: ShardWriter, reason: Reason, detail: str, host: str | None = None) -> None:
        """End every outstanding row of a fully read tar (or its rows on ``host``) with ``reason``, queued
        ones included."""
        keys = {
            k
            for k, row in self._open_rows.items()
            if row.tar_index == writer.files.index and (host is None or self._row_info[k][0] == host)
        }
        self.scheduler.drop(keys)
        for key in keys:
            row = self._open_rows[key]
            task = self._row_tasks.pop(key, None)
            if task is not None:
                task.cancel()
            self._finish(SampleResult.failure(row, reason, detail))

    async def _tail_guard(self) -> None:
        """Checkpoints on time, and the tail bound: once a fully read tar has only rows on struggling
        hosts (failing, throttled, breaker open) left, they are given up after ``tail_bound`` seconds."""
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for w in list(self.writers.values()):
                try:
                    w.tick()
                except OSError as exc:
                    self._storage_failed(w, exc)
                    continue
                if w.reading_done and not w.complete and not self.stopping:
                    self._check_tail(w, now)

    def _check_tail(self, writer: ShardWriter, now: float) -> None:
        index = writer.files.index
        hosts = {self._row_info[k][0] for k, row in self._open_rows.items() if row.tar_index == index}
        if not hosts or not all(self.scheduler.struggling(h) for h in hosts):
            self._tail_since.pop(index, None)
            return
        why = {h: self.scheduler.given_up(h) for h in hosts}
        if all(why.values()):
            # Their breakers already say these hosts fail (timeouts, 5xx, refused): waiting out a cool-down
            # would only hold the tar open. Retryable: --retry-failed fetches them later.
            for host, reason in why.items():
                detail = f"{reason}; its last rows given up with their tar (--retry-failed retries them)"
                self._give_up(writer, Reason.HOST_UNAVAILABLE, detail, host)
            return
        since = self._tail_since.setdefault(index, now)
        if now - since >= self.tail_bound:
            detail = f"given up after {self.tail_bound:g}s with only rows on failing or slowed hosts left in the tar"
            self._give_up(writer, Reason.TAIL_TIMEOUT, detail)

    def oldest_row_age(self) -> float:
        """Seconds since the oldest row still outstanding was read (0 when none)."""
        first = next(iter(self._row_info.values()), None)
        return time.monotonic() - first[1] if first is not None else 0.0

    async def _disk_monitor(self) -> None:
        try:
            await self.disk.monitor()
        except DiskFull as exc:
            self._fail_run(exc)

    # -- stages --------------------------------------------------------------------------------
    async def _produce(self) -> None:
        todo = {t.index: t for t in self.plan.todo}
        shared = not isinstance(self.feed, ListFeed)
        try:
            while True:
                # From the box's queue an engine takes a tar only when it has room for one: taking
                # them all at once (reading is quick) would leave the engines started later idle.
                while shared and len(self.writers) >= OPEN_TARS_PER_ENGINE:
                    self._tar_closed.clear()
                    await self._tar_closed.wait()
                if (index := self.feed.take()) is None:
                    break
                tar = todo.get(index)
                if tar is None:
                    continue  # complete by the time this engine planned (a duplicate pod finished it)
                if shared:
                    self.stats.total_rows += self.plan.rows_of(tar)
                try:
                    await self.disk.ensure()
                except DiskFull as exc:
                    self._fail_run(exc)
                    return
                retry = self.plan.retries.get(tar.index)
                try:
                    writer = self.plan.output.new_writer(tar.index, tar.size, replace=retry is not None)
                except (TarBusy, TarDone) as exc:
                    # A duplicate process (two pods for one index) holds or finished it: don't redo its work.
                    log.warning("skipping tar %05d: %s", tar.index, exc or "completed meanwhile")
                    self.tars_busy += 1
                    self.stats.skip_rows(self.plan.rows_of(tar))
                    self.monitor.metrics.planned_rows = self.stats.total_rows
                    continue
                except OSError as exc:  # read-only folder, no inodes left: one line, exit 75
                    self._fail_run(_storage_error(exc, f"creating tar {tar.index:05d} in {self.cfg.run.output}"))
                    return
                self.stats.skip_rows(writer.resumed_rows)
                self.monitor.metrics.planned_rows = self.stats.total_rows
                self.writers[tar.index] = writer
                if retry is not None:
                    for kept in retry.keep:
                        writer.add_existing(kept.result, kept.members)
                try:
                    await self._read_tar(tar, retry, writer.done_rows)
                except InputDataError as exc:
                    self._fail_run(exc)
                    return
                writer.reading_done = True
                self._maybe_finalize(writer)
        finally:
            self.scheduler.close()
            if self.hostmix.decide():
                self.stats.notes.append(str(self.hostmix.note))

    async def _read_tar(self, tar: TarPlan, retry: RetryPlan | None, done: set[int]) -> None:
        rows = iter_rows(
            self.plan.files, tar, self.cfg.input, self.cfg.run.samples_per_tar, self.cfg.imaging.verify_hash
        )
        for row in rows:
            if (retry is not None and row.row_in_tar not in retry.retry_rows) or row.row_in_tar in done:
                continue  # kept from the earlier run (checkpoint) or final in the tar being revisited
            self.monitor.row_read()
            self._open_rows[row.key] = row
            self._row_info[row.key] = ("", time.monotonic())
            if row.skip_reason is not None:  # --filter / bad --key-col: recorded, never fetched
                self._finish(SampleResult.failure(row, row.skip_reason, row.skip_detail))
                continue
            try:
                url = self.fetch.admit(row.url)
            except UrlRefused as exc:
                self._finish(SampleResult.failure(row, exc.reason, exc.detail))
                continue
            host = self.fetch.slot or self.scheduler.key_of(url)
            if self.fetch.slot is None:  # local files are no host's politeness matter
                self.hostmix.see(host)
            self.fetch.prefetch(url)  # DNS overlaps the wait for a permit instead of holding one
            self._row_info[row.key] = (host, self._row_info[row.key][1])
            await self.scheduler.put(Job(row=row, url=url, host=host))
            self.monitor.row_scheduled()

    async def _dispatch(self) -> None:
        async for job in self.scheduler.dispatch():
            if job.verdict is not None:  # host given up by the breaker: final without a request (no permit)
                if job.row.key in self._open_rows:
                    self._finish(self._fetch_failure(job, job.verdict))
                continue
            if job.row.key not in self._open_rows or self.stopping:
                # Given up, left for the next run, or stopping: release the permit only.
                self.scheduler.complete(job, FetchOutcome(reason=Reason.SHUTDOWN))
                continue
            task = asyncio.create_task(self._handle(job))
            self._tasks.add(task)
            self._row_tasks[job.row.key] = task
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _t: self._maybe_stopped())
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
                if self._row_tasks.get(job.row.key) is asyncio.current_task():
                    del self._row_tasks[job.row.key]
                return  # re-queued for a retry
            if not outcome.ok or outcome.body is None:
                self._finish(self._fetch_failure(job, outcome))
                return
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
            return  # left for the next run, or already given up (tail bound, watchdog)
        self._row_info.pop(res.row.key, None)
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
        self._tar_closed.set()
        self._finalizers.append(asyncio.create_task(self._finalize(writer)))
        self._maybe_stopped()

    async def _finalize(self, writer: ShardWriter) -> None:
        try:
            await asyncio.to_thread(writer.finalize)
        except LeaseLost as exc:
            log.warning("tar %05d not published: %s", writer.files.index, exc)
            writer.sink.abort()  # our temp only: the journal and lease now belong to the other writer
            return
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


def run(cfg: Config, plan: RunPlan | None = None) -> RunStats:
    """Plan (unless given the plan) and run in this process, on uvloop. Raises ConfigError before any
    traffic if the input is bad."""
    import uvloop

    plan = prepare(cfg) if plan is None else plan
    pipeline = Pipeline(plan)
    try:
        stats = uvloop.run(pipeline.run())
    except RunAborted:
        log.info("%s", pipeline.summary_line().removeprefix("fetcher: "))
        raise
    if pipeline.stop_signal is not None:
        log.info("%s", pipeline.summary_line().removeprefix("fetcher: "))
    elif cfg.monitor.log_format == "text":  # json: the progress view already wrote the summary object
        sys.stderr.write(stats.format() + "\n")
    stats.exit_code = exit_code_for(pipeline.stop_signal)
    return stats
