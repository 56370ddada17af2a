"""One output tar in progress: its samples, its results, its checkpoints and the ordered commit of its files."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from fetcher.records import SampleResult, Status
from storage.atomic import TMP_SUFFIX, fsync_dir, remove_path, write_bytes
from storage.backend import unique_tmp
from storage.journal import Entry, Journal, Lease
from storage.layout import ShardFiles
from storage.results import row_record, sample_json, write_records
from storage.sinks import SampleSink
from storage.tarwriter import TarSink

# Called with the committed local paths, in commit order (sink outputs, results parquet, stats marker).
Publisher = Callable[[list[str]], None]

logger = logging.getLogger(__name__)


class TarDone(Exception):
    """The tar was completed (by another process) since the run was planned."""


def clear_leftovers(files: ShardFiles, keep: str = "") -> list[str]:
    """Remove temp files of earlier writers of this tar (call only while holding its lease)."""
    removed = []
    prefix = os.path.basename(files.stem)
    for name in os.listdir(files.root):
        if name == keep or not name.endswith(TMP_SUFFIX) or not name.startswith(prefix):
            continue
        if name[len(prefix)] not in "._":  # 00003.tar.x.tmp, 00003_stats.json.tmp; never 000031...
            continue
        path = os.path.join(files.root, name)
        remove_path(path)
        removed.append(name)
    return removed


def open_writer(
    files: ShardFiles,
    expected: int,
    save_columns: list[str],
    hash_column: str | None = "sha256",
    *,
    make_sink: Callable[[], SampleSink] | None = None,
    publish: Publisher | None = None,
    replace: bool = False,
    checkpoint: tuple[int, float] | None = (256, 1.0),
) -> ShardWriter:
    """Claim tar ``files.index`` and open its writer, continuing the checkpoint an earlier writer left.

    Raises TarBusy (storage.journal) when a live process holds the tar, TarDone when it is complete.
    ``make_sink`` builds a non-resumable sink (files, parquet); without it the tar is a resumable
    TarSink, checkpointed every ``checkpoint`` = (rows, seconds) unless ``checkpoint`` is None.
    """
    lease = Lease(files.lease)
    lease.acquire()
    try:
        if files.is_complete() and not replace:
            raise TarDone(files.tar)
        resumable = make_sink is None and not replace and checkpoint is not None
        tmp = unique_tmp(files.tar)
        entries: list[Entry] = []
        resumed = Journal.load(files.journal) if resumable else None
        if resumed is not None:
            old = os.path.join(files.root, os.path.basename(resumed.tmp))
            size = os.path.getsize(old) if os.path.exists(old) else -1
            entries = list(itertools.takewhile(lambda e: e.offset <= size, resumed.entries))
            if entries:
                # A link, not a rename: until the new journal names the new file, the old name stays valid.
                os.link(old, tmp)
        journal = None
        sink: SampleSink
        if resumable and checkpoint is not None:
            # The temp tar exists before the journal naming it is written: that write's directory
            # fsync makes both names durable.
            last = entries[-1] if entries else None
            sink = TarSink(files.tar, tmp, last.offset if last else 0, last.bytes_written if last else 0,
                           last.samples if last else 0)  # fmt: skip
            journal = Journal(files.journal, *checkpoint)
            journal.start(tmp, entries)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(files.journal)
        clear_leftovers(files, keep=os.path.basename(tmp))
        if make_sink is not None:
            sink = make_sink()
        elif journal is None:
            sink = TarSink(files.tar, tmp)
        if entries:
            logger.info("tar %05d: continuing with %d rows kept by an earlier run", files.index, len(entries))
        return ShardWriter(files, expected, save_columns, hash_column, sink=sink, publish=publish, replace=replace,
                           journal=journal, lease=lease, resumed=entries)  # fmt: skip
    except BaseException:
        lease.release()
        raise


class ShardWriter:
    """Collects the results of the ``expected`` rows of one tar and commits them atomically.

    Commit order is tar (or the sink's files), then parquet, then the stats marker, so a crash at any
    instant leaves either a complete shard (marker present) or an open one. ``publish`` then moves the
    committed files to their final place in that same order. With a ``journal`` (resumable sinks) the
    open tar is checkpointed as rows finish and continued by the next writer (``resumed``); ``lease``
    is the claim on the tar, checked again right before publishing.
    """

    def __init__(
        self,
        files: ShardFiles,
        expected: int,
        save_columns: list[str],
        hash_column: str | None = "sha256",
        sink: SampleSink | None = None,
        publish: Publisher | None = None,
        replace: bool = False,
        journal: Journal | None = None,
        lease: Lease | None = None,
        resumed: list[Entry] | None = None,
    ) -> None:
        self.files = files
        self.expected = expected
        self.save_columns = save_columns
        self.hash_column = hash_column
        self.replace = replace  # rewriting a finished tar (--retry-failed): see _commit_replacement
        self.records: list[dict[str, Any]] = []  # results-parquet rows (row_record), in finishing order
        self.sink: SampleSink = sink if sink is not None else TarSink(files.tar)
        self.publish = publish
        self.journal = journal
        self.lease = lease
        self.done_rows: set[int] = set()
        for entry in resumed or []:
            self.done_rows.add(entry.row)
            self.records.append(entry.record)
        self.resumed_rows = len(self.done_rows)
        self.started = time.time()
        self.last_progress = time.monotonic()
        self.reading_done = False
        self._committed = False

    @property
    def complete(self) -> bool:
        """Every input row of this tar has a final result."""
        return self.reading_done and len(self.records) == self.expected

    def add(self, res: SampleResult) -> bool:
        """Record a final result; successful samples go into the tar right away.

        Returns False (and ignores it) for a second result of the same row: a row the watchdog
        already failed may still finish late, and it must not appear twice.
        """
        if res.row.row_in_tar in self.done_rows:
            return False
        self.done_rows.add(res.row.row_in_tar)
        self.last_progress = time.monotonic()
        img = res.image
        if res.status is Status.SUCCESS and img is not None and img.data is not None:
            caption = (res.row.caption or "").encode("utf-8", "replace")
            res.bytes_written = len(img.data)
            self.sink.add_sample(
                res.row.key, {img.ext: img.data, "txt": caption, "json": sample_json(res, self.hash_column)}, res
            )
            img.data = None  # the bytes live in the tar now; keep memory flat
        self._record(row_record(res, self.save_columns, self.hash_column), res.row.row_in_tar)
        return True

    def _record(self, rec: dict[str, Any], row: int) -> None:
        self.records.append(rec)
        if self.journal is not None:
            sink = self.sink
            self.journal.add(Entry(row, rec, sink.offset, sink.bytes_written, sink.samples))
            if self.journal.due():
                self.checkpoint()

    def checkpoint(self) -> int:
        """Make finished rows durable: tar bytes first, then their journal lines. Returns rows written."""
        if self.journal is None or not self.journal.pending:
            return 0
        self.sink.sync()
        return self.journal.sync()

    def tick(self) -> None:
        """Checkpoint if rows have waited longer than the journal's interval (called periodically)."""
        if self.journal is not None and self.journal.due():
            self.checkpoint()

    @property
    def resumable(self) -> bool:
        """True when a stop keeps this tar's finished rows for the next run (webdataset tars)."""
        return self.journal is not None and self.sink.resumable

    def suspend(self) -> tuple[int, int]:
        """Stop writing this tar, keeping what is checkpointed for the next run.

        Returns the rows kept and how many of them are samples (successes).
        """
        kept = 0
        try:
            if self.journal is not None and self.resumable:
                with contextlib.suppress(OSError):  # a full disk: the last good checkpoint stands
                    self.checkpoint()
                kept = self.journal.synced_rows
                if kept:
                    self.journal.close()
                    self.sink.close()
                else:  # nothing worth keeping: leave no clutter
                    self.journal.remove()
                    self.sink.abort()
            else:
                self.sink.abort()
        finally:
            if self.lease is not None:
                self.lease.release()
        ok = sum(1 for r in self.records[:kept] if r["status"] == Status.SUCCESS.value)
        return kept, ok

    def add_existing(self, res: SampleResult, members: dict[str, bytes]) -> None:
        """Carry over a sample of the tar being replaced, members copied verbatim."""
        if res.row.row_in_tar in self.done_rows:
            raise ValueError(f"row {res.row.key} carried over twice")
        self.done_rows.add(res.row.row_in_tar)
        if members:  # with its result: the files sink's metadata row needs caption and size
            self.sink.add_sample(res.row.key, members, res)
        self.records.append(row_record(res, self.save_columns, self.hash_column))

    def stats(self) -> dict[str, Any]:
        """The ``NNNNN_stats.json`` content."""
        statuses = Counter(r["status"] for r in self.records)
        reasons = Counter(r["error_message"] for r in self.records if r["error_message"] is not None)
        return {
            "tar": self.files.index,
            "count": len(self.records),
            "successes": statuses.get(Status.SUCCESS.value, 0),
            "failed_to_download": statuses.get(Status.FAILED_TO_DOWNLOAD.value, 0),
            "failed_to_resize": statuses.get(Status.FAILED_TO_RESIZE.value, 0),
            "filtered": statuses.get(Status.FILTERED.value, 0),
            "status_dict": dict(reasons),
            "bytes_downloaded": sum(r["bytes_downloaded"] or 0 for r in self.records),
            "bytes_written": self.sink.bytes_written,
            "start_time": self.started,
            "end_time": time.time(),
        }

    def finalize(self) -> dict[str, Any]:
        """Commit tar, results parquet and stats marker, in that order (blocking: run in a thread).

        Raises LeaseLost (and publishes nothing) when another writer has taken the tar over.
        """
        if self.lease is not None:
            self.lease.verify()
        if self.replace:
            stats = self._commit_replacement()
        else:
            self.sink.commit()
            self._committed = True
            write_records(self.files.parquet, self.records, self.save_columns, self.hash_column)
            stats = self._mark_complete(self.stats(), [*self.sink.outputs, self.files.parquet])
        self._release()
        return stats

    def _release(self) -> None:
        if self.journal is not None:
            self.journal.remove()
        if self.lease is not None:
            self.lease.release()

    def _commit_replacement(self) -> dict[str, Any]:
        # The new results are complete on disk (as .tmp) before the old marker goes; only then does
        # the sink commit over its old output (any format: a rename, or the files folder swapped
        # whole) and the new marker follow. A crash in between leaves a tar without marker, which
        # the next run redoes from scratch: no row is lost or duplicated, at worst re-downloaded.
        new_parquet = self.files.parquet + TMP_SUFFIX
        write_records(new_parquet, self.records, self.save_columns, self.hash_column)
        stats = self.stats()
        os.unlink(self.files.stats)
        fsync_dir(self.files.root)
        self._committed = True
        self.sink.commit()
        os.replace(new_parquet, self.files.parquet)
        fsync_dir(self.files.root)
        return self._mark_complete(stats, [*self.sink.outputs, self.files.parquet])

    def _mark_complete(self, stats: dict[str, Any], committed: list[str]) -> dict[str, Any]:
        """Write the stats marker last, then tell the dataset indexes (wids-index.json) about the tar."""
        write_bytes(self.files.stats, json.dumps(stats, indent=1).encode())
        if self.publish is not None:
            self.publish([*committed, self.files.stats])
        return stats

    def abort(self) -> None:
        """Drop everything written so far for this tar (a committed tar without marker, too)."""
        try:
            self.sink.abort()
            if self._committed and not self.files.is_complete():
                for path in (self.files.tar, self.files.parquet):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        finally:
            with contextlib.suppress(OSError):
                self._release()
