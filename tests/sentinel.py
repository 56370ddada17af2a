"""Listening servers behind refused loopback addresses, so an SSRF leak is seen, not inferred.

A refused address where nothing listens fails the request anyway (``connect_error``), and only a
reason string would tell a leak from a refusal. A Sentinel accepts on the refused addresses, counts
every connection and answers with a real JPEG, so a leak would even look like a success.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import socketserver
import threading
from collections.abc import Iterable
from typing import Any

from fetcher.farm.images import catalogue_image


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        local = sock.getsockname()[0]
        self.server.sentinel.record(local)  # counted on accept, before anything else can fail
        sock.settimeout(2.0)
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
        except OSError:
            pass
        self.server.sentinel.request_lines.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
        body = catalogue_image("small.jpg")
        reply = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n"
        reply += b"Content-Length: %d\r\n\r\n" % len(body)
        with contextlib.suppress(OSError):
            sock.sendall(reply + body)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sentinel: Sentinel, family: socket.AddressFamily) -> None:
        self.address_family = family
        self.sentinel = sentinel
        super().__init__(address, _Handler)


class Sentinel:
    """Counting HTTP listeners on ``addresses`` (loopback only), all on ``port``.

    IPv6 addresses are optional: skipped when the box has no IPv6 loopback.
    """

    def __init__(self, addresses: Iterable[str], port: int) -> None:
        self.port = port
        self.hits: list[str] = []  # the local address of every accepted connection
        self.request_lines: list[str] = []  # for failure messages
        self._lock = threading.Lock()
        self._servers: list[_Server] = []
        self.addresses: list[str] = []
        for address in addresses:
            ip = ipaddress.ip_address(address)
            if not ip.is_loopback:
                raise ValueError(f"a sentinel listens only on loopback, not {address}")
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            try:
                server = _Server((address, port), self, family)
            except OSError:
                if ip.version == 6:
                    continue
                raise
            self._servers.append(server)
            self.addresses.append(address)
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def record(self, address: str) -> None:
        with self._lock:
            self.hits.append(address)

    def count(self) -> int:
        with self._lock:
            return len(self.hits)

    def since(self, mark: int) -> list[str]:
        """Connections accepted after ``count()`` returned ``mark``."""
        with self._lock:
            return self.hits[mark:]

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> Sentinel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
