"""The farm and its DNS server together: image and fault hosts reached by name, as on the Internet."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

from fetcher.farm.dns import DnsServer
from fetcher.farm.names import ZONE, HostFaults, NameZone, allow_networks, install
from fetcher.farm.server import Farm


class Internet:
    """A Farm on ``addresses`` plus a DNS server for ``zone`` answering after ``latency`` seconds."""

    def __init__(
        self,
        addresses: Iterable[str] = ("127.0.0.2",),
        port: int = 0,
        dns_address: str = "127.0.0.1",
        dns_port: int = 0,
        latency: float = 0.0,
        zone: str = ZONE,
        ttl: int = 300,
        ipv6: bool = False,
    ) -> None:
        self.addresses = tuple(addresses)
        self.zone = NameZone(addresses=self.addresses, zone=zone, ttl=ttl)
        # ipv6: the farm also listens on ::1, where v6only-N names point
        self.farm = Farm(self.addresses + ((self.zone.v6,) if ipv6 else ()), port)
        self.faults: HostFaults = install(self.farm.app, self.zone)
        self.dns = DnsServer(self.zone, dns_address, dns_port, latency)

    async def start(self) -> Internet:
        await self.farm.start()
        self.faults.port = self.farm.port
        await self.dns.start()
        return self

    async def stop(self) -> None:
        await self.dns.stop()
        await self.farm.stop()

    @property
    def port(self) -> int:
        return self.farm.port

    def url(self, n: int, path: str, kind: str = "h") -> str:
        """URL of ``path`` on the ``n``-th name of ``kind``."""
        return f"http://{self.zone.name(n, kind)}:{self.farm.port}{path}"

    def fetcher_flags(self) -> list[str]:
        """Flags that point fetcher at this DNS server and allow exactly the farm's addresses.

        The closed-N address is allowed too (so its rows end in connect_error, not blocked_address);
        outside-N and private-N addresses stay refused.
        """
        flags = ["--dns-server", self.dns.server]
        for net in allow_networks((*self.farm.addresses, self.zone.closed)):
            flags += ["--allow-network", net]
        return flags


class InternetThread:
    """Runs an Internet on its own event loop in a daemon thread (sync tests, ``serve``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="internet", daemon=True)
        self.net: Internet

    def __enter__(self) -> Internet:
        self._thread.start()
        self.net = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self.net

    async def _start(self) -> Internet:
        return await Internet(*self._args, **self._kwargs).start()

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.net.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
