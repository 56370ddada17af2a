"""Sample sinks besides the webdataset tar: a folder of files with captions, and a parquet of image bytes.

Each sink has the TarSink interface (``add_sample``, ``commit``, ``abort``, ``outputs``,
``bytes_written``) so ShardWriter keeps one commit order for every ``--output-format``.
These two are not resumable (``resumable = False``): a stopped tar of theirs is redone from scratch
(a parquet file without its footer cannot be appended to; the files sink would need its metadata rows
journaled too). Only the webdataset TarSink continues from a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from fetcher.records import SampleResult
from storage.atomic import TMP_SUFFIX, atomic_file, commit_tmp, fsync_dir
from storage.layout import ShardFiles

# The dataset-level metadata.parquet (and each tar's piece of it): what SimpleTuner's parquet
# metadata backend reads. filename is relative to the output root and includes the extension;
# file_name is the same path under the name HF datasets' imagefolder loader looks for, so
# load_dataset("imagefolder", data_dir=OUTPUT) reads the folder through this same file.
METADATA_SCHEMA = pa.schema(
    [("filename", pa.string()), ("file_name", pa.string()), ("caption", pa.string()), ("width", pa.int32()),
     ("height", pa.int32()), ("key", pa.string()), ("url", pa.string())]
)  # fmt: skip


class SampleSink(Protocol):
    """Where the members of successful samples go."""

    bytes_written: int
    samples: int
    resumable: bool
    offset: int  # bytes of the temp file covered by a checkpoint (resumable sinks)

    @property
    def outputs(self) -> list[str]: ...

    def sync(self) -> None: ...

    def close(self) -> None: ...

    def add_sample(self, key: str, members: dict[str, bytes], res: Any = None) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class _NotResumable:
    """Mixin of the sinks that redo a stopped tar: nothing to sync, closing drops the work."""

    resumable = False
    offset = 0

    def sync(self) -> None:
        """Nothing to make durable: this sink's work is not kept across runs."""

    def close(self) -> None:
        """Stopping drops the partial output (the tar is redone)."""
        self.abort()

    def abort(self) -> None:
        raise NotImplementedError


def sample_fields(key: str, members: dict[str, bytes], res: SampleResult | None) -> dict[str, Any]:
    """Key, URL, final size and image extension of one sample (``res`` is None for carried-over samples)."""
    img = res.image if res is not None else None
    return {
        "key": key,
        "url": res.row.url if res is not None and isinstance(res.row.url, str) else None,
        "width": img.width if img else None,
        "height": img.height if img else None,
        "ext": next(ext for ext in members if ext not in ("txt", "json")),
    }


def _typed_column(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def metadata_table(rows: list[dict[str, Any]], save_columns: list[str]) -> pa.Table:
    """Rows of metadata.parquet: the fixed columns, then the saved input columns."""
    arrays = [pa.array([r.get(f.name) for r in rows], type=f.type) for f in METADATA_SCHEMA]
    fields = list(METADATA_SCHEMA)
    for col in save_columns:
        if col in METADATA_SCHEMA.names:
            continue
        arr = _typed_column([r.get(col) for r in rows])
        arrays.append(arr)
        fields.append(pa.field(col, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


class FilesSink(_NotResumable):
    """``NNNNN/{key}.{ext}`` + ``{key}.txt`` + ``{key}.json``, built in ``NNNNN.tmp/`` and renamed into
    place whole; plus ``NNNNN_metadata.parquet``, this tar's rows of the dataset-level metadata."""

    def __init__(self, files: ShardFiles, save_columns: list[str]) -> None:
        self.files = files
        self.save_columns = save_columns
        self.tmp = files.folder + TMP_SUFFIX
        if os.path.exists(self.tmp):
            shutil.rmtree(self.tmp)
        os.makedirs(self.tmp)
        self.rows: list[dict[str, Any]] = []
        self.written: list[str] = []
        self.bytes_written = 0
        self.samples = 0

    @property
    def outputs(self) -> list[str]:
        return [self.files.folder, self.files.metadata_piece]

    def add_sample(self, key: str, members: dict[str, bytes], res: SampleResult | None = None) -> None:
        """Write the sample's files (fsync'd at commit, off the event loop)."""
        for ext, data in members.items():
            name = f"{key}.{ext}"
            with open(os.path.join(self.tmp, name), "wb") as fh:
                fh.write(data)
            self.written.append(name)
            self.bytes_written += len(data)
        self.samples += 1
        fields = sample_fields(key, members, res)
        filename = f"{os.path.basename(self.files.folder)}/{key}.{fields['ext']}"
        row = {
            "filename": filename,
            "file_name": filename,
            "caption": res.row.caption if res is not None else None,
            "width": fields["width"],
            "height": fields["height"],
            "key": key,
            "url": fields["url"],
        }
        if res is not None:
            row.update({c: res.row.extra.get(c) for c in self.save_columns})
        self.rows.append(row)

    def commit(self) -> None:
        """fsync every file, swap the folder in whole, then write the metadata piece."""
        for name in self.written:
            fd = os.open(os.path.join(self.tmp, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(self.tmp)
        final = self.files.folder
        if os.path.exists(final):  # left by a run that crashed before its stats marker: incomplete
            old = final + ".old" + TMP_SUFFIX
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(self.tmp, final)
        fsync_dir(os.path.dirname(os.path.abspath(final)))
        self.rows.sort(key=lambda r: r["filename"])
        with atomic_file(self.files.metadata_piece) as fh:
            pq.write_table(metadata_table(self.rows, self.save_columns), fh, compression="zstd")

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class ParquetSink(_NotResumable):
    """``NNNNN_images.parquet``: one row per saved sample with the image bytes in a column, written
    in row groups as samples arrive so memory stays flat."""

    GROUP_BYTES = 32 << 20
    SCHEMA = pa.schema(
        [("key", pa.string()), ("url", pa.string()), ("caption", pa.string()), ("width", pa.int32()),
         ("height", pa.int32()), ("ext", pa.string()), ("image", pa.binary()), ("json", pa.string())]
    )  # fmt: skip

    def __init__(self, files: ShardFiles) -> None:
        self.path = files.images_parquet
        self.tmp = self.path + TMP_SUFFIX
        self._writer = pq.ParquetWriter(self.tmp, self.SCHEMA, compression="zstd")
        self._buf: list[dict[str, Any]] = []
        self._buf_bytes = 0
        self.bytes_written = 0
        self.samples = 0

    @property
    def outputs(self) -> list[str]:
        return [self.path]

    def add_sample(self, key: str, members: dict[str, bytes], res: SampleResult | None = None) -> None:
        fields = sample_fields(key, members, res)
        self._buf.append(
            {
                **fields,
                "caption": members.get("txt", b"").decode("utf-8", "replace"),
                "image": members[fields["ext"]],
                "json": members.get("json", b"{}").decode("utf-8", "replace"),
            }
        )
        size = sum(len(v) for v in members.values())
        self._buf_bytes += size
        self.bytes_written += size
        self.samples += 1
        if self._buf_bytes >= self.GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._writer.write_table(pa.Table.from_pylist(self._buf, schema=self.SCHEMA))
            self._buf, self._buf_bytes = [], 0

    def commit(self) -> None:
        self._flush()
        self._writer.close()
        commit_tmp(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
