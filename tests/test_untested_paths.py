"""Paths no other test reached: X-Robots-Tag, User-Agent, Retry-After as an HTTP date, the byte budget
between fetching and imaging, and TLS verification. Each runs a real ``python -m fetcher`` against
loopback servers and checks what the server saw or what the results say.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import ipaddress
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiohttp import web

from fetcher import __version__
from fetcher.farm import Farm, FarmThread
from fetcher.farm.images import catalogue_image
from tests.conftest import results_table, run_fetcher, write_urls
from tests.monitoring import running_fetcher, samples, total

# The User-Agent fetcher sends by default, spelled out (not imported) so a change to it is a visible choice.
DEFAULT_UA = f"fetcher/{__version__} (image dataset downloader; honours X-Robots-Tag noai)"


def _fetch(tmp: Path, urls: list[str], *flags: str) -> dict[str, dict[str, object]]:
    inp = write_urls(tmp / "urls.parquet", urls)
    run_fetcher("--input", str(inp), "--output", str(tmp / "out"), "--allow-private-networks", "--processes", "1",
                "--retries", "0", "--metrics-address", "", *flags)  # fmt: skip
    return {str(r["url"]): r for r in results_table(tmp / "out").to_pylist()}


def _user_agents(farm: Farm, tag: str) -> set[str]:
    return {a.headers.get("User-Agent", "") for a in farm.state.arrivals if tag in a.path}


# -- X-Robots-Tag and User-Agent ---------------------------------------------------------------------
def test_robots_tag_refused_by_default_with_user_agent_token(farm: Farm, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    robots, plain = farm.url(f"/robots-noai/small.jpg?t={tag}"), farm.url(f"/img/small.jpg?t={tag}")
    rows = _fetch(tmp_path, [robots, plain], "--user-agent-token", "contact=ops@example.org")
    assert (rows[robots]["status"], rows[robots]["error_message"]) == ("failed_to_download", "robots_disallowed")
    assert rows[robots]["error_detail"] == "X-Robots-Tag: noai, noimageai"
    assert rows[plain]["status"] == "success"
    assert _user_agents(farm, tag) == {f"{DEFAULT_UA} contact=ops@example.org"}


def test_robots_tag_ignored_when_turned_off_and_user_agent_replaced(farm: Farm, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    robots = farm.url(f"/robots-noai/small.jpg?t={tag}")
    rows = _fetch(tmp_path, [robots], "--respect-robots-tag", "false", "--user-agent", "acme-crawler/2.1")
    assert (rows[robots]["status"], rows[robots]["error_message"]) == ("success", None)
    assert _user_agents(farm, tag) == {"acme-crawler/2.1"}


# -- Retry-After as an HTTP date ---------------------------------------------------------------------
RETRY_IN = 3  # seconds; an HTTP date has whole seconds, so the real pause is between 2 and 3 s


def _retry_date_route() -> web.RouteDef:
    """/retry-date/{name}: the first request of a path gets 503 + ``Retry-After: <HTTP date>``."""
    seen: set[str] = set()

    async def handler(request: web.Request) -> web.Response:
        if request.path_qs not in seen:
            seen.add(request.path_qs)
            when = email.utils.formatdate(time.time() + RETRY_IN, usegmt=True)
            return web.Response(status=503, text="later", headers={"Retry-After": when})
        return web.Response(body=catalogue_image(request.match_info["name"]), content_type="image/jpeg")

    return web.get("/retry-date/{name}", handler)


def test_retry_after_http_date_pauses_the_host(tmp_path: Path) -> None:
    with FarmThread(["127.0.0.2"], extra_routes=[_retry_date_route()]) as farm:
        urls = [farm.url("/retry-date/small.jpg?r=0")] + [farm.url(f"/img/small.jpg?r={i}") for i in range(1, 4)]
        # One request at a time, in input order: the first answer (503 + date) comes before the others start.
        rows = _fetch(tmp_path, urls, "--retries", "1", "--backoff-base", "0.05", "--per-host-concurrency", "1")
        log = [(a.t, a.path) for a in farm.state.arrivals]
        agents = {a.headers.get("User-Agent") for a in farm.state.arrivals}
    assert agents == {DEFAULT_UA}  # no --user-agent flags: the default, without a token
    assert [rows[u]["status"] for u in urls] == ["success"] * 4, rows
    assert rows[urls[0]]["attempts"] == 2
    t503 = log[0][0]
    assert log[0][1] == "/retry-date/small.jpg?r=0" and len(log) == 5, log
    gaps = [round(t - t503, 3) for t, _ in log[1:]]
    # Nothing reaches the host until the date has passed (>= RETRY_IN - 1 s, the date's resolution);
    # without the date parsed, the next request would follow within the 0.25 s adaptive delay.
    assert min(gaps) >= RETRY_IN - 1 - 0.05, gaps
    assert min(gaps) < RETRY_IN + 5, gaps


# -- --max-bytes-in-flight --------------------------------------------------------------------------
def test_fetching_pauses_while_imaging_lags(farm: Farm, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    n, cap, body = 14, 2**20, len(catalogue_image("large.jpg"))
    urls = [farm.url(f"/img/large.jpg?bp={tag}&i={i}") for i in range(n)]
    inp = write_urls(tmp_path / "urls.parquet", urls)
    # A 2400x1600 JPEG resized to 1024 (full decode) takes ~100 ms in one worker; its download on
    # loopback a few ms. Two bodies fill the 1 MiB budget, so fetching must wait for imaging.
    points: list[tuple[int, float, float]] = []
    with running_fetcher(
        tmp_path, "--input", str(inp), "--output", str(tmp_path / "out"), "--allow-private-networks",
        "--processes", "1", "--image-size", "1024", "--max-bytes-in-flight", str(cap),
        "--concurrency", "2", "--per-host-concurrency", "2", "--progress", "off",
    ) as run:  # fmt: skip
        deadline = time.monotonic() + 120
        while run.proc.poll() is None and time.monotonic() < deadline:
            arrived = sum(1 for a in farm.state.arrivals if tag in a.path)
            try:
                parsed = samples(run.metrics())
            except (OSError, AssertionError):
                break  # the run ended between the poll and the scrape
            points.append((arrived, total(parsed, "fetcher_shard_rows_done"), total(parsed, "fetcher_in_flight_bytes")))
            time.sleep(0.05)
        assert run.wait(60) == 0, run.stderr
    assert len(results_table(tmp_path / "out")) == n
    ahead = [a - d for a, d, _ in points]
    assert len(points) >= 10 and max(d for _, d, _ in points) >= n // 2, points  # the run was watched, mid-way
    # The gate is checked before each dispatch, so the budget can overshoot by the bodies of requests
    # already past it: the 2 in flight and the one just dispatched. Started but unfinished rows: those 3,
    # up to 2 more bodies waiting below the cap, 1 in imaging. Without the budget all n go out at once.
    assert max(ahead) <= 7, points
    assert 0 < max(b for _, _, b in points) < cap + 3 * body, points


# -- TLS verification --------------------------------------------------------------------------------
def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        # Valid for the address in every way but trust: only verification can refuse it.
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class _ImageHandler(BaseHTTPRequestHandler):
    served: list[str] = []

    def do_GET(self) -> None:
        data = catalogue_image("small.jpg")
        _ImageHandler.served.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[str]:
    """An HTTPS image server on 127.0.0.1 with a self-signed certificate; yields its base URL."""
    cert, key = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_self_signed_certificate_is_tls_error(tls_server: str, tmp_path: Path) -> None:
    url = f"{tls_server}/small.jpg"
    # The server works: a client that trusts its certificate gets the image.
    ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    _ImageHandler.served.clear()
    assert asyncio.run(_get(url, ctx)) == catalogue_image("small.jpg")
    rec = _fetch(tmp_path / "run", [url])[url]
    assert (rec["status"], rec["error_message"]) == ("failed_to_download", "tls_error"), rec
    assert "certificate" in str(rec["error_detail"]).lower(), rec
    assert _ImageHandler.served == ["/small.jpg"], "fetcher's request got past the handshake"


async def _get(url: str, ctx: ssl.SSLContext) -> bytes:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(url, ssl=ctx) as resp:
        return await resp.read()
