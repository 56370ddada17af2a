"""A farm shaped like the Internet: thousands of names under a test zone, DNS faults, fault hosts by name.

The first label of a name says what it is (``N`` is any number; names outside these forms are NXDOMAIN,
names outside the zone are REFUSED)::

    hN.<zone>          an image host: A = the farm's address N % len(addresses)
    ttl1-N.<zone>      the same, with a 1-second TTL
    v6only-N.<zone>    AAAA ::1 only (no A record)
    brokenv6-N.<zone>  A answered, AAAA questions never answered (a resolver path that drops IPv6)
    noaddr-N.<zone>    exists, but no A/AAAA record
    nx-N.<zone>        NXDOMAIN
    servfail-N.<zone>  SERVFAIL
    silent-N.<zone>    never answered (a resolver timeout)
    outside-N.<zone>   A = a loopback address outside the farm's range (the SSRF guard must refuse it)
    private-N.<zone>   A = 10.0.0.1 (a private address: must be refused, never contacted)
    closed-N.<zone>    A = a loopback address where nothing listens (connection refused)

Fault hosts: these names resolve like ``hN`` but the farm answers by Host header, whatever the path::

    hang-N      never answers                 e503-N / e500-N   503 / 500 forever
    trickle-N   one byte every 0.5 s          slowbw-N          the image at ~40 KB/s
    throttle-N  429 + Retry-After: 1 unless a second has passed since its last image
    redir-N     302 to the same path on h(N+1) (a redirect across names)
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from fetcher.farm.server import hang, trickle

ZONE = "farm.test"
_LABEL = re.compile(r"^(?:(?P<kind>[a-z0-9]+)-)?(?P<n>\d+)$|^h(?P<h>\d+)$")
HTTP_FAULTS = ("hang", "e503", "e500", "trickle", "slowbw", "throttle", "redir")
DNS_FAULTS = ("ttl1", "v6only", "brokenv6", "noaddr", "nx", "servfail", "silent", "outside", "private", "closed")


@dataclass(frozen=True)
class ZoneAnswer:
    """What the DNS server replies: an rcode and (address, ttl) records, maybe later than usual."""

    rcode: str = "NOERROR"
    records: tuple[tuple[str, int], ...] = ()
    extra_delay: float = 0.0


@dataclass(frozen=True)
class NameZone:
    """The names of the test zone and the addresses they map to."""

    addresses: tuple[str, ...] = ("127.0.0.2",)
    zone: str = ZONE
    ttl: int = 300
    outside: str = "127.0.0.99"  # loopback, but not a farm address
    private: str = "10.0.0.1"
    closed: str = "127.0.0.10"  # nothing listens here (the tests' farm uses 127.0.0.2-9)
    v6: str = "::1"

    def name(self, n: int, kind: str = "h") -> str:
        """The ``n``-th name of ``kind`` (``h`` or a fault kind)."""
        return f"h{n}.{self.zone}" if kind == "h" else f"{kind}-{n}.{self.zone}"

    def parse(self, name: str) -> tuple[str, int] | None:
        """(kind, n) of a name in the zone, or None."""
        name = name.lower().rstrip(".")
        if not name.endswith("." + self.zone):
            return None
        m = _LABEL.match(name[: -len(self.zone) - 1])
        if m is None:
            return None
        if m["h"] is not None:
            return "h", int(m["h"])
        kind = m["kind"] or "h"
        return (kind, int(m["n"])) if kind in ("h", *HTTP_FAULTS, *DNS_FAULTS) else None

    def resolve(self, name: str, qtype: str) -> ZoneAnswer | None:
        """The answer for one question; None means stay silent."""
        if not name.endswith(self.zone):
            return ZoneAnswer("REFUSED")
        parsed = self.parse(name)
        if parsed is None:
            return ZoneAnswer("NXDOMAIN")
        kind, n = parsed
        ttl = 1 if kind == "ttl1" else self.ttl
        v4 = {
            "nx": None,
            "servfail": None,
            "silent": None,
            "v6only": "",
            "noaddr": "",
            "outside": self.outside,
            "private": self.private,
            "closed": self.closed,
        }.get(kind, self.addresses[n % len(self.addresses)])
        if kind == "nx":
            return ZoneAnswer("NXDOMAIN")
        if kind == "servfail":
            return ZoneAnswer("SERVFAIL")
        if kind == "silent" or (kind == "brokenv6" and qtype == "AAAA"):
            return None
        if qtype == "A" and v4:
            return ZoneAnswer(records=((v4, ttl),))
        if qtype == "AAAA" and kind == "v6only":
            return ZoneAnswer(records=((self.v6, ttl),))
        return ZoneAnswer()  # the name exists, without this record type (NODATA)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class HostFaults:
    """State of the by-name fault hosts (throttle buckets)."""

    zone: NameZone
    port: int = 0
    last_served: dict[str, float] = field(default_factory=dict)
    throttled: int = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Route requests for fault names to their fault; everything else to the normal farm routes."""
        host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
        parsed = self.zone.parse(host)
        kind, n = parsed if parsed is not None else ("h", 0)
        if kind == "hang":
            return await hang(request)
        if kind in ("e503", "e500"):
            return web.Response(status=int(kind[1:]), text=f"{kind}: always failing")
        if kind == "trickle":
            return await trickle(request)
        if kind == "redir":
            port = request.host.rsplit(":", 1)[1] if ":" in request.host else str(self.port)
            raise web.HTTPFound(f"http://{self.zone.name(n + 1)}:{port}{request.path_qs}")
        if kind == "throttle":
            now = time.monotonic()
            if now - self.last_served.get(host, float("-inf")) < 1.0:
                self.throttled += 1
                return web.Response(status=429, text="slow down", headers={"Retry-After": "1"})
            self.last_served[host] = now
        resp = await handler(request)
        if kind == "slowbw" and isinstance(resp, web.Response) and resp.body is not None:
            return await _slow_body(request, resp)
        return resp


async def _slow_body(request: web.Request, resp: web.Response) -> web.StreamResponse:
    body = bytes(resp.body) if isinstance(resp.body, bytes | bytearray) else b""
    out = web.StreamResponse(
        status=resp.status, headers={"Content-Type": resp.content_type, "Content-Length": str(len(body))}
    )
    await out.prepare(request)
    for i in range(0, len(body), 4096):
        await out.write(body[i : i + 4096])
        await asyncio.sleep(0.1)
    return out


def install(app: web.Application, zone: NameZone, port: int = 0) -> HostFaults:
    """Add by-name fault hosts to a farm app (before it starts); returns their state."""
    faults = HostFaults(zone, port)
    app.middlewares.append(faults.middleware)
    return faults


def allow_networks(addresses: tuple[str, ...]) -> list[str]:
    """``--allow-network`` values for exactly these addresses."""
    return [f"{a}/{32 if ':' not in a else 128}" for a in addresses]
