"""``--input-format json``: a JSON array of objects, as img2dataset's ``json`` and most dataset repos
ship their manifests (e.g. ``text_to_image.json``). A ``.json`` file holding JSON Lines instead is
read as such.

The array is parsed object by object from a stream, so a large manifest never sits in memory whole.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import IO, Any

import pyarrow as pa

from fetcher.inputs import Source, _lines_table, open_binary
from fetcher.inputs import open_source as _open_text_source
from fetcher.options import ConfigError

_CHUNK = 1 << 16
_WS = " \t\r\n"


def _is_array(path: str) -> bool:
    with open_binary(path) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8-sig")
        while True:
            ch = text.read(1)
            if not ch:
                return False
            if ch not in _WS:
                return ch == "["


def iter_objects(fh: IO[bytes], path: str) -> Iterator[Any]:
    """The elements of the JSON array in ``fh``, one at a time."""
    text = io.TextIOWrapper(fh, encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    buf = text.read(_CHUNK).lstrip(_WS)
    if not buf.startswith("["):
        raise ConfigError(f"--input {path}: not a JSON array")
    pos, eof, first = 1, False, True
    while True:
        while True:  # skip whitespace and the separator
            while pos < len(buf) and buf[pos] in _WS:
                pos += 1
            if pos < len(buf) or eof:
                break
            buf, pos = buf[pos:] + text.read(_CHUNK), 0
            eof = pos >= len(buf)
        if pos >= len(buf):
            raise ConfigError(f"--input {path}: JSON array is not closed (truncated file?)")
        if buf[pos] == "]":
            return
        if not first:
            if buf[pos] != ",":
                raise ConfigError(f"--input {path}: expected ',' between array elements")
            pos += 1
            first = True
            continue
        try:
            obj, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as exc:
            more = "" if eof else text.read(max(_CHUNK, len(buf)))
            if not more:
                raise ConfigError(f"--input {path}: broken JSON array element ({exc.msg})") from None
            buf, pos = buf[pos:] + more, 0
            continue
        yield obj
        first = False
        buf, pos = buf[end:], 0
        if len(buf) < _CHUNK and not eof:
            more = text.read(_CHUNK)
            eof = not more
            buf += more


def open_source(path: str, fmt: str, url_col: str) -> Source:
    """Column names from the first object, row count from one streaming pass."""
    if not _is_array(path):
        return _open_text_source(path, "jsonl", url_col)
    names: tuple[str, ...] = ()
    count = 0
    with open_binary(path) as fh:
        for obj in iter_objects(fh, path):
            if count == 0:
                if not isinstance(obj, dict):
                    raise ConfigError(f"--input {path}: JSON array elements must be objects")
                names = tuple(obj)
            count += 1
    return Source(path, fmt, count, names)


def read_tables(
    src: Source, columns: list[str], batch_rows: int, start: int, stop: int, strings: tuple[str, ...]
) -> Iterator[tuple[int, pa.Table]]:
    """Rows ``[start, stop)`` of the array in batches (rows before ``start`` are parsed, not kept).

    A ``.json`` file of JSON Lines got a ``jsonl`` Source at open and never comes here.
    """
    buf: list[str] = []
    first = start
    with open_binary(src.path) as fh:
        for pos, obj in enumerate(iter_objects(fh, src.path)):
            if pos >= stop:
                break
            if pos >= start:
                buf.append(json.dumps(obj) if isinstance(obj, dict) else "null")
                if len(buf) >= batch_rows:
                    yield first, _lines_table(buf, "jsonl", columns)
                    first += len(buf)
                    buf = []
    if buf:
        yield first, _lines_table(buf, "jsonl", columns)
