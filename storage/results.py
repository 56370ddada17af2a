"""The per-tar results table (one row per input row) and the per-sample JSON."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fetcher.records import SampleResult
from storage.atomic import atomic_file

# Column order and types; img2dataset's columns first so its readers and scripts keep working.
# The hash column is named after the --hash algorithm, as img2dataset does; HASH_FIELD is its place.
HASH_FIELD = "sha256"
BASE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("error_detail", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("sha256", pa.string()),
        ("source_format", pa.string()),
        ("attempts", pa.int16()),
        ("http_status", pa.int16()),
        ("bytes_downloaded", pa.int64()),
        ("bytes_written", pa.int64()),
        ("fetch_ms", pa.float32()),
        ("imaging_ms", pa.float32()),
    ]
)


def results_schema(hash_column: str | None = HASH_FIELD) -> pa.Schema:
    """BASE_SCHEMA with the hash column renamed to ``hash_column`` (dropped when None)."""
    i = BASE_SCHEMA.get_field_index(HASH_FIELD)
    if hash_column is None:
        return BASE_SCHEMA.remove(i)
    return BASE_SCHEMA.set(i, pa.field(hash_column, pa.string()))


def result_record(res: SampleResult, hash_column: str | None = HASH_FIELD) -> dict[str, Any]:
    """The flat record of one row, as stored in the results parquet (before saved columns)."""
    rec = _record(res)
    digest = rec.pop(HASH_FIELD)
    if hash_column is not None:
        rec[hash_column] = digest
    return rec


def _record(res: SampleResult) -> dict[str, Any]:
    img = res.image
    url = res.row.url
    return {
        "key": res.row.key,
        "url": url if isinstance(url, str) else (None if url is None else repr(url)),
        "caption": res.row.caption,
        "status": res.status.value,
        "error_message": res.reason.value if res.reason else None,
        "error_detail": res.detail or None,
        # not img.ok: the pixels have already moved into the tar (data is None) when this runs
        "width": img.width if img and img.reason is None else None,
        "height": img.height if img and img.reason is None else None,
        "original_width": img.original_width if img else None,
        "original_height": img.original_height if img else None,
        "sha256": img.hash if img else None,
        "source_format": img.source_format if img else None,
        "attempts": res.attempts,
        "http_status": res.http_status,
        "bytes_downloaded": res.bytes_downloaded,
        "bytes_written": res.bytes_written,
        "fetch_ms": round(res.fetch_ms, 2),
        "imaging_ms": round(img.cpu_ms, 2) if img else None,
    }


def sample_json(res: SampleResult, hash_column: str | None = HASH_FIELD) -> bytes:
    """The ``{key}.json`` member: the record plus the saved input columns."""
    rec = result_record(res, hash_column)
    rec.update(_jsonable(res.row.extra))
    return json.dumps(rec, ensure_ascii=False, default=str).encode()


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[k] = v
    return out


def _nullable_dtype(arrow_type: str) -> str:
    """``int32`` -> ``Int32``, ``uint8`` -> ``UInt8``: pandas' nullable integer dtype names."""
    return "UInt" + arrow_type[4:] if arrow_type.startswith("uint") else "Int" + arrow_type[3:]


def nullable_int_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    """pandas metadata that makes ``pd.read_parquet`` give integer columns nullable ``Int32``-style dtypes,
    not float64, when a failed row left them empty (width/height of a failure, http_status of a refusal)."""
    columns = [
        {
            "name": f.name,
            "field_name": f.name,
            "pandas_type": str(f.type),
            "numpy_type": _nullable_dtype(str(f.type)),
            "metadata": None,
        }
        for f in schema
        if pa.types.is_integer(f.type)
    ]
    doc = {"index_columns": [], "column_indexes": [], "columns": columns}
    return {b"pandas": json.dumps(doc).encode()}


def row_record(res: SampleResult, save_columns: list[str], hash_column: str | None = HASH_FIELD) -> dict[str, Any]:
    """The full results-parquet row of one result: the record plus the saved input columns."""
    rec = result_record(res, hash_column)
    for col in save_columns:
        if col not in rec:
            rec[col] = res.row.extra.get(col)
    return rec


def write_results(
    path: str, results: list[SampleResult], save_columns: list[str], hash_column: str | None = HASH_FIELD
) -> None:
    """Write the results parquet atomically, rows sorted by key."""
    write_records(path, [row_record(r, save_columns, hash_column) for r in results], save_columns, hash_column)


def write_records(
    path: str, records: list[dict[str, Any]], save_columns: list[str], hash_column: str | None = HASH_FIELD
) -> None:
    """Write rows made by ``row_record`` (possibly read back from a journal) as the results parquet."""
    records = sorted(records, key=lambda r: str(r["key"]))
    schema = results_schema(hash_column)
    arrays = [pa.array([rec.get(f.name) for rec in records], type=f.type) for f in schema]
    fields = list(schema)
    for col in save_columns:
        if col in schema.names:
            continue
        values = [r.get(col) for r in records]
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = pa.array([None if v is None else str(v) for v in values], type=pa.string())
        arrays.append(arr)
        fields.append(pa.field(col, arr.type))
    schema = pa.schema(fields)
    table = pa.Table.from_arrays(arrays, schema=schema.with_metadata(nullable_int_metadata(schema)))
    with atomic_file(path) as fh:
        pq.write_table(table, fh, compression="zstd")


def read_results(path: str) -> pa.Table:
    """Read a results parquet back."""
    return pq.read_table(path)
