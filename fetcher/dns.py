"""Name resolution as a stage of its own: c-ares lookups, a TTL cache, a negative cache, named failures.

Real URL lists name thousands of hosts and a cache-missing lookup takes 50-200 ms. aiohttp's default
``ThreadedResolver`` runs blocking getaddrinfo on a handful of executor threads, so at most a handful
of lookups are ever in flight and the whole run waits behind them. Here every lookup is an async
c-ares query (pycares via aiodns, no thread per lookup), bounded by its own semaphore, with:

- one lookup per name at a time (concurrent requests for a name share it);
- a positive cache that honours the answer's TTL, and a negative cache for NXDOMAIN/no-address;
- A first: the AAAA answer is waited for only briefly once IPv4 addresses are known, so a
  resolver that drops AAAA queries never stalls a fetch (and IPv4 addresses are tried first);
- the address policy applied to every answer before any connection is made;
- failures named by kind (:class:`DnsFailure`), which http.py maps to distinct :class:`Reason` values.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import aiodns
import pycares
from aiohttp.abc import AbstractResolver, ResolveResult

from fetcher.netguard import NetPolicy, UrlRefused
from fetcher.options import ConfigError, opt, split_csv
from fetcher.records import Reason

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# How long a transient failure (timeout, SERVFAIL, refused) is remembered: long enough that a burst of
# rows for one dead name shares one failed lookup, shorter than the first retry backoff (>= 0.5 s), so
# a retry asks the resolver again.
TRANSIENT_TTL = 0.4
# Once A has answered, how long AAAA may still take (RFC 8305's "resolution delay" is 50 ms).
AAAA_GRACE = 0.05
HOSTS_FILE = Path("/etc/hosts")
SOCKET_BUFFER = 4 * 2**20
# Background lookups started for rows read ahead, at most (past it, rows resolve when fetched).
PREFETCH_MAX = 8192


class DnsFailure(StrEnum):
    """Why a name gave no usable address. Bounded: it is also a metric label."""

    NXDOMAIN = "nxdomain"  # the name does not exist
    NO_ADDRESS = "no_address"  # the name exists but has no A/AAAA record
    SERVFAIL = "servfail"  # the resolver could not answer (or answered garbage)
    TIMEOUT = "timeout"  # no answer in time
    REFUSED = "refused"  # the resolver refused the query, or could not be reached
    POLICY = "policy"  # answered, but an address is in a refused range (SSRF guard)


DNS_REASONS: dict[DnsFailure, Reason] = {
    DnsFailure.NXDOMAIN: Reason.DNS_NXDOMAIN,
    DnsFailure.NO_ADDRESS: Reason.DNS_NO_ADDRESS,
    DnsFailure.SERVFAIL: Reason.DNS_SERVFAIL,
    DnsFailure.TIMEOUT: Reason.DNS_TIMEOUT,
    DnsFailure.REFUSED: Reason.DNS_REFUSED,
    DnsFailure.POLICY: Reason.BLOCKED_ADDRESS,
}
# Failures that a later lookup may well not repeat: remembered only for TRANSIENT_TTL.
TRANSIENT = frozenset({DnsFailure.SERVFAIL, DnsFailure.TIMEOUT, DnsFailure.REFUSED})

_ARES_KINDS: dict[int, DnsFailure] = {
    pycares.errno.ARES_ENOTFOUND: DnsFailure.NXDOMAIN,
    pycares.errno.ARES_ENONAME: DnsFailure.NXDOMAIN,
    pycares.errno.ARES_EBADNAME: DnsFailure.NXDOMAIN,
    pycares.errno.ARES_ENODATA: DnsFailure.NO_ADDRESS,
    pycares.errno.ARES_ETIMEOUT: DnsFailure.TIMEOUT,
    pycares.errno.ARES_EREFUSED: DnsFailure.REFUSED,
    pycares.errno.ARES_ECONNREFUSED: DnsFailure.REFUSED,
}


class DnsError(OSError):
    """A lookup failed; aiohttp wraps OSErrors from the resolver in ClientConnectorDNSError."""

    def __init__(self, kind: DnsFailure, host: str, detail: str) -> None:
        super().__init__(f"{host}: {detail}")
        self.kind = kind
        self.host = host
        self.detail = detail

    @property
    def reason(self) -> Reason:
        return DNS_REASONS[self.kind]


def parse_server(text: str) -> str:
    """Validate ``HOST[:PORT]`` / ``[V6]:PORT``; return it in c-ares' server syntax. Raises ValueError."""
    text = text.strip()
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected HOST[:PORT], got {text!r}")
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: the DNS server must be an IP address (HOST[:PORT])") from None
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise ValueError(f"{text!r}: bad port {port!r}")
    if not port:
        return str(ip)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


@dataclass(frozen=True)
class DnsOptions:
    """Options of the DNS stage."""

    dns_server: list[str] = opt(  # noqa: RUF009 - opt() gives a list a default_factory
        "--dns-server",
        [],
        "resolver to ask (repeatable or comma-separated; default: the system's /etc/resolv.conf)",
        metavar="HOST[:PORT]",
    )
    dns_timeout: float = opt("--dns-timeout", 5.0, "seconds one name lookup may take, resolver retries included")
    dns_concurrency: int = opt("--dns-concurrency", 256, "name lookups in flight at once (cache misses)")
    dns_cache_size: int = opt("--dns-cache-size", 100_000, "names remembered (answers and failures)")
    dns_negative_ttl: float = opt("--dns-negative-ttl", 60.0, "seconds an NXDOMAIN or no-address answer is remembered")
    dns_max_ttl: float = opt("--dns-max-ttl", 3600.0, "longest a positive answer is cached, whatever its TTL")

    @property
    def servers(self) -> list[str]:
        """The --dns-server values in c-ares syntax (empty: the system's)."""
        return [parse_server(s) for entry in self.dns_server for s in split_csv(entry)]

    def validate(self) -> None:
        try:
            self.servers  # noqa: B018 (validates)
        except ValueError as exc:
            raise ConfigError(f"--dns-server: {exc}") from None
        if self.dns_timeout <= 0:
            raise ConfigError("--dns-timeout must be > 0")
        if self.dns_concurrency < 1:
            raise ConfigError("--dns-concurrency must be >= 1")
        if self.dns_cache_size < 1:
            raise ConfigError("--dns-cache-size must be >= 1")
        if self.dns_negative_ttl < 0 or self.dns_max_ttl < 0:
            raise ConfigError("--dns-negative-ttl and --dns-max-ttl must be >= 0")


class DnsObserver(Protocol):
    """Where lookups are reported (the Prometheus metrics)."""

    def dns_lookup(self, seconds: float, failure: DnsFailure | None) -> None:
        """One lookup sent to the resolver ended (failure None: addresses came back)."""

    def dns_resolved(self, cache_hit: bool, failure: DnsFailure | None) -> None:
        """One name resolution asked by a connection ended (from the cache or a lookup)."""


@dataclass
class DnsStats:
    """Plain counters of one process's resolver, for the end-of-run summary."""

    resolutions: int = 0  # names asked by connections
    cache_hits: int = 0  # ... answered from the cache (or by joining a lookup in flight)
    lookups: int = 0  # queries sent to the resolver (cache misses)
    lookup_seconds: float = 0.0
    wait_seconds: float = 0.0  # time connections spent waiting for a lookup (0 when all were ready)
    failures: dict[str, int] = field(default_factory=dict)  # by DnsFailure value, per resolution

    @property
    def hit_ratio(self) -> float:
        return self.cache_hits / self.resolutions if self.resolutions else 0.0

    @classmethod
    def sum_of(cls, parts: list[DnsStats]) -> DnsStats:
        """The counts of several processes' resolvers (a box's engines) as one."""
        out = cls()
        for p in parts:
            out.resolutions += p.resolutions
            out.cache_hits += p.cache_hits
            out.lookups += p.lookups
            out.lookup_seconds += p.lookup_seconds
            out.wait_seconds += p.wait_seconds
            for kind, n in p.failures.items():
                out.failures[kind] = out.failures.get(kind, 0) + n
        return out

    def format(self) -> str:
        """One summary line ('' when nothing was resolved: IP-literal lists)."""
        if not self.resolutions:
            return ""
        mean = 1000 * self.lookup_seconds / self.lookups if self.lookups else 0.0
        fails = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items())) or "no failures"
        return (
            f"  dns         {self.resolutions} resolutions ({100 * self.hit_ratio:.1f} % cached or prefetched),"
            f" {self.lookups} lookups ({mean:.0f} ms mean), {self.wait_seconds:.1f} s waited, {fails}"
        )


@dataclass(frozen=True, slots=True)
class Answer:
    """A cached outcome for one name: addresses (IPv4 first) or a failure, valid until ``expires``."""

    expires: float
    addresses: tuple[IPAddress, ...] = ()
    failure: DnsFailure | None = None
    detail: str = ""


class DnsCache:
    """Per-process name cache with TTLs and a size bound (oldest insertion evicted first)."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[str, Answer] = OrderedDict()

    def get(self, name: str) -> Answer | None:
        """The live answer for ``name``, or None (expired entries are dropped)."""
        entry = self._entries.get(name)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            del self._entries[name]
            return None
        return entry

    def put(self, name: str, answer: Answer) -> None:
        """Remember ``answer`` (an already-expired one is not stored)."""
        if answer.expires <= self.clock():
            self._entries.pop(name, None)
            return
        self._entries[name] = answer
        self._entries.move_to_end(name)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def read_hosts(path: Path = HOSTS_FILE) -> dict[str, tuple[IPAddress, ...]]:
    """Static names from a hosts file (as getaddrinfo would see them); {} when unreadable."""
    out: dict[str, list[IPAddress]] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            ip = ipaddress.ip_address(fields[0].split("%")[0])
        except ValueError:
            continue
        for name in fields[1:]:
            out.setdefault(name.lower(), []).append(ip)
    return {name: _ipv4_first(ips) for name, ips in out.items()}


def _ipv4_first(ips: list[IPAddress]) -> tuple[IPAddress, ...]:
    return tuple(sorted(dict.fromkeys(ips), key=lambda ip: ip.version))


def _failure_of(exc: BaseException) -> tuple[DnsFailure, str]:
    if isinstance(exc, aiodns.error.DNSError):
        code = exc.args[0] if exc.args else -1
        text = exc.args[1] if len(exc.args) > 1 else str(exc)
        return _ARES_KINDS.get(code, DnsFailure.SERVFAIL), str(text)
    if isinstance(exc, TimeoutError):
        return DnsFailure.TIMEOUT, "no answer in time"
    return DnsFailure.SERVFAIL, f"{type(exc).__name__}: {exc}"


class DnsResolver(AbstractResolver):
    """aiohttp resolver: cached async c-ares lookups, the address policy on every answer.

    One per engine process (the cache is a plain dict: no locks, no sharing). Connections get only
    addresses the policy allows; a refused answer raises UrlRefused before any socket is opened.
    """

    def __init__(
        self,
        opts: DnsOptions,
        policy: NetPolicy,
        observer: DnsObserver | None = None,
        stats: DnsStats | None = None,
        clock: Callable[[], float] = time.monotonic,
        hosts: dict[str, tuple[IPAddress, ...]] | None = None,
    ) -> None:
        self.opts = opts
        self.policy = policy
        self.observer = observer
        self.stats = stats if stats is not None else DnsStats()
        self.cache = DnsCache(opts.dns_cache_size, clock)
        self.clock = clock
        self.hosts = read_hosts() if hosts is None else hosts
        self._servers = opts.servers
        self._channel: aiodns.DNSResolver | None = None
        self._inflight: dict[str, asyncio.Future[Answer]] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._sem: asyncio.Semaphore | None = None

    def _resolver(self) -> aiodns.DNSResolver:
        if self._channel is None:
            kw: dict[str, Any] = {
                "timeout": max(0.1, self.opts.dns_timeout / 2),
                "tries": 2,
                # Hundreds of answers can land at once; the default ~200 KB buffer drops some of them.
                "socket_receive_buffer_size": SOCKET_BUFFER,
            }
            if self._servers:
                kw["nameservers"] = self._servers
            self._channel = aiodns.DNSResolver(loop=asyncio.get_running_loop(), **kw)
            self._sem = asyncio.Semaphore(self.opts.dns_concurrency)
        return self._channel

    def prefetch(self, host: str) -> None:
        """Start resolving ``host`` in the background, so that its fetch finds the answer ready.

        Called for rows as they are read ahead: lookups then overlap with other fetches instead of
        being waited for while the row holds a concurrency permit. Never raises.
        """
        name = host.lower().rstrip(".").strip("[]")
        if name in self._inflight or len(self._tasks) >= PREFETCH_MAX or self.cache.get(name) is not None:
            return
        try:
            ipaddress.ip_address(name)
            return  # a literal: nothing to resolve
        except ValueError:
            pass
        self._start_lookup(name)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Addresses for ``host`` (IPv4 first), each allowed by the policy; raises DnsError / UrlRefused."""
        name = host.lower().rstrip(".")
        answer = self.cache.get(name)
        hit = answer is not None
        if answer is None:
            pending = self._inflight.get(name)
            hit = pending is not None  # shares a lookup already on the wire (a prefetch or another row's)
            start = time.perf_counter()
            answer = await asyncio.shield(pending if pending is not None else self._start_lookup(name))
            self.stats.wait_seconds += time.perf_counter() - start
        self.stats.resolutions += 1
        self.stats.cache_hits += hit
        failure = answer.failure
        if failure is not None:
            self.stats.failures[failure.value] = self.stats.failures.get(failure.value, 0) + 1
        if self.observer is not None:
            self.observer.dns_resolved(hit, failure)
        if failure is DnsFailure.POLICY:
            raise UrlRefused(Reason.BLOCKED_ADDRESS, answer.detail)
        if failure is not None:
            raise DnsError(failure, host, answer.detail)
        want = {socket.AF_INET: 4, socket.AF_INET6: 6}.get(family)
        out: list[ResolveResult] = [
            ResolveResult(
                hostname=host,
                host=str(ip),
                port=port,
                family=socket.AF_INET if ip.version == 4 else socket.AF_INET6,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for ip in answer.addresses
            if want is None or ip.version == want
        ]
        if not out:
            raise DnsError(DnsFailure.NO_ADDRESS, host, f"no IPv{want} address")
        return out

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def _start_lookup(self, name: str) -> asyncio.Future[Answer]:
        """One lookup of ``name`` as a task of its own; everyone asking meanwhile shares its future."""
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._inflight[name] = fut
        task = asyncio.ensure_future(self._run_lookup(name, fut))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fut

    async def _run_lookup(self, name: str, fut: asyncio.Future[Answer]) -> None:
        try:
            answer = await self._lookup(name)
        except BaseException:
            fut.cancel()  # only on close: waiters see CancelledError
            raise
        finally:
            self._inflight.pop(name, None)
        fut.set_result(answer)

    async def _lookup(self, name: str) -> Answer:
        static = self.hosts.get(name)
        if static is not None:
            return self._checked(name, static, float("inf"))
        try:
            resolver = self._resolver()
        except Exception as exc:  # e.g. no usable resolver configuration: every lookup fails, named
            _, detail = _failure_of(exc)
            return Answer(self.clock() + TRANSIENT_TTL, failure=DnsFailure.REFUSED, detail=f"resolver: {detail}")
        assert self._sem is not None
        async with self._sem:
            start = time.perf_counter()
            try:
                async with asyncio.timeout(self.opts.dns_timeout):
                    addresses, ttl = await self._query_both(resolver, name)
            except Exception as exc:  # every failure becomes a named answer; only cancellation escapes
                kind, detail = _failure_of(exc)
                answer = Answer(self.clock() + self._failure_ttl(kind), failure=kind, detail=f"{kind.value}: {detail}")
            else:
                answer = self._checked(name, addresses, ttl)
            seconds = time.perf_counter() - start
        self.stats.lookups += 1
        self.stats.lookup_seconds += seconds
        if self.observer is not None:
            self.observer.dns_lookup(seconds, answer.failure)
        self.cache.put(name, answer)
        return answer

    def _failure_ttl(self, kind: DnsFailure) -> float:
        return TRANSIENT_TTL if kind in TRANSIENT else self.opts.dns_negative_ttl

    def _checked(self, name: str, addresses: tuple[IPAddress, ...], ttl: float) -> Answer:
        """The answer with the policy verdict folded in (so a cache hit re-checks nothing)."""
        expires = self.clock() + min(ttl, self.opts.dns_max_ttl)
        try:
            for ip in addresses:
                self.policy.check_address(ip, name)
        except UrlRefused as exc:
            # Remembered like an answer: the same name gives the same addresses until its TTL runs out.
            return Answer(expires, failure=DnsFailure.POLICY, detail=exc.detail)
        return Answer(expires, addresses)

    async def _query_both(self, resolver: aiodns.DNSResolver, name: str) -> tuple[tuple[IPAddress, ...], float]:
        """A and AAAA in parallel; returns once A answered (plus AAAA if it comes within AAAA_GRACE)."""
        a = asyncio.ensure_future(resolver.query_dns(name, "A"))
        aaaa = asyncio.ensure_future(resolver.query_dns(name, "AAAA"))
        try:
            try:
                v4, ttl4 = _records(await a)
                a_error: BaseException | None = None
            except aiodns.error.DNSError as exc:
                v4, ttl4, a_error = [], 0.0, exc
                if _failure_of(exc)[0] is DnsFailure.NXDOMAIN:
                    raise  # the name does not exist: AAAA cannot say otherwise
            if v4:
                done, _ = await asyncio.wait([aaaa], timeout=AAAA_GRACE)
                v6, ttl6 = _records(aaaa.result()) if aaaa in done and not aaaa.exception() else ([], ttl4)
                return tuple(v4 + v6), min(ttl4, ttl6)
            try:
                v6, ttl6 = _records(await aaaa)
            except aiodns.error.DNSError as exc:
                # Neither family: A's own failure unless it was "no A record" (then AAAA's says more).
                if a_error is not None and _failure_of(a_error)[0] is not DnsFailure.NO_ADDRESS:
                    raise a_error from None
                raise exc from None
            if not v6:
                if a_error is not None:
                    raise a_error
                raise aiodns.error.DNSError(pycares.errno.ARES_ENODATA, "no A or AAAA record")
            return tuple(v6), ttl6
        finally:
            for f in (a, aaaa):
                if not f.done():
                    f.cancel()
                elif not f.cancelled():
                    f.exception()  # mark retrieved


def _records(result: Any) -> tuple[list[IPAddress], float]:
    """Addresses and the smallest TTL of a pycares DNSResult (CNAME chains included)."""
    ips: list[IPAddress] = []
    ttl = float("inf")
    for rr in result.answer:
        data = rr.data
        addr = getattr(data, "addr", None)
        if addr is None:
            continue
        try:
            ips.append(ipaddress.ip_address(addr))
        except ValueError:
            continue
        ttl = min(ttl, float(rr.ttl))
    return ips, (0.0 if ttl == float("inf") else ttl)
