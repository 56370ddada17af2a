"""The tars one engine has open: open them tar by tar as their rows are read (skipping those another
process holds or finished), add final results, publish complete ones off the event loop, checkpoint them
on time, and suspend them at a stop.

A storage failure (disk full, read-only folder, I/O error) is never raised into the flow: it goes to
``on_fatal`` as one RunAborted line (exit 75), and the engine stops with nothing half-written published.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from fetcher.diskguard import DiskFull, DiskGuard, is_disk_full
from fetcher.lifecycle import RunAborted
from fetcher.monitor import Monitor
from fetcher.plan import RunPlan
from fetcher.reader import TarPlan
from fetcher.records import InputRow, SampleResult
from fetcher.retry_failed import RetryPlan
from fetcher.stopping import StopCounts
from fetcher.tarfeed import ListFeed
from storage.journal import LeaseLost, TarBusy
from storage.output import Output
from storage.shard import ShardWriter, TarDone

log = logging.getLogger(__name__)
OPEN_TARS_PER_ENGINE = 2  # a box engine's tars in progress: one finishing, the next already fetching


def storage_error(exc: OSError, where: str) -> RunAborted:
    """The one-line error a failed write ends the run with (DiskFull for ENOSPC/EDQUOT)."""
    if is_disk_full(exc):  # ENOSPC covers both bytes and inodes
        return DiskFull(f"disk full {where} ({exc.strerror}); nothing half-written was kept, "
                        "rerun the same command to resume")  # fmt: skip
    return RunAborted(f"I/O error {where}: {exc}; rerun the same command to resume")


class OpenTars:
    """Writers of the tars being written, by tar index, and what became of those that are not."""

    def __init__(self, output: Output, where: str, monitor: Monitor, on_fatal: Callable[[RunAborted], None]) -> None:
        self.output = output
        self.where = where  # the output folder, as the operator named it (for error lines)
        self.monitor = monitor
        self.on_fatal = on_fatal
        self.writers: dict[int, ShardWriter] = {}
        self.publishing: list[asyncio.Task[None]] = []
        self.busy = 0  # tars another process holds or finished meanwhile
        self._stopped: list[StopCounts] = []  # one per tar suspended
        self._closed = asyncio.Event()  # a tar was completed: a box engine may take the next

    async def read(self, plan: RunPlan, disk: DiskGuard) -> AsyncIterator[InputRow]:
        """The rows this run does, tar by tar (the plan's, or those taken from a box's queue): each tar is
        opened (once the disk has room) before its first row is read, and published once its last one is
        final. Raises RunAborted."""
        todo, every = {t.index: t for t in plan.todo}, {t.index: t for t in plan.tars}
        feed = plan.feed
        order = feed or ListFeed(list(todo))
        while True:
            # From a box's queue an engine takes a tar only when it has room for one: taking them all at
            # once (reading is quick) would leave the engines started later idle.
            while feed is not None and len(self.writers) >= OPEN_TARS_PER_ENGINE:
                self._closed.clear()
                await self._closed.wait()
            if (index := order.take()) is None:
                return
            if feed is not None:  # a box engine plans the rows of the tars it takes
                self._plan_more(plan.rows_of(every[index]))
            if (tar := todo.get(index)) is None:  # complete by the time this engine planned (another pod's)
                self._plan_fewer(plan.rows_of(every[index]))
                continue
            await disk.ensure()
            writer = self.open(tar, plan.retries.get(tar.index))
            if writer is None:  # a duplicate process holds or finished it
                continue
            for row in plan.rows_to_do(tar, writer.done_rows):
                yield row
            writer.reading_done = True
            self.maybe_publish(writer)

    def open(self, tar: TarPlan, retry: RetryPlan | None) -> ShardWriter | None:
        """The writer of ``tar`` (None when a duplicate process holds or finished it). Raises RunAborted
        when the output cannot take it."""
        try:
            writer = self.output.new_writer(tar.index, tar.size, replace=retry is not None)
        except (TarBusy, TarDone) as exc:
            # A duplicate process (two pods for one index) holds or finished it: don't redo its work.
            log.warning("skipping tar %05d: %s", tar.index, exc or "completed meanwhile")
            self.busy += 1
            self._plan_fewer(tar.size if retry is None else len(retry.retry_rows))
            return None
        except OSError as exc:  # read-only folder, no inodes left: one line, exit 75
            raise storage_error(exc, f"creating tar {tar.index:05d} in {self.where}") from None
        self._plan_fewer(writer.resumed_rows)
        self.writers[tar.index] = writer
        for kept in retry.keep if retry is not None else ():
            writer.add_existing(kept.result, kept.members)
        return writer

    def _plan_more(self, rows: int) -> None:
        """A box engine took a tar: its ``rows`` are this engine's to do."""
        self.monitor.stats.total_rows += rows
        self.monitor.metrics.planned_rows = self.monitor.stats.total_rows

    def _plan_fewer(self, rows: int) -> None:
        """``rows`` of the plan need no work from this run (kept by a checkpoint, or another's tar)."""
        self.monitor.stats.skip_rows(rows)
        self.monitor.metrics.planned_rows = self.monitor.stats.total_rows

    def add(self, res: SampleResult) -> None:
        """Write one final row result into its tar; publish the tar once it is complete."""
        writer = self.writers[res.row.tar_index]
        try:
            if not writer.add(res):
                return
        except OSError as exc:
            self._failed(writer, exc)
            return
        self.monitor.row_done(res)
        self.maybe_publish(writer)

    def maybe_publish(self, writer: ShardWriter) -> None:
        """Publish ``writer``'s tar if every row of it is final (in a thread: commit is fsync-bound)."""
        if not writer.complete or self.writers.get(writer.files.index) is not writer:
            return
        del self.writers[writer.files.index]
        self._closed.set()
        self.publishing.append(asyncio.create_task(self._publish(writer)))

    async def _publish(self, writer: ShardWriter) -> None:
        try:
            await asyncio.to_thread(writer.finalize)
        except LeaseLost as exc:
            log.warning("tar %05d not published: %s", writer.files.index, exc)
            writer.sink.abort()  # our temp only: the journal and lease now belong to the other writer
            return
        except OSError as exc:
            writer.abort()
            self._failed(writer, exc)
            return
        self.monitor.tar_done()

    def fully_read(self) -> list[ShardWriter]:
        """Open tars whose every row was read, not all final yet: the tail the guards watch."""
        return [w for w in self.writers.values() if w.reading_done and not w.complete]

    def tick(self) -> None:
        """Checkpoint every open tar whose finished rows waited long enough."""
        for w in list(self.writers.values()):
            try:
                w.tick()
            except OSError as exc:
                self._failed(w, exc)

    def suspend_all(self) -> list[int]:
        """Stop every open tar (left open only by a stop): its checkpoint keeps each finished row for the
        next run, and half a tar is never published. Returns their indexes."""
        indexes = list(self.writers)
        for writer in self.writers.values():
            resumable = writer.resumable
            rows, ok = writer.suspend()
            # A format that cannot continue a tar drops it: the next run redoes it.
            self._stopped.append(StopCounts(int(resumable), rows, ok, int(not resumable)))
        self.writers.clear()
        return indexes

    @property
    def stop_counts(self) -> StopCounts:
        """What a stop did with the open tars."""
        return StopCounts.sum_of(self._stopped)

    def _failed(self, writer: ShardWriter, exc: OSError) -> None:
        self.on_fatal(storage_error(exc, f"writing tar {writer.files.index:05d} in {self.where}"))
