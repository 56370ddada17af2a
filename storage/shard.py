"""One output tar in progress: its samples, its results, and the ordered commit of its three files."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from fetcher.records import SampleResult, Status
from storage.atomic import TMP_SUFFIX, fsync_dir, write_bytes
from storage.layout import ShardFiles
from storage.results import sample_json, write_results
from storage.sinks import SampleSink
from storage.tarwriter import TarSink

# Called with the committed local paths, in commit order (sink outputs, results parquet, stats marker).
Publisher = Callable[[list[str]], None]


class ShardWriter:
    """Collects the results of the ``expected`` rows of one tar and commits them atomically.

    Commit order is tar (or the sink's files), then parquet, then the stats marker, so a crash at any
    instant leaves either a complete shard (marker present) or one that is redone from scratch.
    ``publish`` then moves the committed files to their final place in that same order.
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
    ) -> None:
        self.files = files
        self.expected = expected
        self.save_columns = save_columns
        self.hash_column = hash_column
        self.replace = replace  # rewriting a finished tar (--retry-failed): see _commit_replacement
        self.results: list[SampleResult] = []
        self.sink: SampleSink = sink if sink is not None else TarSink(files.tar)
        self.publish = publish
        self.done_rows: set[int] = set()
        self.started = time.time()
        self.last_progress = time.monotonic()
        self.reading_done = False
        self._committed = False

    @property
    def complete(self) -> bool:
        """Every input row of this tar has a final result."""
        return self.reading_done and len(self.results) == self.expected

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
        self.results.append(res)
        return True

    def add_existing(self, res: SampleResult, members: dict[str, bytes]) -> None:
        """Carry over a sample of the tar being replaced, members copied verbatim."""
        if res.row.row_in_tar in self.done_rows:
            raise ValueError(f"row {res.row.key} carried over twice")
        self.done_rows.add(res.row.row_in_tar)
        if members:  # with its result: the files sink's metadata row needs caption and size
            self.sink.add_sample(res.row.key, members, res)
        self.results.append(res)

    def stats(self) -> dict[str, Any]:
        """The ``NNNNN_stats.json`` content."""
        statuses = Counter(r.status.value for r in self.results)
        reasons = Counter(r.reason.value for r in self.results if r.reason is not None)
        return {
            "tar": self.files.index,
            "count": len(self.results),
            "successes": statuses.get(Status.SUCCESS.value, 0),
            "failed_to_download": statuses.get(Status.FAILED_TO_DOWNLOAD.value, 0),
            "failed_to_resize": statuses.get(Status.FAILED_TO_RESIZE.value, 0),
            "filtered": statuses.get(Status.FILTERED.value, 0),
            "status_dict": dict(reasons),
            "bytes_downloaded": sum(r.bytes_downloaded for r in self.results),
            "bytes_written": self.sink.bytes_written,
            "start_time": self.started,
            "end_time": time.time(),
        }

    def finalize(self) -> dict[str, Any]:
        """Commit tar, results parquet and stats marker, in that order (blocking: run in a thread)."""
        if self.replace:
            return self._commit_replacement()
        self.sink.commit()
        self._committed = True
        write_results(self.files.parquet, self.results, self.save_columns, self.hash_column)
        return self._mark_complete(self.stats(), [*self.sink.outputs, self.files.parquet])

    def _commit_replacement(self) -> dict[str, Any]:
        # The new results are complete on disk (as .tmp) before the old marker goes; only then does
        # the sink commit over its old output (any format: a rename, or the files folder swapped
        # whole) and the new marker follow. A crash in between leaves a tar without marker, which
        # the next run redoes from scratch: no row is lost or duplicated, at worst re-downloaded.
        new_parquet = self.files.parquet + TMP_SUFFIX
        write_results(new_parquet, self.results, self.save_columns, self.hash_column)
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
        self.sink.abort()
        if self._committed and not self.files.is_complete():
            for path in (self.files.tar, self.files.parquet):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
