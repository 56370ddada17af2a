"""Input discovery, deterministic tar planning and streaming of rows.

Tar ``k`` always holds rows ``[k*S, (k+1)*S)`` of the concatenated (sorted) input, so output names
do not depend on how many workers run; ``--shard i/N`` takes the tars with ``k % N == i``.
Rows are streamed batch by batch (whole row groups for parquet), only the needed columns, so memory
does not grow with input size. File formats live in :mod:`fetcher.inputs`, ``--filter`` in
:mod:`fetcher.rowfilter`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import pyarrow as pa

from fetcher.inputs import FORMATS, Source, discover, format_of, normalize_format, open_source, read_tables
from fetcher.lifecycle import RunAborted
from fetcher.options import ConfigError, opt
from fetcher.records import InputRow, Reason
from fetcher.rowfilter import RowFilter, parse_filter


def _split_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):  # img2dataset passes python-style lists: '["a","b"]'
        text = text.strip("[]").replace('"', "").replace("'", "")
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class InputOptions:
    """Options of the reading stage."""

    url_col: str = opt("--url-col", "url", "column holding the image URL", aliases=("--url_col",))
    caption_col: str = opt(
        "--caption-col",
        "caption",
        "column holding the caption ('' or None for none)",
        aliases=("--caption_col",),
        type=lambda text: "" if text == "None" else text,
    )
    save_columns: str = opt(
        "--save-columns",
        "",
        "comma-separated input columns copied to the results and .json",
        aliases=("--save_additional_columns",),
    )
    batch_rows: int = opt("--batch-rows", 4096, "rows decoded from the input at a time")
    input_format: str = opt(
        "--input-format",
        "auto",
        f"input file format: {', '.join(FORMATS)} (auto = by extension; .gz and img2dataset names accepted)",
        aliases=("--input_format",),
    )
    fallback_caption_col: str = opt("--fallback-caption-col", "", "column used when the caption is empty (e.g. tags)")
    key_col: str = opt(
        "--key-col", "", "use this input column (letters and digits kept) as the sample key instead of generated digits"
    )
    images_from: str = opt(
        "--images-from",
        "",
        "read images from this local folder/tar(s) (or fsspec URL): the --url-col values are paths in it",
    )
    filter: str = opt(
        "--filter",
        "",
        "keep only rows where this expression over input columns holds, e.g. 'punsafe < 0.5 and similarity > 0.3'",
    )

    @property
    def save_list(self) -> list[str]:
        return _split_list(self.save_columns)

    @cached_property
    def row_filter(self) -> RowFilter | None:
        """The parsed ``--filter`` (None when not given)."""
        return parse_filter(self.filter) if self.filter.strip() else None

    @property
    def text_columns(self) -> tuple[str, ...]:
        """Columns read as strings whatever they look like (csv type inference must not touch them)."""
        return tuple(c for c in (self.url_col, self.caption_col, self.fallback_caption_col, self.key_col) if c)

    def column_flags(self, fmt: str, hash_col: str = "") -> list[tuple[str, str]]:
        """Every input column this run reads, with the flag that asked for it."""
        pairs = [(self.url_col, "--url-col")]
        if fmt != "txt":  # a URL list has no caption column; other columns are still checked
            pairs += [(self.caption_col, "--caption-col"), (self.fallback_caption_col, "--fallback-caption-col")]
        pairs += [(self.key_col, "--key-col")]
        pairs += [(c, "--save-columns") for c in self.save_list]
        pairs += [(c, "--filter") for c in (self.row_filter.columns if self.row_filter else ())]
        pairs += [(hash_col, "--verify-hash")]
        return [(c, flag) for c, flag in pairs if c]

    def columns_for(self, fmt: str, hash_col: str = "") -> list[str]:
        """The columns to read from a file of format ``fmt`` (each once)."""
        return list(dict.fromkeys(c for c, _ in self.column_flags(fmt, hash_col)))

    @property
    def columns(self) -> list[str]:
        return self.columns_for("parquet")

    def validate(self) -> None:
        if not self.url_col:
            raise ConfigError("--url-col must not be empty")
        if self.batch_rows < 1:
            raise ConfigError("--batch-rows must be >= 1")
        normalize_format(self.input_format)
        _ = self.row_filter  # parse now: a bad --filter fails before any traffic


@dataclass(frozen=True)
class InputFile:
    """One input file and where its rows sit in the concatenated input."""

    source: Source
    offset: int

    @property
    def path(self) -> str:
        return self.source.path

    @property
    def num_rows(self) -> int:
        return self.source.num_rows


@dataclass(frozen=True)
class TarPlan:
    """Tar ``index`` covers global rows ``[start, stop)``."""

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def open_inputs(spec: str, opts: InputOptions, hash_col: str = "") -> list[InputFile]:
    """Open every input file (any format), check the needed columns exist, and lay out offsets.

    ``hash_col`` is the ``--verify-hash`` column, read along with the others when given.
    """
    files: list[InputFile] = []
    offset = 0
    forced = normalize_format(opts.input_format)
    for path in discover(spec, forced):
        src = open_source(path, format_of(path, forced), opts.url_col)
        names = set(src.names)
        for col, flag in opts.column_flags(src.fmt, hash_col):
            if col not in names:
                raise ConfigError(f"{path}: column {col!r} ({flag}) not found; columns are {', '.join(sorted(names))}")
            if (copies := src.names.count(col)) > 1:
                raise ConfigError(f"{path}: column {col!r} ({flag}) appears {copies} times; rename the copies")
        files.append(InputFile(source=src, offset=offset))
        offset += src.num_rows
    return files


def plan_tars(total_rows: int, samples_per_tar: int, shard: tuple[int, int]) -> list[TarPlan]:
    """The tars this shard owns, in order."""
    i, n = shard
    count = (total_rows + samples_per_tar - 1) // samples_per_tar
    return [TarPlan(k, k * samples_per_tar, min(total_rows, (k + 1) * samples_per_tar)) for k in range(i, count, n)]


def key_width(samples_per_tar: int) -> int:
    """Digits of the row-in-tar part of a key."""
    return max(4, len(str(samples_per_tar - 1)))


def make_key(tar_index: int, row_in_tar: int, width: int) -> str:
    """Sample keys are generated digits: no dots or slashes ever reach a webdataset reader."""
    return f"{tar_index:05d}{row_in_tar:0{width}d}"


class InputDataError(RunAborted):
    """An input file's data (not its footer) is unreadable: a file-level problem, one line, exit 2."""

    exit_code = 2


def iter_rows(
    files: list[InputFile], plan: TarPlan, opts: InputOptions, samples_per_tar: int, hash_col: str = ""
) -> Iterator[InputRow]:
    """Stream the rows of one tar, reading only what overlaps it (whole row groups for parquet).

    Rows the ``--filter`` rejects, and rows whose ``--key-col`` value is empty or repeats within the
    tar, come out with ``skip_reason`` set: they are recorded, never fetched. Raises InputDataError
    naming the file when its data (past the metadata checked at start) is unreadable.
    """
    current = [""]
    try:
        yield from _iter_rows(files, plan, opts, samples_per_tar, hash_col, current)
    except (OSError, EOFError, zlib.error, pa.ArrowException) as exc:
        raise InputDataError(f"{current[0]}: unreadable data near rows {plan.start}-{plan.stop - 1}: {exc}") from None


def _iter_rows(
    files: list[InputFile], plan: TarPlan, opts: InputOptions, samples_per_tar: int, hash_col: str, current: list[str]
) -> Iterator[InputRow]:
    width = key_width(samples_per_tar)
    row_filter = opts.row_filter
    keys_seen: set[str] = set()
    for f in files:
        current[0] = f.path
        lo = max(plan.start, f.offset)
        hi = min(plan.stop, f.offset + f.num_rows)
        if lo >= hi:
            continue
        columns = opts.columns_for(f.source.fmt, hash_col)
        strings = (*opts.text_columns, hash_col)
        for first, table in read_tables(f.source, columns, opts.batch_rows, lo - f.offset, hi - f.offset, strings):
            g0 = f.offset + first
            a, b = max(lo - g0, 0), min(hi - g0, table.num_rows)
            if a >= b:
                continue
            part = table.slice(a, b - a)
            keep = row_filter.mask(part) if row_filter else None
            for j, rec in enumerate(_records(part, columns)):
                r = g0 + a + j - plan.start
                row = _input_row(plan.index, r, make_key(plan.index, r, width), rec, opts, hash_col)
                if keep is not None and not keep[j]:
                    row = replace(row, skip_reason=Reason.FILTERED, skip_detail=f"--filter {row_filter.text}")  # type: ignore[union-attr]
                elif opts.key_col:
                    row = _with_input_key(row, rec.get(opts.key_col), keys_seen)
                yield row
            if g0 + table.num_rows >= hi:
                break


def _records(table: pa.Table, columns: list[str]) -> list[dict[str, Any]]:
    wanted = [c for c in columns if c in table.column_names]
    cols = {c: table.column(c).to_pylist() for c in wanted}
    return [{c: cols[c][j] for c in wanted} for j in range(table.num_rows)]


def _input_row(tar: int, r: int, key: str, rec: dict[str, Any], opts: InputOptions, hash_col: str) -> InputRow:
    caption = _caption(rec.get(opts.caption_col)) if opts.caption_col else None
    if not caption and opts.fallback_caption_col:
        caption = _caption(rec.get(opts.fallback_caption_col)) or caption
    url = _url(rec.get(opts.url_col))
    return InputRow(
        tar_index=tar,
        row_in_tar=r,
        key=key,
        url=url.strip() if isinstance(url, str) else url,
        caption=caption,
        extra={c: rec.get(c) for c in opts.save_list},
        expected_hash=_expected_hash(rec.get(hash_col)) if hash_col else None,
    )


_KEY_JUNK = re.compile(r"[^0-9A-Za-z]+")
# A file name's image extension is not part of its key: "19d1b.png" -> "19d1b", not "19d1bpng"
# (the sink adds the extension of the saved image).
_IMAGE_SUFFIX = re.compile(r"\.(jpe?g|png|webp|gif|bmp|tiff?|avif|heic|heif|jxl|jp2|ppm)$", re.IGNORECASE)


def sanitize_key(value: object) -> str:
    """An input id as a sample key: letters and digits only (no dots, slashes or separators)."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _KEY_JUNK.sub("", _IMAGE_SUFFIX.sub("", str(value)))[:120]


def _with_input_key(row: InputRow, value: object, seen: set[str]) -> InputRow:
    key = sanitize_key(value)
    if not key or key in seen:
        # Keep the generated digit key so the results row stays unique; the row is not fetched.
        why = "empty" if not key else f"duplicate {key!r} within tar {row.tar_index}"
        return replace(row, skip_reason=Reason.BAD_KEY, skip_detail=f"--key-col value {value!r}: {why}")
    seen.add(key)
    return replace(row, key=key)


def _expected_hash(value: object) -> str | None:
    # An empty cell means "nothing to verify", not a mismatch.
    if value is None:
        return None
    text = value.hex() if isinstance(value, bytes) else str(value).strip()
    return text or None


def _url(value: object) -> object:
    # Binary URL columns are common; undecodable bytes stay bytes and fail as invalid_url.
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _caption(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):  # e.g. a list of tags as the fallback caption
        value = ", ".join(str(v) for v in value if v is not None)
    if isinstance(value, bytes):  # binary caption columns: invalid UTF-8 must not end the run
        value = value.decode("utf-8", "replace")
    text = value if isinstance(value, str) else str(value)
    # NUL bytes break some caption readers; everything else is kept verbatim.
    return text.replace("\x00", "")
