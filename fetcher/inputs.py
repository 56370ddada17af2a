"""Input files of every supported format, local or behind an fsspec URL, read as a stream of tables.

parquet (primary) gets its row counts from metadata and skips whole row groups; jsonl, csv/tsv and
txt (one URL per line), optionally gzipped, are counted in one streaming pass at start and streamed
again when read. Every reader yields ``pyarrow.Table`` batches of the requested columns in file order,
so the global row numbering (tar ``k`` = rows ``[kS,(k+1)S)``) is the same for every format.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fetcher.options import ConfigError
from fetcher.readers import READERS

logger = logging.getLogger(__name__)

FORMATS = ("auto", *READERS)
# img2dataset's --input_format names (and a few common spellings) -> ours; ".gz" is detected per file.
FORMAT_ALIASES = {"ndjson": "jsonl", "tar": "webdataset", "wds": "webdataset", "dir": "folder", "files": "folder"}
_EXT_FORMATS = {ext: r.name for r in READERS.values() for ext in r.extensions}
# Files that are never input data, whatever their extension (documentation beside the data).
_NOT_DATA = re.compile(r"^(readme|license|licence|notice|changelog|citation)([.-].*)?$", re.IGNORECASE)


def normalize_format(text: str) -> str:
    """Map ``--input-format`` (ours or img2dataset's, e.g. ``csv.gz``) to a reader name or ``auto``."""
    name = text.strip().lower().removesuffix(".gz")
    name = FORMAT_ALIASES.get(name, name)
    if name not in FORMATS:
        raise ConfigError(f"--input-format {text!r}: expected one of {', '.join(FORMATS)} (optionally .gz)")
    return name


def is_url(spec: str) -> bool:
    """True for fsspec URLs such as ``s3://bucket/x`` (``file://`` counts as local)."""
    return "://" in spec and not spec.startswith("file://")


def _ext_format(path: str) -> str | None:
    base = path.lower().removesuffix(".gz")
    for ext, fmt in _EXT_FORMATS.items():
        if base.endswith(ext):
            return fmt
    return None


def format_of(path: str, forced: str) -> str:
    """The reader for ``path``: ``forced`` unless it is ``auto``, else by extension (``.gz`` stripped)."""
    if forced != "auto":
        return forced
    fmt = _ext_format(path)
    if fmt is not None and READERS[fmt].auto:
        return fmt
    if fmt is not None:  # local images are read only when asked for by name
        raise ConfigError(f"--input {path}: pass --input-format {fmt} to read the images inside it")
    raise ConfigError(f"--input {path}: cannot tell the format from the name; pass --input-format")


def _has_known_ext(path: str) -> bool:
    fmt = _ext_format(path)
    return fmt is not None and READERS[fmt].auto


def discover(spec: str, forced: str = "auto") -> list[str]:
    """Expand ``--input``: a file, a directory (its input files, sorted) or a glob (sorted); local or URL.

    A directory gives only the files of one format (the chosen one, or under ``auto`` the first of
    READERS' order present there): a README.txt or _SUCCESS beside the data is skipped and logged,
    never read as rows.
    """
    if forced != "auto" and READERS[forced].whole_folder:
        return [_whole_folder(spec)]
    if is_url(spec):
        return _discover_remote(spec, forced)
    spec = spec.removeprefix("file://")
    if os.path.isdir(spec):
        names = sorted(n for n in os.listdir(spec) if os.path.isfile(os.path.join(spec, n)))
        paths = [os.path.join(spec, n) for n in _select(spec, names, forced)]
        if not paths:
            raise ConfigError(f"--input {spec}: directory holds no input files ({_wanted_text(forced)})")
        return paths
    if os.path.isfile(spec):
        return [spec]
    if glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
        if not paths:
            raise ConfigError(f"--input {spec}: glob matches no files")
        return paths
    raise ConfigError(f"--input {spec}: no such file or directory")


def _whole_folder(spec: str) -> str:
    path = spec.removeprefix("file://")
    if is_url(spec) or not os.path.isdir(path):
        raise ConfigError(f"--input {spec}: --input-format folder reads a local directory of images")
    return path


def _select(where: str, names: list[str], forced: str) -> list[str]:
    """The names in a listed directory that are input files of one format; logs what was skipped."""
    candidates = [n for n in names if not n.startswith((".", "_")) and not _NOT_DATA.match(n)]
    if forced == "auto":
        present = {_ext_format(n) for n in candidates if _has_known_ext(n)}
        chosen = next((r for r in READERS if r in present), None)
    else:
        chosen = forced
    kept = [n for n in candidates if chosen is not None and _ext_format(n) == chosen]
    if chosen == "txt":
        kept = [n for n in kept if _looks_like_url_list(f"{where.rstrip('/')}/{n}")]
    skipped = [n for n in names if n not in set(kept)]
    if skipped and kept:
        logger.warning(
            "--input %s: read %d %s file(s), skipped %d other file(s): %s",
            where, len(kept), chosen, len(skipped), ", ".join(skipped[:8]) + (" …" if len(skipped) > 8 else ""),
        )  # fmt: skip
    return kept


def _looks_like_url_list(path: str) -> bool:
    """A ``.txt`` URL list starts with a URL; prose (notes, licences) does not."""
    try:
        with open_binary(path) as fh:
            for line in _lines(fh):
                return "://" in line.split()[0] if line.split() else False
    except (OSError, UnicodeDecodeError):
        return True  # unreadable: let the reader report it by name
    return True  # empty: zero rows, harmless


def _wanted_text(forced: str) -> str:
    if forced != "auto":
        return " ".join("*" + e for e in READERS[forced].extensions) or forced
    return ", ".join(e.lstrip(".") for r in READERS.values() if r.auto for e in r.extensions) + ", optionally .gz"


def _filesystem(url: str) -> tuple[Any, str]:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"--input {url}: {exc}") from None
    return fs, path


def _discover_remote(spec: str, forced: str) -> list[str]:
    fs, path = _filesystem(spec)
    proto = spec.split("://", 1)[0]
    try:
        if glob.has_magic(path):
            found = [p for p in fs.glob(path) if fs.isfile(p)]
        elif fs.isdir(path):
            listed = {os.path.basename(p.rstrip("/")): p for p in fs.ls(path, detail=False) if fs.isfile(p)}
            found = [listed[n] for n in _select(spec, sorted(listed), forced)]
        elif fs.isfile(path):
            found = [path]
        else:
            found = []
    except OSError as exc:
        raise ConfigError(f"--input {spec}: {exc}") from None
    if not found:
        raise ConfigError(f"--input {spec}: no input files found")
    return sorted(f"{proto}://{p}" for p in found)


@contextlib.contextmanager
def open_binary(path: str) -> Iterator[IO[bytes]]:
    """Open a local path or URL for reading, decompressing ``.gz`` transparently."""
    import fsspec

    with fsspec.open(path, "rb", compression="infer") as fh:
        yield fh


@dataclass(frozen=True)
class Source:
    """One input file: its reader, row count and column names."""

    path: str
    fmt: str
    num_rows: int
    names: tuple[str, ...]
    # parquet only: rows per row group, so a tar reads only the groups it overlaps
    row_group_rows: tuple[int, ...] = ()


def open_source(path: str, fmt: str, count_column: str) -> Source:
    """Read ``path``'s schema and row count (metadata for parquet, one streaming pass otherwise)."""
    module = READERS[fmt].load()
    if module.__name__ != __name__:
        return module.open_source(path, fmt, count_column)  # type: ignore[no-any-return]
    try:
        if fmt == "parquet":
            with _parquet(path) as pf:
                md = pf.metadata
                rgs = tuple(md.row_group(i).num_rows for i in range(md.num_row_groups))
                return Source(path, fmt, md.num_rows, tuple(pf.schema_arrow.names), rgs)
        if fmt == "jsonl":
            names, rows = _jsonl_scan(path)
            return Source(path, fmt, rows, names)
        names = _text_names(path, fmt, count_column)
        if not names:
            return Source(path, fmt, 0, names)
        return Source(path, fmt, _count_rows(path, fmt, count_column if count_column in names else names[0]), names)
    except (OSError, EOFError, zlib.error, pa.ArrowException, UnicodeDecodeError, json.JSONDecodeError) as exc:
        # EOFError: a cut .gz ("Compressed file ended before the end-of-stream marker was reached")
        raise ConfigError(f"--input {path}: not a readable {fmt} file ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextlib.contextmanager
def _parquet(path: str) -> Iterator[pq.ParquetFile]:
    if is_url(path):
        with open_binary(path) as fh:
            pf = pq.ParquetFile(fh)
            yield pf
    else:
        pf = pq.ParquetFile(path.removeprefix("file://"))
        try:
            yield pf
        finally:
            pf.close()


def _lines(fh: IO[bytes]) -> Iterator[str]:
    """Non-blank lines of a UTF-8 text stream (blank lines are not rows).

    Bytes that are not UTF-8 become U+FFFD: one bad byte in one caption costs at most that row
    (a URL with one is an invalid_url), never the file. The counting pass at start logs how many.
    """
    for raw in io.TextIOWrapper(fh, encoding="utf-8", errors="replace", newline=None):
        line = raw.strip()
        if line:
            yield line


def _log_replaced(path: str, lines: int) -> None:
    if lines:
        logger.warning("%s: %d line(s) with bytes that are not UTF-8; replaced by U+FFFD", path, lines)


def _jsonl_scan(path: str) -> tuple[tuple[str, ...], int]:
    """Column names (the union over every row, in first-seen order) and row count of a JSON Lines file."""
    names: dict[str, None] = {}
    rows = bad_text = 0
    with open_binary(path) as fh:
        for line in _lines(fh):
            if rows == 0 and line.startswith("["):
                raise ConfigError(f"--input {path}: a JSON array, not JSON Lines; pass --input-format json")
            rows += 1
            bad_text += "\ufffd" in line
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # that row alone ends as missing_url when read
            if isinstance(obj, dict):
                names.update(dict.fromkeys(obj))
            elif rows == 1:
                raise ConfigError(f"--input {path}: JSON Lines rows must be objects")
    _log_replaced(path, bad_text)
    return tuple(names), rows


def _text_names(path: str, fmt: str, url_col: str) -> tuple[str, ...]:
    if fmt == "txt":
        return (url_col,)  # the one column of a URL list is whatever --url-col names
    with open_binary(path) as fh:
        reader = pacsv.open_csv(fh, parse_options=_csv_parse(fmt))
        return tuple(reader.schema.names)


def _csv_parse(fmt: str) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True)


def _csv_convert(columns: tuple[str, ...]) -> pacsv.ConvertOptions:
    # Every column is read as text: pyarrow infers CSV types from the first block only, so a column
    # that is blank there (or digits-only URLs) would fail half-way through a long file. Numbers are
    # recovered per batch by _numeric, for --filter and saved columns. Only "" is null. Read as
    # bytes, decoded per batch by _utf8: one bad byte must cost one value, not the whole block.
    return pacsv.ConvertOptions(
        include_columns=list(columns) or None,
        column_types={c: pa.binary() for c in columns},
        strings_can_be_null=True,
        null_values=[""],
    )


def _utf8(arr: pa.ChunkedArray) -> tuple[pa.ChunkedArray, int]:
    """Bytes as text (C speed when valid); values that are not UTF-8 get U+FFFD. Returns how many did."""
    try:
        return pc.cast(arr, pa.string()), 0
    except pa.ArrowInvalid:
        values = arr.to_pylist()
        bad = 0
        out: list[str | None] = []
        for v in values:
            if v is None:
                out.append(None)
                continue
            try:
                out.append(v.decode("utf-8"))
            except UnicodeDecodeError:
                bad += 1
                out.append(v.decode("utf-8", "replace"))
        return pa.chunked_array([pa.array(out, pa.string())]), bad


def _numeric(arr: pa.ChunkedArray, text_columns: tuple[str, ...], name: str) -> pa.ChunkedArray:
    """A CSV column as integers or floats when every value parses, else as it is."""
    if name in text_columns:
        return arr
    for target in (pa.int64(), pa.float64()):
        try:
            return pc.cast(arr, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return arr


def _count_rows(path: str, fmt: str, column: str) -> int:
    with open_binary(path) as fh:
        if fmt in ("jsonl", "txt"):
            rows = bad_text = 0
            for line in _lines(fh):
                rows += 1
                bad_text += "\ufffd" in line
            _log_replaced(path, bad_text)
            return rows
        reader = pacsv.open_csv(fh, parse_options=_csv_parse(fmt), convert_options=_csv_convert((column,)))
        return sum(batch.num_rows for batch in reader)


def read_tables(
    src: Source, columns: list[str], batch_rows: int, start: int, stop: int, strings: tuple[str, ...]
) -> Iterator[tuple[int, pa.Table]]:
    """Yield ``(first_row, table)`` batches covering at least rows ``[start, stop)`` of ``src``.

    Batches may start before ``start`` (parquet row groups, csv blocks); the caller slices.
    """
    module = READERS[src.fmt].load()
    if module.__name__ != __name__:
        yield from module.read_tables(src, columns, batch_rows, start, stop, strings)
    elif src.fmt == "parquet":
        yield from _parquet_tables(src, columns, batch_rows, start, stop)
    elif src.fmt == "csv" or src.fmt == "tsv":
        yield from _csv_tables(src, columns, start, stop, strings)
    else:
        yield from _line_tables(src, columns, batch_rows, start, stop)


def _parquet_tables(
    src: Source, columns: list[str], batch_rows: int, start: int, stop: int
) -> Iterator[tuple[int, pa.Table]]:
    groups: list[int] = []
    first: int | None = None
    pos = 0
    for g, n in enumerate(src.row_group_rows):
        if pos < stop and pos + n > start:
            groups.append(g)
            if first is None:
                first = pos
        pos += n
    if first is None:
        return
    with _parquet(src.path) as pf:
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns):
            yield first, pa.Table.from_batches([batch])
            first += batch.num_rows
            if first >= stop:
                return


def _csv_tables(
    src: Source, columns: list[str], start: int, stop: int, strings: tuple[str, ...]
) -> Iterator[tuple[int, pa.Table]]:
    with open_binary(src.path) as fh:
        reader = pacsv.open_csv(
            fh,
            read_options=pacsv.ReadOptions(block_size=1 << 20),
            parse_options=_csv_parse(src.fmt),
            convert_options=_csv_convert(tuple(columns)),
        )
        pos = 0
        for batch in reader:
            if pos + batch.num_rows > start:
                table = pa.Table.from_batches([batch])
                cols: dict[str, pa.ChunkedArray] = {}
                for c in table.column_names:
                    text, bad = _utf8(table.column(c))
                    if bad:
                        why = "%s: %d value(s) of column %r are not UTF-8; replaced by U+FFFD"
                        logger.warning(why, src.path, bad, c)
                    cols[c] = _numeric(text, strings, c)
                yield pos, pa.table(cols)
            pos += batch.num_rows
            if pos >= stop:
                return


def _line_tables(
    src: Source, columns: list[str], batch_rows: int, start: int, stop: int
) -> Iterator[tuple[int, pa.Table]]:
    with open_binary(src.path) as fh:
        buf: list[str] = []
        first = start
        for pos, line in enumerate(_lines(fh)):
            if pos >= stop:
                break
            if pos >= start:  # rows before the tar are skipped without parsing
                buf.append(line)
                if len(buf) >= batch_rows:
                    yield first, _lines_table(buf, src.fmt, columns)
                    first += len(buf)
                    buf = []
        if buf:
            yield first, _lines_table(buf, src.fmt, columns)


def _lines_table(lines: list[str], fmt: str, columns: list[str]) -> pa.Table:
    if fmt == "txt":
        return pa.table({columns[0]: pa.array(lines, type=pa.string())})
    records: list[dict[str, Any]] = []
    for line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None  # a broken line becomes a row without URL: recorded as missing_url, counts still add up
        records.append(obj if isinstance(obj, dict) else {})
    return records_table(records, columns)


def records_table(records: list[dict[str, Any]], columns: list[str]) -> pa.Table:
    """The ``columns`` of ``records`` as a table; a column of mixed types becomes text."""
    data: dict[str, pa.Array] = {}
    for col in columns:
        values = [r.get(col) for r in records]
        try:
            data[col] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            data[col] = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return pa.table(data)
