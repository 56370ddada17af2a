"""The tail's parts in isolation: dropping queued rows, struggling hosts, and the tail in progress and metrics."""

from __future__ import annotations

import asyncio

from fetcher.metrics import LiveSources, Metrics
from fetcher.progress import progress_bar
from fetcher.records import FetchOutcome, InputRow, Reason
from fetcher.scheduler import Job, Scheduler, SchedulerOptions
from fetcher.summary import RunStats


def job(i: int, host: str) -> Job:
    return Job(InputRow(0, i, f"{i:09d}", f"http://{host}/{i}", None), f"http://{host}/{i}", host)


async def test_dropped_rows_leave_no_queue_behind() -> None:
    """Rows given up (or left for the next run) must not keep a slowed host's queue, and the run, alive."""
    sched = Scheduler(SchedulerOptions(per_host_concurrency=1, retries=1, backoff_base=5.0))
    for i in range(6):
        await sched.put(job(i, "slow.example"))
    await sched.put(job(6, "ok.example"))
    sched.close()
    gen = sched.dispatch()
    first = await gen.__anext__()
    sched.complete(first, FetchOutcome(reason=Reason.TIMEOUT))  # re-queued, 2.5-5 s from now
    assert sched.struggling("slow.example") and not sched.struggling("ok.example")
    dropped = sched.drop({j.row.key for j in [job(i, "slow.example") for i in range(6)]})
    assert sorted(j.row.row_in_tar for j in dropped) == [0, 1, 2, 3, 4, 5]
    rest = []
    async for j in gen:  # ends at once: nothing of the slowed host is left to wait for
        rest.append(j.row.row_in_tar)
        sched.complete(j, FetchOutcome(body=b"x", http_status=200))
    assert rest == [6]
    assert sched.pending == 0 and sched.inflight == 0


async def test_drop_all_then_dispatch_ends() -> None:
    sched = Scheduler(SchedulerOptions())
    for i in range(5):
        await sched.put(job(i, f"h{i}.example"))
    sched.close()
    assert len(sched.drop()) == 5
    got = await asyncio.wait_for(_collect(sched), 2)
    assert got == []


async def _collect(sched: Scheduler) -> list[Job]:
    return [j async for j in sched.dispatch()]


def test_progress_bar_shows_the_tail() -> None:
    stats = RunStats(total_rows=1000, rows_done=993, ok=990)
    assert " open" not in progress_bar(stats)
    stats.outstanding, stats.oldest_age, stats.hosts_given_up = 7, 75.0, 2
    line = progress_bar(stats)
    assert "7 open, oldest 1m15s, 2 hosts given up" in line
    assert stats.as_dict()["rows_outstanding"] == 7 and stats.as_dict()["oldest_row_age_seconds"] == 75.0


def test_oldest_outstanding_row_age_metric() -> None:
    m = Metrics(sources=LiveSources(outstanding_rows=lambda: 3, oldest_row_age=lambda: 42.5, hosts_given_up=lambda: 1))
    text = m.exposition().decode()
    assert "fetcher_oldest_outstanding_row_age_seconds 42.5" in text
    assert "fetcher_outstanding_rows 3.0" in text and "fetcher_hosts_given_up 1.0" in text
