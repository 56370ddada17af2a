"""DNS end to end: fetcher's resolver against the farm's real DNS server (no resolver mocks).

The farm's zone (fetcher/farm/names.py) has image hosts by name, every DNS fault (NXDOMAIN, SERVFAIL,
no answer, no address, AAAA-only, a dropped AAAA, short TTL, answers in refused ranges) and the fault
hosts real lists have, reached by name. Everything stays on 127.0.0.0/8 (and ::1).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.farmsets import IMAGE_HOSTS
from fetcher.config import load_config
from fetcher.dns import (
    DNS_REASONS,
    TRANSIENT,
    Answer,
    DnsCache,
    DnsError,
    DnsFailure,
    DnsOptions,
    DnsResolver,
    parse_server,
    read_hosts,
)
from fetcher.farm.internet import Internet, InternetThread
from fetcher.metrics import Metrics
from fetcher.netguard import NetPolicy, UrlRefused, parse_networks
from fetcher.options import ConfigError
from fetcher.records import Reason
from fetcher.retry import RETRYABLE
from tests.conftest import FARM_ADDRESSES, results_table, run_fetcher, write_urls

LATENCY = 0.05


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the cache alone ---------------------------------------------------------------------------


def test_cache_honours_ttl_and_size() -> None:
    clock = FakeClock()
    cache = DnsCache(size=2, clock=clock)
    cache.put("a", Answer(clock.now + 10))
    cache.put("b", Answer(clock.now + 1, failure=DnsFailure.NXDOMAIN))
    assert cache.get("a") is not None and cache.get("b") is not None
    clock.now += 1
    assert cache.get("b") is None, "an entry is gone when its TTL is over"
    assert cache.get("a") is not None
    cache.put("c", Answer(clock.now + 10))
    cache.put("d", Answer(clock.now + 10))
    assert len(cache) == 2 and cache.get("a") is None, "the oldest entry is evicted past the size bound"
    cache.put("e", Answer(clock.now - 1))
    assert cache.get("e") is None, "an answer already expired (TTL 0) is not stored"


def test_hosts_file_and_server_syntax(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# c\n127.0.0.1 localhost vm\n::1 localhost ip6-localhost\nbad line\n")
    got = read_hosts(hosts)
    assert [str(ip) for ip in got["localhost"]] == ["127.0.0.1", "::1"]
    assert read_hosts(tmp_path / "missing") == {}
    assert parse_server("127.0.0.1") == "127.0.0.1"
    assert parse_server("127.0.0.53:5353") == "127.0.0.53:5353"
    assert parse_server("[::1]:53") == "[::1]:53"
    for bad in ("dns.example:53", "127.0.0.1:0", "127.0.0.1:x", "[::1]x"):
        with pytest.raises(ValueError):
            parse_server(bad)


def test_dns_server_flag_and_reasons() -> None:
    base = ["--input", "x", "--output", "y"]
    cfg = load_config([*base, "--dns-server", "127.0.0.1:5353,127.0.0.2", "--dns-server", "::1"])
    assert cfg.dns.servers == ["127.0.0.1:5353", "127.0.0.2", "::1"]
    with pytest.raises(ConfigError, match="--dns-server"):
        load_config(["--input", "x", "--output", "y", "--dns-server", "resolver.invalid"])
    assert load_config(["--input", "x", "--output", "y"]).dns.servers == [], "default: the system's resolv.conf"
    # transient failures are retried, permanent ones are not; every kind has its own named reason
    assert len(set(DNS_REASONS.values())) == len(DnsFailure)
    for kind, reason in DNS_REASONS.items():
        assert (reason in RETRYABLE) == (kind in TRANSIENT), kind
    assert "dns_error" not in {r.value for r in Reason}


# -- the resolver against the real DNS server ------------------------------------------------


@pytest.fixture
async def net() -> Iterator[Internet]:
    n = await Internet(FARM_ADDRESSES[:2], latency=LATENCY).start()
    yield n  # type: ignore[misc]
    await n.stop()


def _resolver(net: Internet, clock: FakeClock | None = None, **kw: float) -> DnsResolver:
    policy = NetPolicy(allowed=parse_networks(["127.0.0.2/32", "127.0.0.3/32", "::1/128"]))
    opts = DnsOptions(dns_server=[net.dns.server], **kw)  # type: ignore[arg-type]
    return DnsResolver(opts, policy, clock=clock or time.monotonic, hosts={})


async def _addresses(r: DnsResolver, name: str) -> list[str]:
    return [a["host"] for a in await r.resolve(name, 80, socket.AF_UNSPEC)]


async def test_positive_cache_honours_ttl(net: Internet) -> None:
    clock = FakeClock()
    r = _resolver(net, clock)
    try:
        assert await _addresses(r, "h1.farm.test") == ["127.0.0.3"]
        assert await _addresses(r, "ttl1-0.farm.test") == ["127.0.0.2"]
        assert net.dns.log.count("h1.farm.test", "A") == 1
        await _addresses(r, "h1.farm.test")
        await _addresses(r, "ttl1-0.farm.test")
        assert net.dns.log.count("h1.farm.test", "A") == 1 and net.dns.log.count("ttl1-0.farm.test", "A") == 1
        clock.now += 2  # past the 1-s TTL, well within the 300-s one
        await asyncio.sleep(1.1)  # c-ares keeps its own TTL-bound cache, on the real clock
        await _addresses(r, "h1.farm.test")
        await _addresses(r, "ttl1-0.farm.test")
        assert net.dns.log.count("h1.farm.test", "A") == 1, "a live answer is served from the cache"
        assert net.dns.log.count("ttl1-0.farm.test", "A") == 2, "an expired answer is asked again"
        assert r.stats.resolutions == 6 and r.stats.cache_hits == 3 and r.stats.lookups == 3
    finally:
        await r.close()


async def test_negative_cache_and_transient_failures(net: Internet) -> None:
    clock = FakeClock()
    r = _resolver(net, clock, dns_negative_ttl=30.0)
    try:
        for name, kind in (
            ("nx-1.farm.test", DnsFailure.NXDOMAIN),
            ("zzz.farm.test", DnsFailure.NXDOMAIN),
            ("noaddr-1.farm.test", DnsFailure.NO_ADDRESS),
            ("servfail-1.farm.test", DnsFailure.SERVFAIL),
        ):
            for _ in range(2):
                with pytest.raises(DnsError) as info:
                    await r.resolve(name, 80, socket.AF_UNSPEC)
                assert info.value.kind is kind and info.value.reason is DNS_REASONS[kind]
        assert net.dns.log.count("nx-1.farm.test", "A") == 1, "NXDOMAIN is remembered"
        assert net.dns.log.count("noaddr-1.farm.test", "A") == 1, "no-address is remembered"
        servfails = net.dns.log.count("servfail-1.farm.test", "A")
        clock.now += 1  # past the transient TTL, within the negative one
        with pytest.raises(DnsError):
            await r.resolve("servfail-1.farm.test", 80, socket.AF_UNSPEC)
        with pytest.raises(DnsError):
            await r.resolve("nx-1.farm.test", 80, socket.AF_UNSPEC)
        assert net.dns.log.count("servfail-1.farm.test", "A") > servfails, "a SERVFAIL is asked again soon"
        assert net.dns.log.count("nx-1.farm.test", "A") == 1
        clock.now += 30
        with pytest.raises(DnsError):
            await r.resolve("nx-1.farm.test", 80, socket.AF_UNSPEC)
        assert net.dns.log.count("nx-1.farm.test", "A") == 2, "the negative TTL runs out"
    finally:
        await r.close()


async def test_timeout_aaaa_only_and_broken_ipv6(net: Internet) -> None:
    r = _resolver(net, dns_timeout=3.0)
    try:
        start = time.monotonic()
        with pytest.raises(DnsError) as info:
            await r.resolve("silent-1.farm.test", 80, socket.AF_UNSPEC)
        assert info.value.kind is DnsFailure.TIMEOUT and info.value.reason is Reason.DNS_TIMEOUT
        assert 2.9 < time.monotonic() - start < 8, "a silent resolver costs --dns-timeout, not more"
        assert await _addresses(r, "v6only-3.farm.test") == ["::1"]
        start = time.monotonic()
        assert await _addresses(r, "brokenv6-1.farm.test") == ["127.0.0.3"]
        assert time.monotonic() - start < 2, "an unanswered AAAA question does not stall an IPv4 answer"
        with pytest.raises(DnsError) as info:
            await r.resolve("v6only-3.farm.test", 80, socket.AF_INET)
        assert info.value.kind is DnsFailure.NO_ADDRESS
    finally:
        await r.close()


async def test_unreachable_resolver_is_named() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    opts = DnsOptions(dns_server=[f"127.0.0.1:{port}"], dns_timeout=2.0)
    r = DnsResolver(opts, NetPolicy(allow_private=True), hosts={})
    try:
        with pytest.raises(DnsError) as info:
            await r.resolve("h1.farm.test", 80, socket.AF_UNSPEC)
        assert info.value.kind in (DnsFailure.REFUSED, DnsFailure.TIMEOUT)
        assert info.value.reason in RETRYABLE
    finally:
        await r.close()


async def test_policy_applies_to_every_answer(net: Internet) -> None:
    r = _resolver(net)
    try:
        for name, detail in (
            ("outside-1.farm.test", "127.0.0.99 is loopback"),
            ("private-1.farm.test", "10.0.0.1 is private"),
        ):
            for _ in range(2):  # from the server, then from the cache: refused both times
                with pytest.raises(UrlRefused) as info:
                    await r.resolve(name, 80, socket.AF_UNSPEC)
                assert info.value.reason is Reason.BLOCKED_ADDRESS and detail in info.value.detail
        assert r.stats.failures == {"policy": 4}
    finally:
        await r.close()


async def test_lookups_are_concurrent_shared_and_bounded(net: Internet) -> None:
    r = _resolver(net)
    try:
        start = time.monotonic()
        names = [f"h{i}.farm.test" for i in range(200)]
        got = await asyncio.gather(*(_addresses(r, n) for n in names * 2))
        assert all(g == [FARM_ADDRESSES[i % 2]] for i, g in enumerate(got[:200]))
        elapsed = time.monotonic() - start
        # 200 names at 50 ms each would take 10 s one after another
        assert elapsed < 3, f"lookups were serialised ({elapsed:.1f} s)"
        assert all(net.dns.log.count(n, "A") == 1 for n in names), "concurrent requests for a name share a lookup"
        assert r.stats.lookups == 200 and r.stats.cache_hits == 200
    finally:
        await r.close()
    bounded = _resolver(net, dns_concurrency=4)
    try:
        start = time.monotonic()
        await asyncio.gather(*(_addresses(bounded, f"h{i}.farm.test") for i in range(1000, 1020)))
        assert time.monotonic() - start >= 5 * LATENCY * 0.9, "20 lookups 4 at a time take 5 latencies at least"
    finally:
        await bounded.close()


async def test_prefetch_fills_the_cache_ahead(net: Internet) -> None:
    r = _resolver(net)
    try:
        for _ in range(3):
            r.prefetch("h42.farm.test")  # rows of one host read ahead: one lookup
        r.prefetch("127.0.0.2")  # a literal: nothing to resolve
        r.prefetch("nx-9.farm.test")
        start = time.monotonic()
        while r.stats.lookups < 2 and time.monotonic() - start < 5:
            await asyncio.sleep(0.01)
        assert await _addresses(r, "h42.farm.test") == ["127.0.0.2"]
        with pytest.raises(DnsError):
            await r.resolve("nx-9.farm.test", 80, socket.AF_UNSPEC)
        assert net.dns.log.count("h42.farm.test", "A") == 1 and net.dns.log.count("nx-9.farm.test", "A") == 1
        assert r.stats.lookups == 2 and r.stats.cache_hits == 2, "the fetch found the prefetched answers"
        r.prefetch("h43.farm.test")  # still in flight at close: cancelled cleanly
    finally:
        await r.close()


def test_bench_lists_are_row_for_row_twins() -> None:
    from bench.dns import url_lists
    from fetcher.farm.names import NameZone

    zone = NameZone(addresses=IMAGE_HOSTS)
    ip, named = url_lists(4000, 2000, 8080)
    assert len({u.split("/")[2] for u in named}) == 2000
    for a, b in zip(ip, named, strict=True):
        host = b.split("/")[2].split(":")[0]
        answer = zone.resolve(host, "A")
        assert answer is not None and f"http://{answer.records[0][0]}:8080" + b.split(":8080")[1] == a


def test_metrics_observe_dns() -> None:
    m = Metrics()
    m.dns_lookup(0.1, None)
    m.dns_lookup(0.2, DnsFailure.NXDOMAIN)
    m.dns_resolved(False, None)
    m.dns_resolved(True, DnsFailure.POLICY)
    text = m.exposition().decode()
    assert 'fetcher_dns_lookups_total{outcome="nxdomain"} 1.0' in text
    assert 'fetcher_dns_lookups_total{outcome="ok"} 1.0' in text
    assert 'fetcher_dns_resolutions_total{cache="hit"} 1.0' in text
    assert 'fetcher_dns_failures_total{kind="policy"} 1.0' in text
    assert 'fetcher_dns_failures_total{kind="timeout"} 0.0' in text
    assert "fetcher_dns_lookup_duration_seconds_count 2.0" in text


# -- a real fetcher run over names -----------------------------------------------------------


class Listener:
    """A TCP server that only counts connections (where nothing may connect)."""

    def __init__(self, address: str, port: int) -> None:
        self.sock = socket.create_server((address, port))
        self.sock.settimeout(0.2)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def named_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, dict[str, object]], Internet, str]]:
    with InternetThread(FARM_ADDRESSES, latency=LATENCY, ipv6=True) as net:
        guard = Listener(net.zone.outside, net.port)
        try:
            cases = {
                "ok": net.url(3, "/img/small.jpg"),
                "ttl1": net.url(1, "/img/small.jpg", "ttl1"),
                "v6only": net.url(1, "/img/small.jpg", "v6only"),
                "brokenv6": net.url(2, "/img/small.jpg", "brokenv6"),
                "noaddr": net.url(1, "/img/small.jpg", "noaddr"),
                "nx": net.url(1, "/img/small.jpg", "nx"),
                "unknown": f"http://nosuch.{net.zone.zone}:{net.port}/img/small.jpg",
                "servfail": net.url(1, "/img/small.jpg", "servfail"),
                "silent": net.url(1, "/img/small.jpg", "silent"),
                "outside": net.url(1, "/img/small.jpg", "outside"),
                "private": net.url(1, "/img/small.jpg", "private"),
                "closed": net.url(1, "/img/small.jpg", "closed"),
                "hang": net.url(1, "/img/small.jpg", "hang"),
                "e503": net.url(1, "/img/small.jpg", "e503"),
                "e500": net.url(1, "/img/small.jpg", "e500"),
                "trickle": net.url(1, "/img/small.jpg", "trickle"),
                "slowbw": net.url(1, "/img/small.jpg", "slowbw"),
                "redir": net.url(5, "/img/small.jpg?via=redir", "redir"),
            }
            urls = list(cases.values())
            throttled = [net.url(1, f"/img/small.jpg?t={i}", "throttle") for i in range(2)]
            urls += throttled
            urls += [net.url(100 + i, f"/img/small.jpg?many={i}") for i in range(40)]
            tmp = tmp_path_factory.mktemp("named")
            inp = write_urls(tmp / "urls.parquet", urls)
            proc = run_fetcher(
                "--input", str(inp), "--output", str(tmp / "out"), *net.fetcher_flags(),
                "--retries", "1", "--timeout", "3", "--read-timeout", "2", "--dns-timeout", "1",
                "--processes", "1", "--metrics-address", "",
            )  # fmt: skip
            rows = {str(r["url"]): r for r in results_table(tmp / "out").to_pylist()}
            by_case = {name: rows[url] for name, url in cases.items()}
            for i, url in enumerate(throttled):
                by_case[f"throttle{i}"] = rows[url]
            many = [rows[u] for u in urls[-40:]]
            by_case["many_ok"] = {"n": sum(r["status"] == "success" for r in many)}
            assert guard.accepted == 0, "a name resolving outside the allowed range was connected to"
            yield by_case, net, proc.stdout + proc.stderr
        finally:
            guard.close()


@pytest.mark.parametrize(
    ("case", "reason", "detail"),
    [
        ("ok", None, None),
        ("ttl1", None, None),
        ("v6only", None, None),
        ("brokenv6", None, None),
        ("slowbw", None, None),
        ("redir", None, None),
        ("throttle0", None, None),
        ("throttle1", None, None),
        ("noaddr", "dns_no_address", "noaddr-1.farm.test"),
        ("nx", "dns_nxdomain", "nx-1.farm.test"),
        ("unknown", "dns_nxdomain", "nosuch.farm.test"),
        ("servfail", "dns_servfail", "servfail-1.farm.test"),
        ("silent", "dns_timeout", "silent-1.farm.test"),
        ("outside", "blocked_address", "outside-1.farm.test -> 127.0.0.99 is loopback"),
        ("private", "blocked_address", "private-1.farm.test -> 10.0.0.1 is private"),
        ("closed", "connect_error", None),
        ("hang", "timeout", None),
        ("trickle", "timeout", None),
        ("e503", "http_5xx", None),
        ("e500", "http_5xx", None),
    ],
)
def test_named_hosts_end_in_named_reasons(
    named_run: tuple[dict[str, dict[str, object]], Internet, str], case: str, reason: str | None, detail: str | None
) -> None:
    rec = named_run[0][case]
    assert rec["error_message"] == reason, (rec["error_message"], rec["error_detail"], rec["attempts"])
    if detail is not None:
        assert detail in str(rec["error_detail"]), rec
    if reason is None:
        assert rec["status"] == "success", rec


def test_named_run_retries_transient_dns_only(named_run: tuple[dict[str, dict[str, object]], Internet, str]) -> None:
    rows = named_run[0]
    assert rows["servfail"]["attempts"] == 2 and rows["silent"]["attempts"] == 2, "transient DNS failures retried"
    assert rows["nx"]["attempts"] == 1 and rows["noaddr"]["attempts"] == 1, "permanent DNS failures not retried"


def test_named_run_reaches_hosts_by_name(named_run: tuple[dict[str, dict[str, object]], Internet, str]) -> None:
    rows, net, output = named_run
    assert rows["many_ok"]["n"] == 40
    hosts = {a.host.rsplit(":", 1)[0] for a in net.farm.state.arrivals}
    assert "h6.farm.test" in hosts, "the redirect from redir-5 went to the next name"
    assert net.faults.throttled >= 1, "the throttled host answered 429 before its images came"
    assert "127.0.0.99" not in hosts and "10.0.0.1" not in hosts
    assert net.dns.log.count("ttl1-1.farm.test") >= 1
    assert "dns " in output and "cached or prefetched" in output, "the summary has a DNS line"
