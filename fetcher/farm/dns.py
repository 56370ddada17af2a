"""The farm's authoritative DNS server: a test zone of thousands of names, slow answers, DNS faults.

A real UDP (and TCP) server on a loopback address, so fetcher's resolver, img2dataset's getaddrinfo and
``dig`` all talk the real wire protocol to it. Each answer is sent after ``latency`` seconds, like a
cache-missing recursive lookup on the Internet; answers are delayed concurrently (a timer per query),
never one after another. What each name means is :class:`fetcher.farm.names.NameZone`'s business.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, cast

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord

from fetcher.farm.names import NameZone, ZoneAnswer

logger = logging.getLogger(__name__)


@dataclass
class Query:
    """One question as the server saw it (for assertions on what reached the resolver)."""

    t: float
    name: str
    qtype: str


@dataclass
class DnsLog:
    """Every question asked, in arrival order."""

    queries: list[Query] = field(default_factory=list)

    def count(self, name: str, qtype: str | None = None) -> int:
        """Questions for ``name`` (and ``qtype`` when given)."""
        name = name.lower().rstrip(".")
        return sum(1 for q in self.queries if q.name == name and (qtype is None or q.qtype == qtype))


def build_reply(request: DNSRecord, answer: ZoneAnswer) -> bytes:
    """The wire reply to ``request`` carrying ``answer``."""
    reply = request.reply()
    reply.header.rcode = getattr(RCODE, answer.rcode)
    qname = request.q.qname
    for ip, ttl in answer.records:
        rdata = A(ip) if ipaddress.ip_address(ip).version == 4 else AAAA(ip)
        reply.add_answer(RR(qname, QTYPE.A if isinstance(rdata, A) else QTYPE.AAAA, rdata=rdata, ttl=ttl))
    data: bytes = reply.pack()
    return data


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # selector's class is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        planned = self.server.answer(data)
        if planned is None or self.transport is None:
            return
        reply, delay = planned
        # A timer per query: a slow zone answers many questions at once, as a real resolver does.
        asyncio.get_running_loop().call_later(delay, self._send, reply, addr)

    def _send(self, reply: bytes, addr: tuple[str | Any, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


class DnsServer:
    """Serves ``zone`` on ``address:port`` (UDP and TCP), answering after ``latency`` seconds."""

    def __init__(self, zone: NameZone, address: str = "127.0.0.1", port: int = 0, latency: float = 0.0) -> None:
        if not ipaddress.ip_address(address).is_loopback:
            raise ValueError(f"the farm's DNS server binds only loopback addresses, not {address}")
        self.zone = zone
        self.address = address
        self.port = port
        self.latency = latency
        self.log = DnsLog()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    @property
    def server(self) -> str:
        """``HOST:PORT`` for ``--dns-server``."""
        return f"{self.address}:{self.port}"

    async def start(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        # TCP first: with port 0 it picks the port, and UDP takes the same number.
        self._tcp = await asyncio.start_server(self._tcp_client, self.address, self.port, reuse_address=True)
        self.port = self._tcp.sockets[0].getsockname()[1]
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        # A burst of thousands of questions must queue, not drop (the default buffer holds a few hundred).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
        sock.bind((self.address, self.port))
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=sock)
        self._udp = transport
        return self

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()

    def answer(self, data: bytes) -> tuple[bytes, float] | None:
        """(reply, delay) for one wire query, or None to stay silent (or for garbage)."""
        try:
            request = DNSRecord.parse(data)
        except Exception:  # a malformed packet gets no answer, as from a real server
            return None
        name = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE.get(request.q.qtype, str(request.q.qtype))
        self.log.queries.append(Query(time.monotonic(), name, str(qtype)))
        answer = self.zone.resolve(name, str(qtype))
        if answer is None:
            return None
        return build_reply(request, answer), self.latency + answer.extra_delay

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(2)
                data = await reader.readexactly(struct.unpack("!H", head)[0])
                planned = self.answer(data)
                if planned is None:
                    continue
                reply, delay = planned
                await asyncio.sleep(delay)
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
