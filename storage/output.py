"""The output of a run: format (webdataset, files, parquet), location (local or object store) and the
dataset-level indexes kept up to date as tars complete."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

from fetcher.options import ConfigError, opt
from storage.atomic import TMP_SUFFIX
from storage.backend import Backend, is_remote, open_backend
from storage.indexes import WidsIndex, completed, update_metadata
from storage.layout import ShardFiles
from storage.shard import ShardWriter
from storage.sinks import FilesSink, ParquetSink, SampleSink
from storage.tarwriter import TarSink

OUTPUT_FORMATS = ("webdataset", "files", "parquet")


@dataclass(frozen=True)
class OutputOptions:
    """Options of the writing stage."""

    output_format: str = opt(
        "--output-format",
        "webdataset",
        "webdataset (tars), files (images + .txt per tar folder, metadata.parquet) or parquet (image bytes column)",
        choices=OUTPUT_FORMATS,
        aliases=("--output_format",),
    )
    wids_index: bool = opt("--wids-index", True, "keep wids-index.json (wids shard index) of completed tars")
    staging_dir: str = opt(
        "--staging-dir", "", "local folder for tars being written when --output is an object store URL (default: tmp)"
    )
    new_run: bool = opt(
        "--new-run",
        False,
        "start over in an --output whose run record (_fetcher_run.json) differs; it must hold nothing else",
    )
    print_simpletuner_config: bool = opt(
        "--print-simpletuner-config", False, "print a SimpleTuner dataloader entry for this output and exit"
    )

    def validate(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"--output-format {self.output_format!r}: expected one of {', '.join(OUTPUT_FORMATS)}")


class Output:
    """Creates the ShardWriter of each tar and publishes what it commits."""

    def __init__(
        self, url: str, opts: OutputOptions, save_columns: list[str], hash_column: str | None = "sha256"
    ) -> None:
        self.url = url
        self.opts = opts
        self.save_columns = save_columns
        self.hash_column = hash_column
        self.backend: Backend = open_backend(url)
        if is_remote(url):
            digest = hashlib.sha1(url.encode()).hexdigest()[:12]
            self.local_root = opts.staging_dir or os.path.join(tempfile.gettempdir(), f"fetcher-staging-{digest}")
        else:
            self.local_root = self.backend.root
        os.makedirs(self.local_root, exist_ok=True)
        self._done: set[int] | None = None
        self.wids = WidsIndex(self.backend, os.path.basename(url.rstrip("/"))) if self._wants_wids else None

    @property
    def _wants_wids(self) -> bool:
        return self.opts.output_format == "webdataset" and self.opts.wids_index

    def is_complete(self, index: int) -> bool:
        """A tar is done when its stats marker is at the final location (one listing, not one
        request per tar: object stores charge per request and shards have thousands of tars)."""
        if self._done is None:
            self._done = set(completed(self.backend))
        return index in self._done

    def cleanup(self, indices: list[int]) -> list[str]:
        """Remove leftovers of an interrupted run of tars ``indices`` in the local (or staging) folder.

        Only this run's tars: other workers sharing the folder have their own tars in progress.
        Index temp files have unique names; those of crashed processes go once they are an hour old.
        """
        mine = {f"{k:05d}" for k in indices}
        removed: list[str] = []
        now = time.time()
        for name in os.listdir(self.local_root):
            if not name.endswith(TMP_SUFFIX):
                continue
            path = os.path.join(self.local_root, name)
            digits = re.match(r"\d{5,}", name)
            stale_index_tmp = digits is None and now - os.path.getmtime(path) > 3600
            if (digits is not None and digits.group(0) in mine) or stale_index_tmp:
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                removed.append(name)
        return removed

    def new_writer(self, index: int, expected: int, replace: bool = False) -> ShardWriter:
        """The writer of tar ``index``; its commit publishes tar, parquet and marker, in that order."""
        files = ShardFiles(self.local_root, index)
        sink: SampleSink
        if self.opts.output_format == "files":
            sink = FilesSink(files, self.save_columns)
        elif self.opts.output_format == "parquet":
            sink = ParquetSink(files)
        else:
            sink = TarSink(files.tar)
        return ShardWriter(
            files, expected, self.save_columns, self.hash_column, sink=sink, publish=self._publish, replace=replace
        )

    def _publish(self, paths: list[str]) -> None:
        for path in paths:
            self.backend.publish(path, os.path.basename(path))
        self.update_indexes()

    def update_indexes(self) -> None:
        """Bring wids-index.json / metadata.parquet up to date; a failure here never fails the tar
        (``python -m fetcher metadata OUTPUT`` rebuilds them)."""
        try:
            if self.wids is not None:
                self.wids.update()
            if self.opts.output_format == "files":
                update_metadata(self.backend)
        except (OSError, ValueError) as exc:
            print(f"fetcher: warning: index update failed ({exc}); rerun `python -m fetcher metadata`", file=sys.stderr)


def rebuild(url: str) -> dict[str, int]:
    """``python -m fetcher metadata OUTPUT``: rebuild wids-index.json and metadata.parquet from the
    completed tars found there; returns how many tars each covers."""
    backend = open_backend(url)
    names = set(backend.listdir())
    out: dict[str, int] = {}
    if any(n.endswith(".tar") for n in names):
        out["wids-index.json"] = len(WidsIndex(backend, os.path.basename(url.rstrip("/"))).update())
    if any(n.endswith("_metadata.parquet") for n in names):
        out["metadata.parquet"] = len(update_metadata(backend))
    return out
