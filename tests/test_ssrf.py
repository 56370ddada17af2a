"""The address policy against a fuzzed corpus of URL spellings: 0 connections to refused ranges.

Every spelling names a refused address in a way some layer normalises: Unicode digits and dots
(IDNA/UTS-46 turn full-width, mathematical, circled digits and ideographic dots into ASCII), legacy
numeric forms (``2130706433``, ``0x7f.1``, ``0177.0.0.1``), v4-mapped IPv6, zone ids, trailing dots,
percent-encoding, userinfo.

Traffic never leaves loopback, even if the code under test were broken:
- spellings of non-loopback addresses (169.254.169.254, 10.0.0.1, ...) go through the policy function,
  and through the real client only inside ``connect_guard``, which refuses any non-loopback connect
  before a packet is sent;
- end-to-end runs (``python -m fetcher``) use loopback targets only, with a counting Sentinel listening
  on the refused addresses (127.0.0.1, 127.0.0.10, ::1) so a leak is seen, not inferred.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yarl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetcher.farm import Farm
from fetcher.http import HttpClient, HttpOptions
from fetcher.netguard import NetPolicy, UrlRefused, parse_networks
from fetcher.records import Reason
from tests.conftest import results_table, run_fetcher, write_urls
from tests.sentinel import Sentinel

ALLOWED = "127.0.0.2"  # the farm's first address, the only one the runs here allow
POLICY = NetPolicy(allowed=parse_networks([f"{ALLOWED}/32"]))
LOOPBACK_REFUSED = ("127.0.0.1", "127.0.0.10")  # the session's Sentinel listens on both
REMOTE_REFUSED = ("169.254.169.254", "10.0.0.1", "192.168.0.1", "100.64.0.1", "0.0.0.0", "172.16.0.1")

# Characters that IDNA/NFKC map onto each ASCII digit (full-width, mathematical, circled, sub/superscript).
_DIGIT_FORMS: dict[str, list[str]] = {
    d: [
        chr(0xFF10 + i),  # full-width
        *(chr(base + i) for base in (0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6)),  # mathematical
        chr(0x24EA) if i == 0 else chr(0x2460 + i - 1),  # circled
        chr(0x2080 + i),  # subscript
    ]
    for i, d in enumerate("0123456789")
}
_DOTS = [".", "\u3002", "\uff0e", "\uff61"]  # ASCII, ideographic, full-width, half-width ideographic
_LETTERS = {c: [chr(0xFF41 + ord(c) - ord("a")), chr(0xFF21 + ord(c) - ord("a"))] for c in "abcdefx"}
_USERINFO = ["", "", "user@", "user:pass@", f"{ALLOWED}@", f"{ALLOWED}:80@", "good.example@", "%40@"]


def numeric_forms(ip: str) -> list[str]:
    """Every IPv4 spelling inet_aton (and so getaddrinfo) reads as ``ip``."""
    n = int(ipaddress.IPv4Address(ip))
    a, b, c, d = (int(x) for x in ip.split("."))
    return [
        ip,
        str(n),
        hex(n),
        "0" + oct(n)[2:],
        f"{a}.{(b << 16) | (c << 8) | d}",
        f"{a}.{b}.{(c << 8) | d}",
        f"{hex(a)}.{b}.{c}.{d}",
        f"0{a:o}.{b}.{c}.{d}",
        f"{hex(a)}.{(b << 16) | (c << 8) | d}",
        f"0{a:o}.0x{b:x}.{c}.0{d:o}",
        f"{a:04d}.{b}.{c}.{d}".lstrip("0") or "0",
    ]


def host_forms(ip: str) -> list[str]:
    """IPv4 numeric forms plus IPv6 literals that map back onto ``ip``."""
    v4 = ipaddress.IPv4Address(ip)
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    v6 = [f"[::ffff:{ip}]", f"[{mapped.exploded}]", f"[::ffff:{mapped.exploded[-9:]}]", f"[0:0:0:0:0:ffff:{ip}]"]
    v6 += [f"[::ffff:{ip}%25eth0]", f"[::ffff:{int(v4) >> 16:x}:{int(v4) & 0xFFFF:x}%251]"]
    return numeric_forms(ip) + v6


def spell(rng: random.Random, ip: str, port: int | None = None, path: str = "/x.jpg") -> str:
    """One randomised spelling of a URL to ``ip``.

    Percent-encoding and Unicode are not mixed in one netloc (yarl, and so aiohttp, refuses that mix).
    """
    host = rng.choice(host_forms(ip))
    bracketed = host.startswith("[")
    percent = rng.random() < 0.25
    uni = 0.0 if percent else (0.1 if bracketed else 0.5)  # Unicode inside brackets is mostly refused
    out = []
    for ch in host:
        roll = rng.random()
        if ch.isdigit() and roll < uni:
            out.append(rng.choice(_DIGIT_FORMS[ch]))
        elif ch == "." and roll < uni:
            out.append(rng.choice(_DOTS))
        elif ch in _LETTERS and not bracketed and roll < uni * 0.6:
            out.append(rng.choice(_LETTERS[ch]))
        elif ch.isdigit() and percent and not bracketed and roll < 0.3:
            out.append(f"%{ord(ch):02X}")  # percent-encoded digit: no client may read it as a number
        else:
            out.append(ch)
    host = "".join(out)
    if not bracketed and rng.random() < 0.2:
        host += rng.choice([".", "\u3002", ".."]) if uni else rng.choice([".", ".."])
    port_text = ""
    if port is not None:
        port_text = ":" + "".join(rng.choice([c, c, _DIGIT_FORMS[c][0]]) if uni else c for c in str(port))
    scheme = rng.choice(["http", "http", "HTTP", "https", "hTtP"])
    userinfo = rng.choice(_USERINFO if not uni else [u for u in _USERINFO if "%" not in u])
    return f"{scheme}://{userinfo}{host}{port_text}{path}"


def corpus(targets: tuple[str, ...], port: int | None, n: int, seed: str) -> list[str]:
    """A fixed, reproducible corpus: the issue's spellings, then ``n`` random ones."""
    fixed = [
        f"http://\uff11\uff12\uff17.\uff10.\uff10.\uff11{':' + str(port) if port else ''}/x",  # full-width 127.0.0.1
        f"http://127\u30020\u30020\u30021{':' + str(port) if port else ''}/",  # ideographic dots
        f"http://\u2460\u2461\u2466.\u24ea.\u24ea.\u2460{':' + str(port) if port else ''}/",  # circled digits
        f"http://\U0001d7cf\U0001d7d0\U0001d7d5.\U0001d7ce.\U0001d7ce.\U0001d7cf{':' + str(port) if port else ''}/",
    ]
    fixed = fixed if "127.0.0.1" in targets else []
    rng = random.Random(seed)
    return fixed + [spell(rng, rng.choice(targets), port) for _ in range(n)]


def _numeric_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """What libc itself reads the host as, with no DNS: an independent oracle for the policy."""
    # A client decodes percent-escapes only in an IPv6 zone id ("%25eth0"); "%31" is no digit to it.
    bare = urllib.parse.unquote(host.strip("[]")) if host.startswith("[") else host
    for candidate in {bare, bare.rstrip(".")}:
        try:
            info = socket.getaddrinfo(candidate, None, flags=socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError):
            continue
        ip = ipaddress.ip_address(str(info[0][4][0]).split("%")[0])
        return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    return None


def assert_refused(url: str, target: str) -> None:
    """The policy refuses ``url``, or the client could never reach ``target`` through it."""
    try:
        checked = yarl.URL(POLICY.check_url(url))
    except UrlRefused as exc:
        if exc.reason is Reason.BLOCKED_ADDRESS:
            assert f"-> {ipaddress.ip_address(target)} is" in exc.detail, (url, exc.detail)
            return
        assert exc.reason is Reason.INVALID_URL, (url, exc.reason, exc.detail)
        with pytest.raises(ValueError):  # only what the client itself could not parse is "invalid"
            yarl.URL(url).port  # noqa: B018
        return
    host = checked.raw_host or ""
    assert _numeric_address(host) is None, f"{url!r} passed the policy as {checked} (host {host!r})"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.sampled_from(LOOPBACK_REFUSED + REMOTE_REFUSED))
def test_fuzzed_spellings_of_refused_addresses_are_refused(rng: random.Random, target: str) -> None:
    assert_refused(spell(rng, target, rng.choice([None, 80, 8081])), target)


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False))
def test_fuzzed_spellings_of_the_allowed_address_pass(rng: random.Random) -> None:
    # Not a blanket refusal of odd spellings: one that names the allowed farm address goes there.
    url = spell(rng, ALLOWED, 8081)
    try:
        checked = yarl.URL(POLICY.check_url(url))
    except UrlRefused as exc:
        assert exc.reason is not Reason.BLOCKED_ADDRESS, (url, exc.detail)
        return
    host = checked.raw_host or ""
    assert _numeric_address(host) in (None, ipaddress.ip_address(ALLOWED)), (url, checked)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        (
            "http://\uff11\uff16\uff19.\uff12\uff15\uff14.\uff11\uff16\uff19.\uff12\uff15\uff14/latest/meta-data/",
            "169.254.169.254",
        ),
        ("http://\uff11\uff10.\uff10.\uff10.\uff11/", "10.0.0.1"),
        ("http://\u246f\u2468.\u2461\u2464\u2463.\u2460\u2465\u2468.\u2461\u2464\u2463/", "169.254.169.254"),
        ("http://0xa9fea9fe/", "169.254.169.254"),
        ("http://[::ffff:a9fe:a9fe]/", "169.254.169.254"),
        ("http://169.254.169.254./", "169.254.169.254"),
        ("http://user@\uff11\uff10\u3002\uff10\u3002\uff10\u3002\uff11:8080/", "10.0.0.1"),
        ("http://[fe80::1%25eth0]/", "fe80::1%"),
        ("http://[64:ff9b::a9fe:a9fe]/", "64:ff9b::a9fe:a9fe is link-local (embeds 169.254.169.254)"),
        ("http://[2002:a00:1::]/", "2002:a00:1:: is private (embeds 10.0.0.1)"),
        ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:8081/x", "127.0.0.1"),
    ],
)
def test_issue_spellings_are_refused(url: str, address: str) -> None:
    with pytest.raises(UrlRefused) as info:
        POLICY.check_url(url)
    assert info.value.reason is Reason.BLOCKED_ADDRESS
    assert f"-> {address}" in info.value.detail


# -- the real client --------------------------------------------------------------------------------


async def connect_guard(seen: list[str]) -> None:
    """Make this loop refuse every non-loopback connect before any packet leaves (and log all connects).

    aiohttp opens every connection through ``loop.sock_connect``; the guard sits under the code under
    test, so even a broken policy cannot reach a real network from these tests.
    """
    loop = asyncio.get_running_loop()
    original: Callable[[socket.socket, Any], Awaitable[None]] = loop.sock_connect

    async def checked(sock: socket.socket, address: Any) -> None:
        seen.append(str(address[0]))
        if not ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback:
            raise ConnectionRefusedError(f"test guard: no connection to {address[0]} from a test")
        await original(sock, address)

    loop.sock_connect = checked  # type: ignore[method-assign]


async def _fetch_all(urls: list[str], seen: list[str]) -> list[Any]:
    await connect_guard(seen)
    async with HttpClient(HttpOptions(allow_network=[f"{ALLOWED}/32"], timeout=5, max_redirects=3)) as client:
        return list(await asyncio.gather(*(client.fetch(u) for u in urls)))


def test_client_never_connects_to_refused_spellings(farm: Farm, sentinel: Sentinel) -> None:
    port = farm.port
    direct = corpus(LOOPBACK_REFUSED, port, 150, "direct")
    hops = [
        farm.url("/hostile/location?url=" + urllib.parse.quote(u)) for u in corpus(LOOPBACK_REFUSED, port, 40, "hop")
    ]
    allowed = [
        f"http://\uff11\uff12\uff17\u3002\uff10.\u24ea.\u2461:{port}/img/small.jpg",  # 127.0.0.2: the farm
        f"http://user@127\uff0e0\uff0e0\uff0e2:{port}/img/small.jpg",
        farm.url("/hostile/location?url=" + urllib.parse.quote(f"http://\U0001d7cf\U0001d7d0\U0001d7d5.0.0.2:{port}/img/small.jpg")),
    ]  # fmt: skip
    remote = corpus(REMOTE_REFUSED, None, 60, "remote") + corpus(REMOTE_REFUSED, port, 20, "remote-port")
    mark = sentinel.count()
    seen: list[str] = []
    outcomes = asyncio.run(_fetch_all(direct + hops + remote + allowed, seen))
    leaks = sentinel.since(mark)
    assert not leaks, f"refused loopback addresses were contacted: {leaks} {sentinel.request_lines[-5:]}"
    assert all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in seen), f"guard refused: {set(seen)}"
    assert set(seen) == {ALLOWED}, f"connections went to {set(seen)}"  # the guard is in the path
    *refused, ok1, ok2, ok3 = outcomes
    assert ok1.ok and ok2.ok and ok3.ok, (ok1, ok2, ok3)
    urls = direct + hops + remote
    for url, out in zip(urls, refused, strict=True):
        # invalid_url only where aiohttp itself refuses a legacy numeric form (e.g. "2130706433")
        assert out.reason in (Reason.BLOCKED_ADDRESS, Reason.INVALID_URL, Reason.DNS_NXDOMAIN), (url, out)
    blocked = sum(out.reason is Reason.BLOCKED_ADDRESS for out in refused)
    assert blocked >= 0.8 * len(refused), f"only {blocked}/{len(refused)} refused by the policy"


def test_python_m_fetcher_refuses_unicode_spellings(farm: Farm, sentinel: Sentinel, tmp_path: Path) -> None:
    """The issue's run, end to end, against listening refused addresses: nothing reaches them."""
    port, tag = farm.port, uuid.uuid4().hex[:8]
    refused = corpus(LOOPBACK_REFUSED, port, 30, "cli")
    refused = [f"{u}?t={tag}" for u in refused]
    refused += [farm.url(f"/hostile/location?t={tag}&url=" + urllib.parse.quote(u)) for u in refused[:6]]
    allowed = f"http://\uff11\uff12\uff17.\uff10.\uff10.\uff12:{port}/img/small.jpg?t={tag}"
    inp = write_urls(tmp_path / "urls.parquet", [*refused, allowed])
    mark = sentinel.count()
    run_fetcher("--input", str(inp), "--output", str(tmp_path / "out"), "--allow-network", f"{ALLOWED}/32",
                "--retries", "0", "--timeout", "5", "--processes", "1")  # fmt: skip
    assert not sentinel.since(mark), f"refused addresses were contacted: {sentinel.request_lines[-5:]}"
    rows = {str(r["url"]): r for r in results_table(tmp_path / "out").to_pylist()}
    assert rows[allowed]["status"] == "success", rows[allowed]
    for url in refused:
        assert rows[url]["error_message"] in ("blocked_address", "invalid_url"), rows[url]
    assert sum(rows[u]["error_message"] == "blocked_address" for u in refused) >= 0.8 * len(refused)
    for url in refused[:4]:  # the issue's own four spellings: refused by the policy, naming the address
        assert "-> 127.0.0.1 is loopback" in str(rows[url]["error_detail"]), rows[url]
