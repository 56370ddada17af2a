"""Hostile-server routes of the farm: servers that lie, stall, flood or bomb at the HTTP layer.

Each route is one attack a real host on a URL list can mount; tests/test_hostile_server.py runs them
through ``python -m fetcher`` and pins the named reason each row must end with. Routes that break the
protocol itself (bad status lines, duplicate lengths, header floods) write raw bytes to the socket,
since aiohttp's own response machinery refuses to produce them.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from fetcher.farm.images import catalogue_image

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/hostile"
_ZEROS = b"\0" * 2**20
BOMB_DECODED_GIB = 4  # what each compression bomb would expand to if a client read it all


def _block_stream(wbits: int) -> tuple[bytes, bytes]:
    """The stream header and one repeatable compressed block of 1 MiB of zeros.

    A full flush resets the compressor, so every following block of zeros compresses to the same
    bytes: the bomb is a header plus one ~1 KiB block repeated, built without compressing GBs.
    """
    co = zlib.compressobj(9, zlib.DEFLATED, wbits)
    first = co.compress(_ZEROS) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(_ZEROS) + co.flush(zlib.Z_FULL_FLUSH)
    assert first.endswith(block)  # the header is what precedes the steady-state block
    return first[: len(first) - len(block)], block


_STREAMS = {"gzip": _block_stream(31), "deflate": _block_stream(15)}


async def _raw(request: web.Request, data: bytes, *, close: bool = True) -> web.StreamResponse:
    """Write ``data`` as the whole HTTP response, bypassing aiohttp's response writer."""
    transport = request.transport
    assert transport is not None
    transport.write(data)
    if close:
        await asyncio.sleep(0.05)  # let the bytes leave before the FIN
        transport.close()
    else:
        await asyncio.sleep(3600)  # the client gives up first; the handler is cancelled with its connection
    raise asyncio.CancelledError  # nothing more may be written on this connection


def _head(status: str = "200 OK", *headers: str) -> bytes:
    # Connection: close, so no client reuses a connection these handlers are about to drop.
    lines = [f"HTTP/1.1 {status}", "Content-Type: image/jpeg", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def trickle(request: web.Request) -> web.StreamResponse:
    """One byte per second, forever: only a total deadline ends it."""
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    await resp.prepare(request)
    while True:
        await resp.write(b"\xff")
        await asyncio.sleep(1.0)


async def trickle_headers(request: web.Request) -> web.StreamResponse:
    """The status line, then one header byte per second, forever: the body never starts."""
    transport = request.transport
    assert transport is not None
    transport.write(b"HTTP/1.1 200 OK\r\n")
    while not transport.is_closing():
        transport.write(b"X")
        await asyncio.sleep(1.0)
    raise asyncio.CancelledError


async def endless_chunked(request: web.Request) -> web.StreamResponse:
    """A chunked body that never ends (no Content-Length to refuse up front)."""
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    chunk = b"\xff" * 65536
    while True:
        await resp.write(chunk)


async def bomb(request: web.Request) -> web.StreamResponse:
    """/hostile/bomb/{encoding}?length=1&corrupt=1: a few MB that decode to BOMB_DECODED_GIB GiB.

    Chunked unless ``length=1``; ``corrupt=1`` follows a valid stream header with bytes that do not decode.
    ``br`` is sent as bytes a client without a brotli decoder cannot read (an unsupported encoding).
    """
    encoding = request.match_info["encoding"]
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Encoding": encoding})
    if encoding not in _STREAMS:
        resp.headers["Content-Length"] = "4096"
        await resp.prepare(request)
        await resp.write(bytes(range(256)) * 16)
        return resp
    head, block = _STREAMS[encoding]
    if request.query.get("corrupt") == "1":
        block = bytes(range(256)) * 4  # not deflate data: the decoder fails mid-body
    if request.query.get("length") == "1":
        resp.headers["Content-Length"] = str(len(head) + len(block) * 1024 * BOMB_DECODED_GIB)
    else:  # chunked: nothing to refuse up front, only decoded bytes can be counted
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(head)
    for _ in range(1024 * BOMB_DECODED_GIB // 64):  # no valid trailer: no client should get that far
        await resp.write(block * 64)
    return resp


async def big(request: web.Request) -> web.StreamResponse:
    """/hostile/big/{mb}?chunked=1: ``mb`` MiB of generated bytes, streamed (with a Content-Length unless chunked)."""
    mb = int(request.match_info["mb"])
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    if request.query.get("chunked") == "1":
        resp.enable_chunked_encoding()
    else:
        resp.content_length = mb * 2**20
    await resp.prepare(request)
    for _ in range(mb):
        await resp.write(_ZEROS)
    return resp


async def huge_header(request: web.Request) -> web.StreamResponse:
    return await _raw(request, _head("200 OK", "X-Flood: " + "a" * 2**20))


async def many_headers(request: web.Request) -> web.StreamResponse:
    return await _raw(request, _head("200 OK", *(f"X-Flood-{i}: {i}" for i in range(20_000))))


async def bad_status(request: web.Request) -> web.StreamResponse:
    return await _raw(request, b"HTTZ/1.1 2OO Fine\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc")


async def duplicate_length(request: web.Request) -> web.StreamResponse:
    body = catalogue_image("small.jpg")
    head = _head("200 OK", f"Content-Length: {len(body)}", f"Content-Length: {len(body) // 2}")
    return await _raw(request, head + body)


async def negative_length(request: web.Request) -> web.StreamResponse:
    return await _raw(request, _head("200 OK", "Content-Length: -1") + catalogue_image("small.jpg"))


async def length_longer(request: web.Request) -> web.StreamResponse:
    """Content-Length promises more than is sent; ?open=1 keeps the connection open instead of closing."""
    body = catalogue_image("small.jpg")
    data = _head("200 OK", f"Content-Length: {len(body) + 5000}") + body
    return await _raw(request, data, close=request.query.get("open") != "1")


async def length_shorter(request: web.Request) -> web.StreamResponse:
    """Content-Length covers the image only; junk follows it on the same connection."""
    body = catalogue_image("small.jpg")
    junk = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\njunk!" * 4
    return await _raw(request, _head("200 OK", f"Content-Length: {len(body)}") + body + junk)


async def location(request: web.Request) -> web.StreamResponse:
    """302 to ``?url=`` exactly as given (aiohttp's HTTPFound would normalise it first)."""
    target = request.query["url"].encode("utf-8")
    return await _raw(
        request, b"HTTP/1.1 302 Found\r\nConnection: close\r\nLocation: " + target + b"\r\nContent-Length: 0\r\n\r\n"
    )


def _quiet(handler: Handler) -> Handler:
    """A client giving up on a hostile route is the expected end, not a server error to log."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ConnectionError:
            raise asyncio.CancelledError from None

    return wrapped


def routes() -> list[web.RouteDef]:
    """Every hostile route, under /hostile."""
    table: list[tuple[str, Handler]] = [
        ("/trickle", trickle),
        ("/trickle-headers", trickle_headers),
        ("/endless-chunked", endless_chunked),
        ("/bomb/{encoding}", bomb),
        (r"/big/{mb:\d+}", big),
        ("/headers/huge", huge_header),
        ("/headers/many", many_headers),
        ("/status/bad", bad_status),
        ("/length/duplicate", duplicate_length),
        ("/length/negative", negative_length),
        ("/length/longer", length_longer),
        ("/length/shorter", length_shorter),
        ("/location", location),
    ]
    return [web.get(PREFIX + path, _quiet(handler)) for path, handler in table]
