"""``--retry-failed``: revisit finished tars and re-fetch only the rows whose failure may pass next time.

The old successes are read back from the old tar (members copied verbatim; a tar of any
``--output-format``: tar, folder, images parquet, tfrecord) and the old final failures from its
results parquet; the tar is then rewritten atomically (ShardWriter ``replace``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from fetcher.reader import TarPlan
from fetcher.records import ImageOutcome, InputRow, Reason, SampleResult, Status, reasons_where
from storage.formats import OutputFormat
from storage.layout import ShardFiles
from storage.results import BASE_SCHEMA

# Rows a --retry-failed run fetches again (the transient ones, and those the run itself gave up or
# refused under a policy the rerun may have changed): the facts live in fetcher/records.py.
RETRY_FAILED_REASONS = reasons_where(redo=True)


@dataclass
class CarryOver:
    """One row of the old tar kept as it is, with its tar members (empty for a failure)."""

    result: SampleResult
    members: dict[str, bytes]


@dataclass
class RetryPlan:
    """What to redo in one finished tar."""

    tar: TarPlan
    retry_rows: set[int]
    keep: list[CarryOver]


def retry_rows(files: ShardFiles) -> set[int]:
    """Row positions of a finished tar whose failure is retryable."""
    table = pq.read_table(files.parquet, columns=["key", "error_message"])
    out: set[int] = set()
    for key, reason in zip(table.column("key").to_pylist(), table.column("error_message").to_pylist(), strict=True):
        if reason is not None and reason in RETRY_FAILED_REASONS:
            out.add(_row_of(key))
    return out


def _row_of(key: str) -> int:
    return int(key[5:])


def result_from_record(rec: dict[str, Any], tar_index: int, save_columns: list[str]) -> SampleResult:
    """Rebuild the SampleResult of a results-parquet row (the inverse of storage.results.result_record)."""
    row = InputRow(
        tar_index=tar_index,
        row_in_tar=_row_of(rec["key"]),
        key=rec["key"],
        url=rec["url"],
        caption=rec["caption"],
        extra={c: rec.get(c) for c in save_columns if c not in BASE_SCHEMA.names},
    )
    reason = Reason(rec["error_message"]) if rec["error_message"] else None
    image = None
    if rec["original_width"] is not None or rec["sha256"] is not None or rec["width"] is not None:
        image = ImageOutcome(
            width=rec["width"],
            height=rec["height"],
            original_width=rec["original_width"],
            original_height=rec["original_height"],
            source_format=rec["source_format"],
            hash=rec["sha256"],
            reason=reason if rec["width"] is None else None,
            cpu_ms=rec["imaging_ms"] or 0.0,
        )
    return SampleResult(
        row=row,
        status=Status(rec["status"]),
        reason=reason,
        detail=rec["error_detail"] or "",
        image=image,
        http_status=rec["http_status"],
        attempts=rec["attempts"] or 0,
        bytes_downloaded=rec["bytes_downloaded"] or 0,
        bytes_written=rec["bytes_written"] or 0,
        fetch_ms=rec["fetch_ms"] or 0.0,
    )


def plan_retry(files: ShardFiles, tar: TarPlan, save_columns: list[str], fmt: OutputFormat) -> RetryPlan | None:
    """The retry plan of a finished tar, or None when none of its failures is retryable.

    The old samples are read back in the output's own format (tar, folder, parquet, tfrecord).
    """
    todo = retry_rows(files)
    if not todo:
        return None
    members = fmt.read_samples(files)
    keep: list[CarryOver] = []
    for rec in pq.read_table(files.parquet).to_pylist():
        res = result_from_record(rec, tar.index, save_columns)
        if res.row.row_in_tar in todo:
            continue
        got = members.get(res.row.key, {})
        if res.status is Status.SUCCESS and not got and fmt.keeps_samples:
            # The parquet says success but the tar lacks it: fetch it again rather than lose it.
            todo.add(res.row.row_in_tar)
            continue
        keep.append(CarryOver(res, got if res.status is Status.SUCCESS else {}))
    return RetryPlan(tar=tar, retry_rows=todo, keep=keep)
