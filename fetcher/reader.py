"""Input discovery, deterministic tar planning and streaming of rows.

Tar ``k`` always holds rows ``[k*S, (k+1)*S)`` of the concatenated (sorted) input, so output names
do not depend on how many workers run; ``--shard i/N`` takes the tars with ``k % N == i``.
Rows are streamed row group by row group, only the needed columns, so memory does not grow with
input size.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from fetcher.options import ConfigError, opt
from fetcher.records import InputRow


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
        "--caption-col", "caption", "column holding the caption ('' for none)", aliases=("--caption_col",)
    )
    save_columns: str = opt(
        "--save-columns",
        "",
        "comma-separated input columns copied to the results and .json",
        aliases=("--save_additional_columns",),
    )
    batch_rows: int = opt("--batch-rows", 4096, "rows decoded from parquet at a time")

    @property
    def save_list(self) -> list[str]:
        return _split_list(self.save_columns)

    @property
    def columns(self) -> list[str]:
        cols = [self.url_col]
        if self.caption_col:
            cols.append(self.caption_col)
        cols += [c for c in self.save_list if c not in cols]
        return cols

    def validate(self) -> None:
        if not self.url_col:
            raise ConfigError("--url-col must not be empty")
        if self.batch_rows < 1:
            raise ConfigError("--batch-rows must be >= 1")


@dataclass(frozen=True)
class InputFile:
    """One input file and where its rows sit in the concatenated input."""

    path: str
    num_rows: int
    offset: int
    row_group_rows: tuple[int, ...]


@dataclass(frozen=True)
class TarPlan:
    """Tar ``index`` covers global rows ``[start, stop)``."""

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def discover(spec: str) -> list[str]:
    """Expand ``--input``: a file, a directory (its ``*.parquet``, sorted) or a glob (sorted)."""
    if os.path.isdir(spec):
        paths = sorted(glob.glob(os.path.join(spec, "*.parquet")))
        if not paths:
            raise ConfigError(f"--input {spec}: directory holds no *.parquet files")
        return paths
    if os.path.isfile(spec):
        return [spec]
    if glob.has_magic(spec):
        paths = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
        if not paths:
            raise ConfigError(f"--input {spec}: glob matches no files")
        return paths
    raise ConfigError(f"--input {spec}: no such file or directory")


def open_inputs(spec: str, opts: InputOptions, hash_col: str = "") -> list[InputFile]:
    """Open every input file's metadata, check the needed columns exist, and lay out offsets.

    ``hash_col`` is the ``--verify-hash`` column, read along with the others when given.
    """
    files: list[InputFile] = []
    offset = 0
    for path in discover(spec):
        try:
            pf = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise ConfigError(f"--input {path}: not a readable parquet file ({exc})") from None
        names = set(pf.schema_arrow.names)
        for col in _columns(opts, hash_col):
            if col not in names:
                flag = (
                    "--url-col"
                    if col == opts.url_col
                    else "--caption-col"
                    if col == opts.caption_col
                    else "--verify-hash"
                    if col == hash_col and col not in opts.save_list
                    else "--save-columns"
                )
                raise ConfigError(f"{path}: column {col!r} ({flag}) not found; columns are {', '.join(sorted(names))}")
        md = pf.metadata
        rg_rows = tuple(md.row_group(i).num_rows for i in range(md.num_row_groups))
        files.append(InputFile(path=path, num_rows=md.num_rows, offset=offset, row_group_rows=rg_rows))
        offset += md.num_rows
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


def _columns(opts: InputOptions, hash_col: str) -> list[str]:
    cols = opts.columns
    return [*cols, hash_col] if hash_col and hash_col not in cols else cols


def iter_rows(
    files: list[InputFile], plan: TarPlan, opts: InputOptions, samples_per_tar: int, hash_col: str = ""
) -> Iterator[InputRow]:
    """Stream the rows of one tar, reading only the row groups that overlap it."""
    width = key_width(samples_per_tar)
    save = opts.save_list
    columns = _columns(opts, hash_col)
    for f in files:
        lo = max(plan.start, f.offset)
        hi = min(plan.stop, f.offset + f.num_rows)
        if lo >= hi:
            continue
        groups: list[int] = []
        first_row_of_groups = None
        pos = f.offset
        for g, n in enumerate(f.row_group_rows):
            if pos < hi and pos + n > lo:
                groups.append(g)
                if first_row_of_groups is None:
                    first_row_of_groups = pos
            pos += n
        assert first_row_of_groups is not None
        pf = pq.ParquetFile(f.path)
        global_pos = first_row_of_groups
        for batch in pf.iter_batches(batch_size=opts.batch_rows, row_groups=groups, columns=columns):
            n = batch.num_rows
            a, b = max(lo - global_pos, 0), min(hi - global_pos, n)
            if a < b:
                cols = {name: batch.column(name).slice(a, b - a).to_pylist() for name in columns}
                urls = cols[opts.url_col]
                captions = cols[opts.caption_col] if opts.caption_col else [None] * (b - a)
                hashes = cols[hash_col] if hash_col else [None] * (b - a)
                for j in range(b - a):
                    g = global_pos + a + j
                    r = g - plan.start
                    yield InputRow(
                        tar_index=plan.index,
                        row_in_tar=r,
                        key=make_key(plan.index, r, width),
                        url=urls[j],
                        caption=_caption(captions[j]),
                        extra={c: cols[c][j] for c in save},
                        expected_hash=_expected_hash(hashes[j]),
                    )
            global_pos += n
            if global_pos >= hi:
                break
        pf.close()


def _expected_hash(value: object) -> str | None:
    # An empty cell means "nothing to verify", not a mismatch.
    if value is None:
        return None
    text = value.hex() if isinstance(value, bytes) else str(value).strip()
    return text or None


def _caption(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    # NUL bytes break some caption readers; everything else is kept verbatim.
    return text.replace("\x00", "")
