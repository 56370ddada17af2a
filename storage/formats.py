"""The output formats: name -> sink factory and what the format supports.

Callers ask a format what it can do (``indexes``, ``rewritable``…) instead of comparing names, so a
new format is one entry here plus its sink module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage.layout import ShardFiles
from storage.sinks import FilesSink, ParquetSink, SampleSink
from storage.tarwriter import TarSink
from storage.tfrecord import TFRecordSink


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


# Dataset-level files a format keeps up to date as tars complete (see storage/indexes.py).
WIDS = "wids"  # wids-index.json over the tars
METADATA = "metadata"  # metadata.parquet (SimpleTuner), data.json and metadata.jsonl (HF imagefolder)


@dataclass(frozen=True)
class OutputFormat:
    """One ``--output-format``: how to make its sink and what it supports."""

    name: str
    help: str
    make_sink: Callable[[ShardFiles, list[str]], SampleSink]
    indexes: frozenset[str] = frozenset()
    # the per-tar file holding the samples, which --retry-failed reads back and rewrites
    sample_file: Callable[[ShardFiles], str] | None = None
    # a local folder of image files a trainer can point at (SimpleTuner config, imagefolder)
    image_folder: bool = False


FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat(
            "webdataset",
            "tars of {key}.{ext,txt,json}",
            lambda files, cols: TarSink(files.tar),
            indexes=frozenset({WIDS}),
            sample_file=lambda files: files.tar,
        ),
        OutputFormat(
            "files",
            "a folder of images + .txt/.json per tar, metadata.parquet, data.json and metadata.jsonl",
            FilesSink,
            indexes=frozenset({METADATA}),
            image_folder=True,
        ),
        OutputFormat(
            "parquet", "NNNNN_images.parquet with an image bytes column", lambda files, cols: ParquetSink(files)
        ),
        OutputFormat(
            "tfrecord", "NNNNN.tfrecord of tf.train.Example records", lambda files, cols: TFRecordSink(files.tfrecord)
        ),
        OutputFormat("dummy", "nothing but the results tables (download and resize only)", lambda f, c: DummySink()),
    )
}


def output_format(name: str) -> OutputFormat:
    """The format called ``name``; KeyError when there is none."""
    return FORMATS[name]


def format_help() -> str:
    """One line listing the formats, for --output-format's help."""
    return "; ".join(f"{f.name}: {f.help}" for f in FORMATS.values())
