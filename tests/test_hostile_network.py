"""Every farm fault host through a real fetcher run, with the address policy ON.

Only the farm's first address (127.0.0.2) is allowed (``--allow-network 127.0.0.2/32``); redirects
go to other loopback addresses or to ``localhost``, so the hop and DNS-answer checks are proven with
traffic that cannot leave loopback even if the code under test were wrong. Every refused address
used here has a server listening behind it (the farm on 127.0.0.3, the Sentinel on 127.0.0.1,
127.0.0.10 and ::1), which must see nothing: a leak is observed, not inferred from a reason string.
Non-loopback targets (10.0.0.1, 169.254.169.254) are covered in test_ssrf.py behind a connect guard.
"""

from __future__ import annotations

import ipaddress
import time
import urllib.request
import uuid

import pytest

from fetcher.farm import Farm
from fetcher.netguard import NetPolicy, UrlRefused, parse_networks
from fetcher.records import Reason
from tests.conftest import results_table, run_fetcher, write_urls
from tests.sentinel import Sentinel

MAX_BODY = 2**20
DEADLINE = 3.0


@pytest.fixture(scope="module")
def fault_run(
    farm: Farm, sentinel: Sentinel, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, dict[str, object]], str, float]:
    tag = uuid.uuid4().hex[:8]
    other = f"http://127.0.0.3:{farm.port}/img/small.jpg?probe={tag}-other"
    named = f"http://localhost:{farm.port}/img/small.jpg?probe={tag}-named"
    cases = {
        "ok": "/img/small.jpg",
        "reset": "/reset/medium.jpg",
        "truncated": "/truncated/medium.jpg",
        "endless": "/endless",
        "trickle": "/trickle",
        "loop": "/loop",
        "too_many": "/redirect/7/small.jpg",
        "redirect_ok": "/redirect/2/small.jpg",
        "to_other_loopback": f"/redirect-to?url={other}",
        "to_localhost": f"/redirect-to?url={named}",
        "huge_length": "/huge-length",
        "gzip_bomb": "/gzip-bomb",
        "not_image": "/notimage",
    }
    urls = [farm.url(path + ("&" if "?" in path else "?") + f"case={name}-{tag}") for name, path in cases.items()]
    urls += [other, f"http://127.0.0.1:{farm.port}/x.jpg?probe={tag}", f"http://127.0.0.10:{farm.port}/x?probe={tag}"]
    # The farm builds its gzip bomb (256 MiB of zeros) on first use, which takes seconds: not our deadline.
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    with no_proxy.open(farm.url("/gzip-bomb?warm=1"), timeout=60) as resp:
        resp.read()
    tmp = tmp_path_factory.mktemp("faults")
    inp = write_urls(tmp / "urls.parquet", urls)
    mark = sentinel.count()
    start = time.monotonic()
    proc = run_fetcher("--input", str(inp), "--output", str(tmp / "out"), "--allow-network", "127.0.0.2/32",
                       "--retries", "0", "--timeout", str(DEADLINE), "--read-timeout", "10",
                       "--max-body-bytes", str(MAX_BODY), "--max-redirects", "5", "--processes", "1")  # fmt: skip
    elapsed = time.monotonic() - start
    rows = {str(r["url"]): r for r in results_table(tmp / "out").to_pylist()}
    by_case: dict[str, dict[str, object]] = {}
    for name in cases:
        by_case[name] = next(r for u, r in rows.items() if f"case={name}-{tag}" in u)
    by_case["literal_other_loopback"] = rows[other]
    by_case["literal_loopback"] = next(r for u, r in rows.items() if u.startswith("http://127.0.0.1:"))
    by_case["literal_loopback_10"] = next(r for u, r in rows.items() if u.startswith("http://127.0.0.10:"))
    assert not sentinel.since(mark), f"a refused address was contacted: {sentinel.request_lines[-5:]}"
    arrivals = [a for a in farm.state.arrivals if tag in a.path]
    leaked = [a for a in arrivals if "probe=" in a.path and not a.path.startswith("/redirect-to")]
    assert not leaked, f"a refused address was contacted: {leaked}"
    assert {a.host.split(":")[0] for a in arrivals} == {"127.0.0.2"}
    return by_case, proc.stderr, elapsed


@pytest.mark.parametrize(
    ("case", "reason", "detail"),
    [
        ("ok", None, None),
        ("redirect_ok", None, None),
        ("reset", "connection_reset|truncated_body", None),  # a client cannot always tell RST from EOF
        ("truncated", "truncated_body", None),
        ("endless", "body_too_large", f"body passed {MAX_BODY} bytes"),
        ("trickle", "timeout", f"within {DEADLINE:g}s"),
        ("loop", "redirect_loop", "redirect loop"),
        ("too_many", "too_many_redirects", "more than 5 redirects"),
        ("to_other_loopback", "blocked_address", "127.0.0.3 is loopback"),
        ("to_localhost", "blocked_address", "localhost -> 127.0.0.1 is loopback"),
        ("huge_length", "body_too_large", "Content-Length 1000000000000"),
        ("gzip_bomb", "body_too_large", f"body passed {MAX_BODY} bytes"),
        ("not_image", "not_an_image", None),
        ("literal_other_loopback", "blocked_address", "127.0.0.3 is loopback"),
        ("literal_loopback", "blocked_address", "127.0.0.1 is loopback"),
        ("literal_loopback_10", "blocked_address", "127.0.0.10 is loopback"),
    ],
)
def test_fault_host_gives_named_reason(
    fault_run: tuple[dict[str, dict[str, object]], str, float], case: str, reason: str | None, detail: str | None
) -> None:
    rec = fault_run[0][case]
    assert rec["error_message"] in (reason.split("|") if reason else [None]), rec
    if detail is not None:
        assert detail in str(rec["error_detail"]), rec
    if reason is None:
        assert rec["status"] == "success"


def test_faults_never_hang_the_run(fault_run: tuple[dict[str, dict[str, object]], str, float]) -> None:
    # Every fault in parallel: the slowest is the trickle, bounded by the total deadline.
    assert fault_run[2] < DEADLINE + 10


def test_allowlist_policy_is_exact() -> None:
    policy = NetPolicy(allowed=parse_networks(["127.0.0.2/32", "fd00::/8"]))
    policy.check_address(ipaddress.ip_address("127.0.0.2"), "farm")
    policy.check_address(ipaddress.ip_address("::ffff:127.0.0.2"), "farm")
    policy.check_address(ipaddress.ip_address("fd00::1"), "farm")
    for addr in ["127.0.0.3", "10.0.0.1", "169.254.169.254", "100.64.0.1", "::1", "224.0.0.1", "0.0.0.0"]:
        with pytest.raises(UrlRefused) as info:
            policy.check_address(ipaddress.ip_address(addr), addr)
        assert info.value.reason is Reason.BLOCKED_ADDRESS
    with pytest.raises(ValueError, match="not an address"):
        parse_networks(["10.0.0.0/33"])
