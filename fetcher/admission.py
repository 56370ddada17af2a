"""Admission: a row just read becomes a scheduler job, or is final at once without a request.

Rows the reader marked (--filter, a bad --key-col value) and locators the fetch refuses (the address
policy, a missing local file) end here with their named reason; the rest get their politeness key.
"""

from __future__ import annotations

from fetcher.fetchers import Fetch
from fetcher.hostmix import HostMix
from fetcher.netguard import UrlRefused
from fetcher.records import InputRow, SampleResult
from fetcher.scheduler import Job, Scheduler


def admit(row: InputRow, fetch: Fetch, scheduler: Scheduler, hostmix: HostMix) -> Job | SampleResult:
    """The row's job for the scheduler, or its final result when it is never fetched."""
    if row.skip_reason is not None:
        return SampleResult.failure(row, row.skip_reason, row.skip_detail)
    try:
        url = fetch.admit(row.url)
    except UrlRefused as exc:
        return SampleResult.failure(row, exc.reason, exc.detail)
    host = fetch.slot or scheduler.key_of(url)
    if fetch.slot is None:  # local files are no host's politeness matter
        hostmix.see(host)
    fetch.prefetch(url)  # DNS overlaps the wait for a permit instead of holding one
    return Job(row=row, url=url, host=host)
