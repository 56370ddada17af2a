"""Failure-reason facts live in one table (fetcher/records.py): the run's sets come from it."""

from __future__ import annotations

from fetcher.records import REASON_FACTS, Reason, Status, reasons_where
from fetcher.retry import HOST_DOWN, RETRYABLE
from fetcher.retry_failed import RETRY_FAILED_REASONS

R = Reason


def test_sets_read_from_the_facts_table_are_the_documented_ones() -> None:
    assert {R.CONNECT_ERROR, R.CONNECTION_RESET, R.TIMEOUT, R.TRUNCATED_BODY, R.HTTP_408, R.HTTP_429,
                         R.HTTP_5XX, R.DNS_SERVFAIL, R.DNS_TIMEOUT, R.DNS_REFUSED} == RETRYABLE  # fmt: skip
    assert {R.CONNECT_ERROR, R.CONNECTION_RESET, R.TIMEOUT, R.DNS_TIMEOUT, R.DNS_SERVFAIL} == HOST_DOWN
    assert RETRYABLE | {R.HOST_UNAVAILABLE, R.SHUTDOWN, R.TAIL_TIMEOUT, R.BLOCKED_ADDRESS} == RETRY_FAILED_REASONS


def test_status_column_follows_the_image_fact() -> None:
    assert R.DECODE_ERROR.status is Status.FAILED_TO_RESIZE
    assert R.HTTP_404.status is Status.FAILED_TO_DOWNLOAD
    assert R.FILTERED.status is Status.FILTERED
    assert {r for r in Reason if r.status is Status.FAILED_TO_RESIZE} == reasons_where(image=True)


def test_facts_are_consistent() -> None:
    assert set(REASON_FACTS) <= set(Reason)
    for reason, facts in REASON_FACTS.items():
        assert not (facts.retry and not facts.redo), f"{reason}: retried in the run but not by --retry-failed"
        assert not (facts.host_down and not facts.retry), f"{reason}: a down host is worth another try"
        assert not (facts.image and (facts.retry or facts.redo)), f"{reason}: the same bytes fail the same way"
