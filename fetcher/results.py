"""The final result of a row whose job went through the fetch stage: a named fetch failure, or what the
imaging stage made of its body."""

from __future__ import annotations

from typing import Any

from fetcher.records import FetchOutcome, ImageOutcome, Reason, SampleResult, Status
from fetcher.scheduler import Job


def fetch_failure(job: Job, outcome: FetchOutcome) -> SampleResult:
    """A row whose fetch failed for good (retries spent, or a reason never retried)."""
    return SampleResult.failure(
        job.row,
        outcome.reason or Reason.INTERNAL_ERROR,
        outcome.detail,
        http_status=outcome.http_status,
        attempts=job.attempts,
        fetch_ms=outcome.fetch_ms,
    )


def imaged(job: Job, outcome: FetchOutcome, image: ImageOutcome, size: int) -> SampleResult:
    """A fetched row after imaging: a sample, or the reason imaging rejected its ``size`` bytes."""
    common: dict[str, Any] = dict(
        image=image, http_status=outcome.http_status, attempts=job.attempts, bytes_downloaded=size,
        fetch_ms=outcome.fetch_ms,
    )  # fmt: skip
    if image.ok:
        return SampleResult(row=job.row, status=Status.SUCCESS, **common)
    return SampleResult.failure(job.row, image.reason or Reason.INTERNAL_ERROR, image.detail, **common)
