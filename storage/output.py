"""The output of a run: format (see storage/formats.py), location (local or object store) and the
dataset-level indexes kept up to date as tars complete."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from fetcher.options import ConfigError, opt
from storage.atomic import TMP_SUFFIX, remove_path
from storage.backend import Backend, is_remote, open_backend
from storage.formats import FORMATS, METADATA, WIDS, OutputFormat, format_help
from storage.indexes import MANIFESTS, WidsIndex, completed, update_manifests, update_metadata
from storage.journal import Lease, TarBusy
from storage.layout import ShardFiles
from storage.shard import ShardWriter, open_writer
from storage.sinks import SampleSink

log = logging.getLogger(__name__)

OUTPUT_FORMATS = tuple(FORMATS)


@dataclass(frozen=True)
class OutputOptions:
    """Options of the writing stage."""

    output_format: str = opt(
        "--output-format",
        "webdataset",
        format_help(),
        choices=OUTPUT_FORMATS,
        aliases=("--output_format",),
    )
    wids_index: bool = opt("--wids-index", True, "keep wids-index.json (wids shard index) of completed tars")
    staging_dir: str = opt(
        "--staging-dir", "", "local folder for tars being written when --output is an object store URL (default: tmp)"
    )
    checkpoint_rows: int = opt(
        "--checkpoint-rows", 256, "webdataset: make finished rows of an open tar durable every this many rows"
    )
    checkpoint_interval: float = opt(
        "--checkpoint-interval", 1.0, "webdataset: ... or after this many seconds, whichever comes first"
    )
    new_run: bool = opt(
        "--new-run",
        False,
        "start over in an --output whose run record (_fetcher_run.json) differs; it must hold nothing else",
    )
    print_simpletuner_config: bool = opt(
        "--print-simpletuner-config", False, "print a SimpleTuner dataloader entry for this output and exit"
    )

    @property
    def format(self) -> OutputFormat:
        """The registry entry of ``--output-format``."""
        return FORMATS[self.output_format]

    def validate(self) -> None:
        if self.checkpoint_rows < 1 or self.checkpoint_interval <= 0:
            raise ConfigError("--checkpoint-rows must be >= 1 and --checkpoint-interval > 0")
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
        return WIDS in self.opts.format.indexes and self.opts.wids_index

    def is_complete(self, index: int) -> bool:
        """A tar is done when its stats marker is at the final location (one listing, not one
        request per tar: object stores charge per request and shards have thousands of tars)."""
        if self._done is None:
            self._done = set(completed(self.backend))
        return index in self._done

    def cleanup(self) -> list[str]:
        """Remove leftovers in the local (or staging) folder that belong to no open tar.

        A tar's own temp files and checkpoint are left to whoever claims its lease next (``open_writer``):
        another live process may be writing it. Index temp files have unique names; those of processes
        that are gone (or, for another box sharing the folder, an hour old) are removed, and so are the
        checkpoint and lease files of tars that were completed by a process killed before removing them.
        """
        removed: list[str] = []
        now = time.time()
        for name in os.listdir(self.local_root):
            path = os.path.join(self.local_root, name)
            done = re.fullmatch(r"(\d{5,})\.(journal|lease)", name)
            if done is not None:
                files = ShardFiles(self.local_root, int(done.group(1)))
                if files.is_complete():
                    with contextlib.suppress(TarBusy, OSError):
                        lease = Lease(files.lease)
                        lease.acquire()
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(files.journal)
                        lease.release()
                        removed.append(name)
                continue
            if not name.endswith(TMP_SUFFIX) or re.match(r"\d{5,}", name) is not None:
                continue
            if _writer_gone(name) or now - os.path.getmtime(path) > 3600:
                remove_path(path)
                removed.append(name)
        return removed

    def new_writer(self, index: int, expected: int, replace: bool = False) -> ShardWriter:
        """The writer of tar ``index``; its commit publishes tar, parquet and marker, in that order."""
        files = ShardFiles(self.local_root, index)
        fmt = self.opts.format
        # A resumable format's sink is the checkpointed tar open_writer makes; others start over.
        make_sink: Callable[[], SampleSink] | None = (
            None if fmt.resumable else partial(fmt.make_sink, files, self.save_columns)
        )
        return open_writer(
            files, expected, self.save_columns, self.hash_column, make_sink=make_sink, publish=self._publish,
            replace=replace, checkpoint=(self.opts.checkpoint_rows, self.opts.checkpoint_interval),
        )  # fmt: skip

    def _publish(self, paths: list[str]) -> None:
        if is_remote(self.url) and self.backend.exists(os.path.basename(paths[-1])):
            # Another box published this tar meanwhile (object stores have no lease across boxes):
            # keep its complete set rather than mixing our files with its marker.
            log.warning("%s is already published by another process: dropping ours", paths[-1])
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            return
        for path in paths:
            self.backend.publish(path, os.path.basename(path))
        self.update_indexes()

    def update_indexes(self) -> None:
        """Bring wids-index.json / metadata.parquet up to date; a failure here never fails the tar
        (``python -m fetcher metadata OUTPUT`` rebuilds them)."""
        try:
            if self.wids is not None:
                self.wids.update()
            if METADATA in self.opts.format.indexes:
                update_metadata(self.backend)
                update_manifests(self.backend)
        except (OSError, ValueError) as exc:
            log.warning("index update failed (%s); rerun `python -m fetcher metadata`", exc)


def _writer_gone(name: str) -> bool:
    """True when a ``unique_tmp`` name's process no longer runs on this box."""
    m = re.search(r"\.(\d+)-[0-9a-f]{8}" + re.escape(TMP_SUFFIX) + "$", name)
    if m is None:
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


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
        out.update(dict.fromkeys(MANIFESTS, len(update_manifests(backend))))
    return out
