"""``--input-format webdataset``: tars of ``{key}.{png,jpg,…}`` + ``{key}.json`` / ``{key}.txt``,
local or behind an fsspec URL. One sample (members sharing a key, in tar order) is one row; the image
itself is read later by LocalFetch from the tar, never extracted to disk.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

import pyarrow as pa

from fetcher.inputs import Source, open_binary, records_table
from fetcher.options import ConfigError
from fetcher.readers.local import (
    column_names,
    is_image,
    needs_sidecars,
    parse_sidecar,
    sample_record,
    split_member,
    tar_locator,
)

Sample = tuple[str, dict[str, tarfile.TarInfo]]


def iter_samples(tf: tarfile.TarFile) -> Iterator[Sample]:
    """``(key, {ext: member})`` per sample, in tar order, keeping no member list (tars can be huge)."""
    key: str | None = None
    members: dict[str, tarfile.TarInfo] = {}
    while (info := tf.next()) is not None:
        tf.members = []  # type: ignore[attr-defined]  # tarfile remembers every member otherwise: memory would grow with the tar
        if not info.isfile():
            continue
        k, ext = split_member(info.name)
        if k != key and members:
            yield key or "", members
            members = {}
        key = k
        members[ext] = info
    if members:
        yield key or "", members


def _read(tf: tarfile.TarFile, info: tarfile.TarInfo | None) -> bytes | None:
    if info is None:
        return None
    fh = tf.extractfile(info)
    return fh.read() if fh is not None else None


def _image(members: dict[str, tarfile.TarInfo]) -> tarfile.TarInfo | None:
    return next((info for ext, info in members.items() if is_image(ext)), None)


def open_source(path: str, fmt: str, url_col: str) -> Source:
    """Count the samples (one pass over the headers) and take column names from the first sidecars."""
    count, first_meta, has_text = 0, None, False
    try:
        with open_binary(path) as fh, tarfile.open(fileobj=fh, mode="r:") as tf:
            for _key, members in iter_samples(tf):
                count += 1
                has_text = has_text or "txt" in members
                if first_meta is None and "json" in members:
                    first_meta = parse_sidecar(_read(tf, members["json"]))
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(f"--input {path}: not a readable tar ({exc})") from None
    return Source(path, fmt, count, column_names(url_col, first_meta or {}, has_text))


def read_tables(
    src: Source, columns: list[str], batch_rows: int, start: int, stop: int, strings: tuple[str, ...]
) -> Iterator[tuple[int, pa.Table]]:
    """Samples ``[start, stop)`` as rows; sidecars are read only for those, and only when needed."""
    try:
        yield from _read_tables(src, columns, batch_rows, start, stop)
    except tarfile.TarError as exc:
        raise OSError(f"broken tar: {exc}") from None  # the reader's caller names the file


def _read_tables(
    src: Source, columns: list[str], batch_rows: int, start: int, stop: int
) -> Iterator[tuple[int, pa.Table]]:
    url_col = columns[0]
    sidecars = needs_sidecars(columns, url_col)
    buf: list[dict[str, object]] = []
    first = start
    with open_binary(src.path) as fh, tarfile.open(fileobj=fh, mode="r:") as tf:
        for pos, (key, members) in enumerate(iter_samples(tf)):
            if pos >= stop:
                break
            if pos < start:
                continue
            image = _image(members)
            locator = tar_locator(src.path, image.name) if image is not None else None
            meta = parse_sidecar(_read(tf, members.get("json"))) if sidecars else {}
            text = _read(tf, members.get("txt")) if sidecars else None
            buf.append(sample_record(url_col, locator, key, meta, text))
            if len(buf) >= batch_rows:
                yield first, records_table(buf, columns)
                first += len(buf)
                buf = []
    if buf:
        yield first, records_table(buf, columns)
