"""The engine in-process through the fetch seam: answers scripted per URL, no sockets.

Beside the real-farm tests (which cover the network itself), these drive the whole engine — reader,
scheduler, retries, breaker, imaging, tars, results — with a Fetch that answers from memory, the way
httpx's transports let a client be tested.
"""

from __future__ import annotations

import asyncio
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from fetcher.budget import ByteBudget
from fetcher.config import load_config
from fetcher.farm.images import make_image
from fetcher.netguard import UrlRefused
from fetcher.pipeline import Pipeline, prepare
from fetcher.records import FetchOutcome, Reason
from tests.conftest import results_table, write_urls

Answer = Callable[[int], FetchOutcome]  # the n-th call (1-based) -> what it gets


class Scripted:
    """A Fetch answering from a script: per URL, a function of how many times it was asked."""

    slot: str | None = None  # one politeness slot per URL host, as HTTP

    def __init__(self, budget: ByteBudget, script: Callable[[str], Answer], delay: float = 0.0) -> None:
        self.budget = budget
        self.script = script
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.inflight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    def admit(self, url: object) -> str:
        if not isinstance(url, str) or not url.startswith("http://"):
            raise UrlRefused(Reason.UNSUPPORTED_SCHEME, f"not http: {url!r}")
        return url

    async def fetch(self, url: str) -> FetchOutcome:
        host = url.split("/")[2]
        self.calls[url] += 1
        self.inflight[host] += 1
        self.peak[host] = max(self.peak[host], self.inflight[host])
        try:
            await asyncio.sleep(self.delay)
            out = self.script(url)(self.calls[url])
        finally:
            self.inflight[host] -= 1
        if out.body is not None:  # the seam's contract: a body holds its bytes in the run's budget
            await self.budget.take(len(out.body))
        return out

    def prefetch(self, url: str) -> None:
        return None


def _image(i: int) -> FetchOutcome:
    return FetchOutcome(body=make_image(40 + i % 5, 30, "jpeg", seed=i), http_status=200)


def _run(tmp: Path, urls: list[str], script: Callable[[str], Answer], *flags: str, delay: float = 0.0) -> Scripted:
    inp = write_urls(tmp / "in.parquet", urls)
    cfg = load_config(["--input", str(inp), "--output", str(tmp / "out"), "--samples-per-tar", "10",
                       "--min-free-disk", "0", "--metrics-address", "", "--progress", "off",
                       "--backoff-base", "0.01", "--backoff-max", "0.05", *flags])  # fmt: skip
    made: list[Scripted] = []

    def factory(budget: ByteBudget) -> Scripted:
        made.append(Scripted(budget, script, delay))
        return made[-1]

    asyncio.run(Pipeline(prepare(cfg), fetch=factory).run())
    return made[0]


def test_retries_final_failures_and_tars_through_the_seam(tmp_path: Path) -> None:
    def script(url: str) -> Answer:
        i = int(url.rsplit("/", 1)[1])
        if "flaky" in url:  # 503 twice, then the image: retried within the run
            return lambda n: FetchOutcome(reason=Reason.HTTP_5XX, http_status=503) if n < 3 else _image(i)
        if "gone" in url:
            return lambda n: FetchOutcome(reason=Reason.HTTP_404, http_status=404)
        if "junk" in url:
            return lambda n: FetchOutcome(body=b"<html>not an image</html>", http_status=200)
        return lambda n: _image(i)

    urls = [f"http://img{i % 3}.test/{i}" for i in range(26)]
    urls += ["http://flaky.test/26", "http://gone.test/27", "http://junk.test/28", "ftp://nope.test/29"]
    fetch = _run(tmp_path, urls, script)

    rows = {r["url"]: r for r in results_table(tmp_path / "out").to_pylist()}
    assert len(rows) == 30  # every row once
    assert all(rows[u]["status"] == "success" for u in urls[:26])
    assert rows[urls[26]]["status"] == "success" and rows[urls[26]]["attempts"] == 3
    assert rows[urls[27]]["error_message"] == "http_404" and fetch.calls[urls[27]] == 1  # final: not retried
    assert rows[urls[28]]["error_message"] == "not_an_image"
    assert rows[urls[29]]["error_message"] == "unsupported_scheme" and urls[29] not in fetch.calls
    images = 0
    for tar in sorted((tmp_path / "out").glob("*.tar")):
        with tarfile.open(tar) as tf:
            images += sum(1 for m in tf if m.name.endswith(".jpg"))
    assert images == 27


def test_per_host_concurrency_and_the_breaker_in_process(tmp_path: Path) -> None:
    def script(url: str) -> Answer:
        if "down.test" in url:  # the host never answers: its breaker opens, its rows end without waiting
            return lambda n: FetchOutcome(reason=Reason.TIMEOUT, detail="scripted timeout")
        return lambda n: _image(int(url.rsplit("/", 1)[1]))

    urls = [f"http://busy.test/{i}" for i in range(24)] + [f"http://down.test/{i}" for i in range(24, 30)]
    fetch = _run(tmp_path, urls, script, "--per-host-concurrency", "2", "--breaker-threshold", "3", delay=0.01)

    assert fetch.peak["busy.test"] == 2  # the limit held, and was used
    rows = {r["url"]: r for r in results_table(tmp_path / "out").to_pylist()}
    assert all(rows[u]["status"] == "success" for u in urls[:24])
    down = Counter(rows[u]["error_message"] for u in urls[24:])
    assert set(down) <= {"timeout", "host_unavailable"} and down["host_unavailable"] >= 1, down
    # Once open, the breaker sends at most a probe: far fewer requests than 6 rows x 3 attempts.
    assert sum(n for u, n in fetch.calls.items() if "down.test" in u) < 18
