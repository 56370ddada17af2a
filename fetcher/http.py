"""HTTP fetching: one aiohttp session, hard deadlines, byte caps, address policy on every hop."""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError, TransferEncodingError

from fetcher import __version__
from fetcher.budget import ByteBudget
from fetcher.dns import DnsError, DnsObserver, DnsOptions, DnsResolver, DnsStats
from fetcher.netguard import NetPolicy, UrlRefused, parse_networks
from fetcher.options import ConfigError, opt
from fetcher.records import FetchOutcome, Reason, reason_for_http_status

DEFAULT_USER_AGENT = f"fetcher/{__version__} (image dataset downloader; honours X-Robots-Tag noai)"
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# Content-Encodings aiohttp decodes (br/zstd only with their libraries, else it raises a protocol error).
DECODED_ENCODINGS = frozenset({"", "identity", "gzip", "deflate", "br", "zstd"})
_ROBOTS_DENY = frozenset({"noai", "noimageai", "noindex", "noimageindex"})


@dataclass(frozen=True)
class HttpOptions:
    """Options of the HTTP stage."""

    timeout: float = opt("--timeout", 30.0, "hard deadline in seconds for one request, body included")
    connect_timeout: float = opt("--connect-timeout", 10.0, "seconds to open a connection")
    read_timeout: float = opt("--read-timeout", 15.0, "seconds without any byte from the server")
    max_body_bytes: int = opt("--max-body-bytes", 64 * 2**20, "largest image body accepted, bytes")
    max_redirects: int = opt("--max-redirects", 5, "redirect hops followed, each re-checked")
    user_agent: str = opt("--user-agent", DEFAULT_USER_AGENT, "User-Agent header sent")
    user_agent_token: str = opt(
        "--user-agent-token", "", "contact token appended to the User-Agent", aliases=("--user_agent_token",)
    )
    allow_private_networks: bool = opt(
        "--allow-private-networks", False, "allow loopback/private/link-local targets (tests, local hosts)"
    )
    allow_network: list[str] = opt(  # noqa: RUF009 - opt() gives a list a default_factory
        "--allow-network",
        [],
        "allow only these otherwise refused networks (CIDR, repeatable or comma-separated)",
        metavar="CIDR",
    )
    respect_robots_tag: bool = opt(
        "--respect-robots-tag", True, "skip images whose X-Robots-Tag has one of --disallowed-header-directives"
    )
    disallowed_header_directives: list[str] = opt(  # noqa: RUF009 - opt() gives a list a default_factory
        "--disallowed-header-directives",
        sorted(_ROBOTS_DENY),
        "X-Robots-Tag directives that skip an image (img2dataset's list syntax too; '[]' = none)",
        aliases=("--disallowed_header_directives",),
        metavar="DIRECTIVE",
    )

    def validate(self) -> None:
        for name in ("timeout", "connect_timeout", "read_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0")
        if self.max_body_bytes < 1024:
            raise ConfigError("--max-body-bytes must be at least 1024")
        if self.max_redirects < 0:
            raise ConfigError("--max-redirects must be >= 0")
        try:
            parse_networks(self.allow_network)
        except ValueError as exc:
            raise ConfigError(f"--allow-network: {exc}") from None

    @cached_property
    def deny_directives(self) -> frozenset[str]:
        """--disallowed-header-directives, lower-cased for matching."""
        return frozenset(d.lower() for d in self.disallowed_header_directives)

    @property
    def full_user_agent(self) -> str:
        return f"{self.user_agent} {self.user_agent_token}".strip()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def robots_denied(header: str | None, deny: frozenset[str] = _ROBOTS_DENY) -> bool:
    """True when an X-Robots-Tag value has one of the ``deny`` directives (AI use, indexing)."""
    if not header:
        return False
    for part in header.lower().replace(";", ",").split(","):
        token = part.split(":")[-1].strip()  # "googlebot: noindex" style prefixes apply to everyone here
        if token in deny:
            return True
    return False


class HttpClient:
    """One ClientSession for the whole run. ``fetch`` never raises; it returns a FetchOutcome."""

    def __init__(
        self,
        opts: HttpOptions,
        budget: ByteBudget | None = None,
        dns: DnsOptions | None = None,
        dns_observer: DnsObserver | None = None,
        dns_stats: DnsStats | None = None,
    ) -> None:
        self.opts = opts
        self.budget = budget  # when given, every body byte is reserved in it before it is held
        self.policy = NetPolicy(allow_private=opts.allow_private_networks, allowed=parse_networks(opts.allow_network))
        # Every new connection (first request and each redirect hop to a new host) resolves through
        # here, so DNS answers pointing at refused space are caught before any socket is opened.
        self.resolver = DnsResolver(dns or DnsOptions(), self.policy, dns_observer, dns_stats)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        connector = aiohttp.TCPConnector(
            limit=0,  # the scheduler gates concurrency; aiohttp's pool wait would eat our timeouts
            use_dns_cache=False,  # DnsResolver caches by the answers' own TTLs
            resolver=self.resolver,
            enable_cleanup_closed=True,
        )
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.opts.connect_timeout, sock_read=self.opts.read_timeout
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": self.opts.full_user_agent, "Accept": "image/*,*/*;q=0.8"},
            auto_decompress=True,
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._session is not None:
            await self._session.close()
        await self.resolver.close()  # the connector closes only a resolver it made itself

    def prefetch(self, url: str) -> None:
        """Resolve the URL's host in the background (called as rows are read ahead)."""
        try:
            host = urlsplit(url).hostname
        except ValueError:
            return
        if host:
            self.resolver.prefetch(host)

    async def fetch(self, url: str) -> FetchOutcome:
        """Download ``url`` within the hard deadline; classify every failure into a Reason."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.opts.timeout) as deadline:
                out = await self._fetch(url, deadline)
        except TimeoutError as exc:
            out = FetchOutcome(reason=Reason.TIMEOUT, detail=self._timeout_detail(exc))
        except UrlRefused as exc:
            out = FetchOutcome(reason=exc.reason, detail=exc.detail)
        except aiohttp.ClientConnectorDNSError as exc:
            err = exc.os_error
            reason = err.reason if isinstance(err, DnsError) else Reason.DNS_SERVFAIL
            out = FetchOutcome(reason=reason, detail=_short(err if isinstance(err, DnsError) else exc))
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError, ssl.SSLError) as exc:
            out = FetchOutcome(reason=Reason.TLS_ERROR, detail=_short(exc))
        except aiohttp.ClientConnectorError as exc:
            out = FetchOutcome(reason=Reason.CONNECT_ERROR, detail=_short(exc))
        except aiohttp.ClientPayloadError as exc:
            # A body cut short may come whole on a retry; one that cannot be decoded will not.
            garbled = isinstance(exc.__cause__, (ContentEncodingError, TransferEncodingError))
            reason = Reason.HTTP_PROTOCOL_ERROR if garbled else Reason.TRUNCATED_BODY
            out = FetchOutcome(reason=reason, detail=_one_line(exc))
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError) as exc:
            out = FetchOutcome(reason=Reason.CONNECTION_RESET, detail=_short(exc))
        except (aiohttp.InvalidURL, ValueError) as exc:
            out = FetchOutcome(reason=Reason.INVALID_URL, detail=_short(exc))
        except aiohttp.ClientResponseError as exc:
            # Never an HTTP status (we call no raise_for_status): aiohttp's parser refused the answer and
            # put its own 400 on it, a status the server never sent.
            out = FetchOutcome(reason=Reason.HTTP_PROTOCOL_ERROR, detail=_one_line(exc.message or exc))
        except aiohttp.ClientError as exc:
            out = FetchOutcome(reason=Reason.CONNECT_ERROR, detail=_short(exc))
        out.fetch_ms = (time.perf_counter() - start) * 1000
        return out

    def _timeout_detail(self, exc: TimeoutError) -> str:
        """Which of the three deadlines fired, in words."""
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return f"connect timeout: no connection within {self.opts.connect_timeout:g}s"
        if isinstance(exc, aiohttp.SocketTimeoutError):
            return f"read timeout: no byte for {self.opts.read_timeout:g}s"
        return f"total timeout: no complete answer within {self.opts.timeout:g}s"

    async def _fetch(self, url: str, deadline: asyncio.Timeout) -> FetchOutcome:
        assert self._session is not None, "use HttpClient as an async context manager"
        seen: set[str] = set()
        current = url
        for _hop in range(self.opts.max_redirects + 1):
            # The normalised URL object goes to aiohttp as is: the host checked is the host connected to.
            target = self.policy.target(current)
            seen.add(str(target))
            async with self._session.get(target, allow_redirects=False) as resp:
                if resp.status in REDIRECT_CODES and "Location" in resp.headers:
                    nxt = urljoin(str(target), resp.headers["Location"])
                    if str(self.policy.target(nxt)) in seen:
                        return FetchOutcome(
                            reason=Reason.REDIRECT_LOOP, http_status=resp.status, detail=f"redirect loop at {nxt}"
                        )
                    current = nxt
                    continue
                return await self._read(resp, str(target), deadline)
        return FetchOutcome(reason=Reason.TOO_MANY_REDIRECTS, detail=f"more than {self.opts.max_redirects} redirects")

    async def _read(self, resp: aiohttp.ClientResponse, url: str, deadline: asyncio.Timeout) -> FetchOutcome:
        if not 200 <= resp.status < 300:
            return FetchOutcome(
                reason=reason_for_http_status(resp.status),
                http_status=resp.status,
                detail=f"HTTP {resp.status} {resp.reason or ''}".strip(),
                retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            )
        if self.opts.respect_robots_tag and robots_denied(resp.headers.get("X-Robots-Tag"), self.opts.deny_directives):
            return FetchOutcome(
                reason=Reason.ROBOTS_DISALLOWED,
                http_status=resp.status,
                detail=f"X-Robots-Tag: {resp.headers.get('X-Robots-Tag')}",
            )
        encoding = resp.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in DECODED_ENCODINGS:  # aiohttp would pass these bytes on still encoded
            return FetchOutcome(
                reason=Reason.HTTP_PROTOCOL_ERROR, detail=f"unsupported Content-Encoding: {encoding[:100]}"
            )
        cap = self.opts.max_body_bytes
        if resp.content_length is not None and resp.content_length > cap:
            return FetchOutcome(
                reason=Reason.BODY_TOO_LARGE,
                http_status=resp.status,
                detail=f"Content-Length {resp.content_length} > {cap}",
            )
        reserved = 0  # bytes of self.budget this body holds; all given back unless the body is returned
        body = b""
        order = asyncio.get_running_loop().time()  # older bodies get room first
        try:
            # Content-Length up front, then whatever (decoded) bytes go past it as they stream in.
            reserved = await self._reserve(resp.content_length or 0, 0, order, deadline)
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(256 * 1024):
                size += len(chunk)
                if size > cap:
                    return FetchOutcome(
                        reason=Reason.BODY_TOO_LARGE, http_status=resp.status, detail=f"body passed {cap} bytes"
                    )
                if size > reserved:
                    reserved += await self._reserve(size - reserved, reserved, order, deadline)
                chunks.append(chunk)
            body = b"".join(chunks)
        finally:
            if self.budget is not None:
                self.budget.give(reserved - len(body))  # the caller gives the body's share back
        return FetchOutcome(body=body, http_status=resp.status, final_url=url)

    async def _reserve(self, n: int, held: int, order: float, deadline: asyncio.Timeout) -> int:
        """Reserve ``n`` bytes in the budget (if any).

        The total deadline stands still while the body waits for room: that wait is ours, not the server's.
        """
        if self.budget is None or n <= 0:
            return max(n, 0)
        when = deadline.when()
        deadline.reschedule(None)
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            await self.budget.take(n, held, order)
        finally:
            if when is not None:
                deadline.reschedule(when + (loop.time() - start))
        return n


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


def _one_line(exc: object) -> str:
    """aiohttp's parser messages span lines (with a caret under the culprit): keep them on one."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__
