"""``--politeness-key domain`` end to end: two names of one registrable domain share one politeness slot.

Real fetcher subprocesses resolve the names with the farm's real DNS server (``--dns-server``) and fetch
slow images from the farm by name. The farm counts the requests it is serving at once, per run and per
Host name. Its count is exact, not inferred from arrival times: the farm's handler runs from after the
request arrived until before the response leaves, inside the interval fetcher holds its permit, so the
farm can never see more at once than fetcher let start. With ``domain`` the two names together stay
within ``--per-host-concurrency``; with ``host`` (the control run) each name has its own slot, so more are
in flight at once: the test fails if the domain key were ignored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from fetcher.farm.internet import Internet, InternetThread
from fetcher.farm.names import Handler
from fetcher.hostkey import key_function
from tests.conftest import FARM_ADDRESSES, results_table, run_fetcher, write_urls

PER_HOST = 2  # --per-host-concurrency
ROWS_PER_NAME = 8
SLOW_MS = 400  # each request is held this long by the farm, so requests that overlap are counted together
NAMES = (1, 2)  # h1.farm.test and h2.farm.test, on two different farm addresses (h<N> -> address N % 2)


@dataclass
class InFlight:
    """Requests the farm is serving at once, per ``run`` query value: in total and per Host name."""

    now: Counter[tuple[str, str]] = field(default_factory=Counter)
    peak: Counter[tuple[str, str]] = field(default_factory=Counter)
    served: Counter[tuple[str, str]] = field(default_factory=Counter)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count the request in flight while its handler runs (keyed by run and by run + name)."""
        run = request.query.get("run")
        if run is None:
            return await handler(request)
        keys = ((run, "*"), (run, request.host.rsplit(":", 1)[0]))
        for k in keys:
            self.now[k] += 1
            self.peak[k] = max(self.peak[k], self.now[k])
        try:
            return await handler(request)
        finally:
            for k in keys:
                self.now[k] -= 1
                self.served[k] += 1


class CountingInternet(InternetThread):
    """The named farm with an in-flight counter installed before it starts (its app is frozen after)."""

    def __init__(self, inflight: InFlight) -> None:
        super().__init__(FARM_ADDRESSES[:2])
        self.inflight = inflight

    async def _start(self) -> Internet:
        net = Internet(*self._args, **self._kwargs)
        net.farm.app.middlewares.append(self.inflight.middleware)
        return await net.start()


@pytest.fixture(scope="module")
def counted() -> Iterator[tuple[Internet, InFlight]]:
    inflight = InFlight()
    with CountingInternet(inflight) as net:
        yield net, inflight


def _run(net: Internet, tmp: Path, run: str, key: str, engines: int = 1) -> None:
    """Fetch ROWS_PER_NAME slow images from each name (interleaved) with ``--politeness-key key``."""
    urls = [net.url(n, f"/slow/{SLOW_MS}/small.jpg?run={run}&i={i}") for i in range(ROWS_PER_NAME) for n in NAMES]
    inp = write_urls(tmp / "in.parquet", urls)
    # with 2 engines, each tar (one per engine) holds rows of both names: the slot must be shared box-wide
    per_tar = len(urls) // engines
    run_fetcher(
        "--input", str(inp), "--output", str(tmp / "out"), *net.fetcher_flags(),
        "--politeness-key", key, "--per-host-concurrency", str(PER_HOST), "--concurrency", "16",
        "--processes", str(engines), "--samples-per-tar", str(per_tar), "--retries", "0",
        "--metrics-address", "",
        timeout=60,
    )  # fmt: skip
    rows = results_table(tmp / "out").to_pylist()
    assert sorted(str(r["url"]) for r in rows) == sorted(urls)
    assert all(r["status"] == "success" for r in rows), Counter(str(r["error_message"]) for r in rows)


def test_names_share_one_registrable_domain(counted: tuple[Internet, InFlight]) -> None:
    # The premise of the end-to-end test: ``.test`` is not in the bundled public-suffix list, so the
    # list's default rule ("*": an unlisted TLD is itself a public suffix) makes ``farm.test`` the
    # registrable domain of every hN.farm.test. Were ``test`` ever listed with a wildcard (like ``*.ck``),
    # farm.test would become a suffix, each name its own site, and this check, not a timing one, says so.
    net, _ = counted
    urls = [net.url(n, "/img/small.jpg") for n in NAMES]
    assert len({key_function("host")(u) for u in urls}) == len(NAMES)
    assert {key_function("domain")(u) for u in urls} == {net.zone.zone}


@pytest.mark.parametrize("engines", [1, 2], ids=["1-engine", "2-engines"])
def test_domain_key_shares_one_slot_between_names(
    counted: tuple[Internet, InFlight], tmp_path: Path, engines: int
) -> None:
    net, inflight = counted
    hosts = [net.zone.name(n) for n in NAMES]
    run = f"domain{engines}"
    _run(net, tmp_path / "domain", run, "domain", engines)
    for h in hosts:
        assert inflight.served[run, h] == ROWS_PER_NAME, "every row was fetched by its name"
        assert net.dns.log.count(h) >= 1, f"{h} was never resolved by the farm's DNS server"
    # The bound itself: both names together never above --per-host-concurrency (exact, see the docstring).
    assert inflight.peak[run, "*"] <= PER_HOST, (
        f"{inflight.peak[run, '*']} requests in flight at once to {' and '.join(hosts)} (one domain),"
        f" per name {[inflight.peak[run, h] for h in hosts]}; --per-host-concurrency {PER_HOST}"
    )
    # ...and the slot was used up to it (16 rows queued, each held 0.4 s: the 2 starts overlap)
    assert inflight.peak[run, "*"] == PER_HOST

    # Control: with the host key each name has its own slot of PER_HOST, so the farm sees more at once.
    # Expected 2 * PER_HOST; PER_HOST + 1 is enough to tell the keys apart and leaves room for a loaded box.
    control = f"host{engines}"
    _run(net, tmp_path / "host", control, "host", engines)
    print(
        f"\nat once, {engines} engine(s): domain {inflight.peak[run, '*']} (per name"
        f" {[inflight.peak[run, h] for h in hosts]}), host {inflight.peak[control, '*']}"
        f" (per name {[inflight.peak[control, h] for h in hosts]})"
    )
    assert all(inflight.peak[control, h] <= PER_HOST for h in hosts), "each name still within its own slot"
    assert inflight.peak[control, "*"] > PER_HOST, (
        f"the control run (--politeness-key host) never had more than {PER_HOST} in flight at once:"
        " it cannot tell a shared slot from separate ones"
    )
