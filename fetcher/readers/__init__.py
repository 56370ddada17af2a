"""The input readers: format name -> the module that reads it, and what kind of rows it gives.

A reader module has ``open_source(path, fmt, url_col) -> Source`` and ``read_tables(src, columns,
batch_rows, start, stop, strings)`` yielding ``(first_row, pyarrow.Table)`` (see fetcher.inputs).
Adding a reader is one entry here plus its module. Readers of local images (tars, folders) put a
locator of the image in the ``--url-col`` column; their rows are "fetched" by fetcher.fetchers'
LocalFetch, never over HTTP, and only when the user picked such a format explicitly.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class ReaderSpec:
    """One ``--input-format``."""

    name: str
    module: str
    extensions: tuple[str, ...] = ()  # file names this reader takes (".gz" stripped first)
    auto: bool = True  # picked by extension under --input-format auto
    local_images: bool = False  # rows are local image files (tar members, folder files), not URLs
    whole_folder: bool = False  # the --input folder itself is one source (not a list of input files)

    def load(self) -> ModuleType:
        """The reader module (imported on first use)."""
        return importlib.import_module(self.module)


READERS: dict[str, ReaderSpec] = {
    r.name: r
    for r in (
        ReaderSpec("parquet", "fetcher.inputs", (".parquet",)),
        ReaderSpec("jsonl", "fetcher.inputs", (".jsonl", ".ndjson")),
        ReaderSpec("json", "fetcher.readers.json_array", (".json",)),
        ReaderSpec("csv", "fetcher.inputs", (".csv",)),
        ReaderSpec("tsv", "fetcher.inputs", (".tsv",)),
        ReaderSpec("txt", "fetcher.inputs", (".txt",)),
        ReaderSpec("webdataset", "fetcher.readers.wds", (".tar",), auto=False, local_images=True),
        ReaderSpec("folder", "fetcher.readers.folder", auto=False, local_images=True, whole_folder=True),
    )
}


def reader(name: str) -> ReaderSpec:
    """The reader called ``name`` (KeyError when there is none)."""
    return READERS[name]
