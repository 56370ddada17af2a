"""The output formats: name -> sink factory, how to read a finished tar's samples back, and what the
format supports.

Callers ask a format what it can do (``indexes``, ``image_folder``, ``keeps_samples``) instead of
comparing names, so a new format is one entry here plus its sink module.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from storage import tfrecord
from storage.layout import ShardFiles
from storage.sinks import FilesSink, ParquetSink, SampleSink
from storage.tarwriter import TarSink
from storage.tfrecord import TFRecordSink

# key -> {extension: bytes}: the samples of a finished tar, as ShardWriter gave them to its sink
Samples = dict[str, dict[str, bytes]]


class DummySink:
    """``--output-format dummy``: download and resize, keep nothing but the results tables (dry runs,
    benchmarks, checking a URL list's health)."""

    resumable = False
    offset = 0

    def __init__(self) -> None:
        self.bytes_written = 0
        self.samples = 0

    @property
    def outputs(self) -> list[str]:
        return []

    def add_sample(self, key: str, members: dict[str, bytes], res: Any = None) -> None:
        self.samples += 1

    def sync(self) -> None:
        """Nothing written, nothing to make durable."""

    def close(self) -> None:
        """Nothing written, nothing to drop."""

    def commit(self) -> None:
        """Nothing to publish: the results parquet and marker are the whole output."""

    def abort(self) -> None:
        """Nothing written, nothing to drop."""


def _split(name: str) -> tuple[str, str]:
    key, _, ext = name.partition(".")
    return key, ext


def tar_samples(files: ShardFiles) -> Samples:
    """The samples of a webdataset tar."""
    samples: Samples = {}
    with tarfile.open(files.tar) as tf:
        for member in tf:
            fh = tf.extractfile(member) if member.isfile() else None
            if fh is not None:
                key, ext = _split(member.name)
                samples.setdefault(key, {})[ext] = fh.read()
    return samples


def folder_samples(files: ShardFiles) -> Samples:
    """The samples of a ``files`` folder (``{key}.{ext}`` files)."""
    samples: Samples = {}
    for name in sorted(os.listdir(files.folder)):
        key, ext = _split(name)
        with open(os.path.join(files.folder, name), "rb") as fh:
            samples.setdefault(key, {})[ext] = fh.read()
    return samples


def parquet_samples(files: ShardFiles) -> Samples:
    """The samples of an ``NNNNN_images.parquet``."""
    table = pq.read_table(files.images_parquet, columns=["key", "ext", "image", "caption", "json"])
    return {
        r["key"]: {r["ext"]: r["image"], "txt": (r["caption"] or "").encode("utf-8"), "json": r["json"].encode("utf-8")}
        for r in table.to_pylist()
    }


# Dataset-level files a format keeps up to date as tars complete (see storage/indexes.py).
WIDS = "wids"  # wids-index.json over the tars
METADATA = "metadata"  # metadata.parquet (SimpleTuner, HF imagefolder through file_name) and data.json


@dataclass(frozen=True)
class OutputFormat:
    """One ``--output-format``: how to make its sink and what it supports."""

    name: str
    help: str
    make_sink: Callable[[ShardFiles, list[str]], SampleSink]
    # the samples of a finished tar, which --retry-failed carries over when it rewrites the tar
    read_samples: Callable[[ShardFiles], Samples]
    indexes: frozenset[str] = frozenset()
    # a local folder of image files a trainer can point at (SimpleTuner config, imagefolder)
    image_folder: bool = False
    keeps_samples: bool = True  # False: a success leaves nothing on disk (dummy), nothing to carry over
    # an open tar continues from its checkpoint after a stop (sample-level journal); others start over
    resumable: bool = False


FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat(
            "webdataset",
            "tars of {key}.{jpg,txt,json} + wids-index.json",
            lambda files, cols: TarSink(files.tar),
            tar_samples,
            indexes=frozenset({WIDS}),
            resumable=True,
        ),
        OutputFormat(
            "files",
            "a folder of images + .txt/.json per tar, metadata.parquet, data.json",
            FilesSink,
            folder_samples,
            indexes=frozenset({METADATA}),
            image_folder=True,
        ),
        OutputFormat(
            "parquet",
            "NNNNN_images.parquet with an image bytes column",
            lambda files, cols: ParquetSink(files),
            parquet_samples,
        ),
        OutputFormat(
            "tfrecord",
            "NNNNN.tfrecord of tf.train.Example records (no TensorFlow needed)",
            lambda files, cols: TFRecordSink(files.tfrecord),
            lambda files: tfrecord.read_samples(files.tfrecord),
        ),
        OutputFormat(
            "dummy",
            "nothing but the results tables (download and resize only)",
            lambda files, cols: DummySink(),
            lambda files: {},
            keeps_samples=False,
        ),
    )
}


def format_help() -> str:
    """One line listing the formats, for --output-format's help."""
    return "; ".join(f"{f.name}: {f.help}" for f in FORMATS.values())
