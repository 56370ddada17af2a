"""``--input-format folder``: a local directory (searched recursively, sorted) of images with optional
sidecars ``{stem}.json`` (fields as columns) and ``{stem}.txt`` (the caption). Each image is one row;
every other file (README.txt, _SUCCESS, a sidecar without its image) is skipped and logged once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from functools import lru_cache

import pyarrow as pa

from fetcher.inputs import Source, records_table
from fetcher.options import ConfigError
from fetcher.readers.local import column_names, is_image, needs_sidecars, parse_sidecar, sample_record

logger = logging.getLogger(__name__)


def listing(root: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(images, skipped)``: relative paths of the image files, and of every file that is not a row."""
    return _listing(root, os.stat(root).st_mtime_ns)


@lru_cache(maxsize=2)  # each tar of the run reads a slice of the same listing (listed again if it changed)
def _listing(root: str, _mtime: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    images: list[str] = []
    others: list[str] = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for name in files:
            rel = os.path.relpath(os.path.join(d, name), root)
            ext = os.path.splitext(name)[1]
            (images if ext and is_image(ext[1:]) and not name.startswith(".") else others).append(rel)
    images.sort()
    stems = {os.path.splitext(p)[0] for p in images}
    skipped = sorted(
        p for p in others if not (os.path.splitext(p)[1] in (".json", ".txt") and os.path.splitext(p)[0] in stems)
    )
    return tuple(images), tuple(skipped)


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _sidecars(root: str, rel: str) -> tuple[dict[str, object], bytes | None]:
    stem = os.path.join(root, os.path.splitext(rel)[0])
    return parse_sidecar(_read(stem + ".json")), _read(stem + ".txt")


def open_source(path: str, fmt: str, url_col: str) -> Source:
    """List the folder; names from the first image's sidecars."""
    try:
        images, skipped = listing(os.path.abspath(path))
    except OSError as exc:
        raise ConfigError(f"--input {path}: {exc}") from None
    if not images:
        raise ConfigError(f"--input {path}: no image files found in the folder")
    if skipped:
        shown = ", ".join(skipped[:8]) + (" …" if len(skipped) > 8 else "")
        logger.warning(
            "--input %s: %d image(s) read, %d other file(s) skipped: %s", path, len(images), len(skipped), shown
        )
    meta, text = _sidecars(path, images[0])
    has_text = text is not None or any(
        os.path.exists(os.path.join(path, os.path.splitext(p)[0] + ".txt")) for p in images[:16]
    )
    return Source(os.path.abspath(path), fmt, len(images), column_names(url_col, meta, has_text))


def read_tables(
    src: Source, columns: list[str], batch_rows: int, start: int, stop: int, strings: tuple[str, ...]
) -> Iterator[tuple[int, pa.Table]]:
    """Images ``[start, stop)`` of the sorted listing as rows, with their sidecars' columns."""
    url_col = columns[0]
    sidecars = needs_sidecars(columns, url_col)
    images, _ = listing(src.path)
    for first in range(start, min(stop, len(images)), batch_rows):
        records = []
        for rel in images[first : min(first + batch_rows, stop)]:
            meta, text = _sidecars(src.path, rel) if sidecars else ({}, None)
            key = os.path.splitext(rel)[0].replace(os.sep, "/")
            records.append(sample_record(url_col, os.path.join(src.path, rel), key, meta, text))
        yield first, records_table(records, columns)
