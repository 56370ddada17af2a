"""The farm's aiohttp server: sample images and fault paths, bound to several loopback addresses."""

from __future__ import annotations

import asyncio
import gzip
import io
import ipaddress
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from fetcher.farm import hostile
from fetcher.farm.bombs import bomb_routes
from fetcher.farm.images import CATALOGUE, CONTENT_TYPES, catalogue_image, make_image


@dataclass
class Arrival:
    """One request as the farm saw it (for rate and ordering assertions)."""

    t: float
    host: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)  # as sent (User-Agent, Accept, ...)


@dataclass
class FarmState:
    """What the farm remembers: request arrivals and generated images."""

    arrivals: list[Arrival] = field(default_factory=list)
    gen_cache: dict[tuple[Any, ...], bytes] = field(default_factory=dict)
    # /throttled: last time each bucket served an image, and every 429 sent as (time, path_qs)
    throttle_last: dict[str, float] = field(default_factory=dict)
    throttled: list[tuple[float, str]] = field(default_factory=list)


STATE: web.AppKey[FarmState] = web.AppKey("state", FarmState)


def _image_response(data: bytes, name: str, headers: dict[str, str] | None = None) -> web.Response:
    ext = name.rsplit(".", 1)[-1]
    return web.Response(body=data, content_type=CONTENT_TYPES.get(ext, "application/octet-stream"), headers=headers)


def _catalogue(request: web.Request, key: str = "name") -> tuple[bytes, str]:
    name = request.match_info[key]
    if name not in CATALOGUE:
        raise web.HTTPNotFound(text=f"no sample {name}")
    return catalogue_image(name), name


async def img(request: web.Request) -> web.Response:
    data, name = _catalogue(request)
    return _image_response(data, name)


async def gen(request: web.Request) -> web.Response:
    """/gen/{w}x{h}.{ext}?seed=&q=&progressive=1: generated images, cached by parameters."""
    state: FarmState = request.app[STATE]
    w, h, ext = int(request.match_info["w"]), int(request.match_info["h"]), request.match_info["ext"]
    if w * h > 40_000_000:
        raise web.HTTPBadRequest(text="too large")
    seed = int(request.query.get("seed", "0")) % int(request.query.get("variants", "4"))
    q = int(request.query.get("q", "90"))
    prog = request.query.get("progressive") == "1"
    key = (w, h, ext, seed, q, prog)
    data = state.gen_cache.get(key)
    if data is None:
        fmt = {"jpg": "jpeg"}.get(ext, ext)
        data = await asyncio.to_thread(make_image, w, h, fmt, seed=seed, quality=q, progressive=prog)
        state.gen_cache[key] = data
    return _image_response(data, f"x.{ext}")


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    headers = {}
    if "retry_after" in request.query:
        headers["Retry-After"] = request.query["retry_after"]
    return web.Response(status=code, text=f"status {code}", headers=headers)


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.match_info["ms"]) / 1000)
    data, name = _catalogue(request)
    return _image_response(data, name)


async def throttled(request: web.Request) -> web.Response:
    """/throttled/{bucket}/{name}?interval=&retry_after=: 429 + Retry-After when hit faster than ``interval``."""
    state: FarmState = request.app[STATE]
    key = f"{request.host}/{request.match_info['bucket']}"
    now = time.monotonic()
    if now - state.throttle_last.get(key, float("-inf")) < float(request.query.get("interval", "0.2")):
        state.throttled.append((now, request.path_qs))
        return web.Response(
            status=429, text="slow down", headers={"Retry-After": request.query.get("retry_after", "1")}
        )
    state.throttle_last[key] = now
    data, name = _catalogue(request)
    return _image_response(data, name)


async def hang(request: web.Request) -> web.Response:
    await asyncio.sleep(3600)
    return web.Response(text="late")


async def truncated(request: web.Request) -> web.StreamResponse:
    data, _name = _catalogue(request)
    resp = web.StreamResponse(headers={"Content-Type": CONTENT_TYPES["jpg"], "Content-Length": str(len(data))})
    await resp.prepare(request)
    await resp.write(data[: len(data) // 2])
    request.transport.close() if request.transport else None  # type: ignore[func-returns-value]
    return resp


async def reset(request: web.Request) -> web.StreamResponse:
    data, _name = _catalogue(request)
    resp = web.StreamResponse(headers={"Content-Type": CONTENT_TYPES["jpg"], "Content-Length": str(len(data))})
    await resp.prepare(request)
    await resp.write(data[:1000])
    if request.transport is not None:
        request.transport.abort()
    return resp


async def notimage(request: web.Request) -> web.Response:
    return web.Response(text="<html><body>not an image</body></html>", content_type="image/jpeg")


async def redirect(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    name = request.match_info["name"]
    target = f"/redirect/{n - 1}/{name}" if n > 1 else f"/img/{name}"
    raise web.HTTPFound(target)


async def loop(request: web.Request) -> web.Response:
    raise web.HTTPFound("/loop")


async def redirect_to(request: web.Request) -> web.Response:
    raise web.HTTPFound(request.query["url"])


async def endless(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    await resp.prepare(request)
    chunk = b"\xff" * 65536
    for _ in range(1_000_000):
        await resp.write(chunk)
    return resp


async def trickle(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": "100000"})
    await resp.prepare(request)
    for _ in range(100000):
        await resp.write(b"\xff")
        await asyncio.sleep(0.5)
    return resp


async def huge_length(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": str(10**12)})
    await resp.prepare(request)
    await resp.write(b"\xff" * 1000)
    return resp


_BOMB: list[bytes] = []


async def gzip_bomb(request: web.Request) -> web.Response:
    if not _BOMB:  # built once, off the loop: compressing 256 MiB takes seconds and would stall every host
        _BOMB.append(await asyncio.to_thread(gzip.compress, b"\0" * (256 * 2**20), compresslevel=9))
    return web.Response(body=_BOMB[0], headers={"Content-Type": "image/jpeg", "Content-Encoding": "gzip"})


async def flaky(request: web.Request) -> web.Response:
    """/flaky/{n}/{name}: 503 for the first n requests of this exact path and query, then the image."""
    state: FarmState = request.app[STATE]
    seen = sum(1 for a in state.arrivals if a.path == request.path_qs)  # includes this one
    if seen <= int(request.match_info["n"]):
        return web.Response(status=503, text="try later")
    data, name = _catalogue(request)
    return _image_response(data, name)


async def cut(request: web.Request) -> web.Response:
    """/cut/{name}: the first half of an image, delivered completely (a truncated file, not a truncated body)."""
    data, name = _catalogue(request)
    return _image_response(data[: len(data) // 2], name)


def _pixel_bomb(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (w, h)).save(buf, "PNG")  # one bit per pixel, all zero: tiny file, huge decode
    return buf.getvalue()


async def pixel_bomb(request: web.Request) -> web.Response:
    """/pixel-bomb/{w}x{h}.png: a few KB of PNG that decodes to w*h pixels."""
    state: FarmState = request.app[STATE]
    w, h = int(request.match_info["w"]), int(request.match_info["h"])
    key = ("bomb", w, h)
    if key not in state.gen_cache:
        state.gen_cache[key] = await asyncio.to_thread(_pixel_bomb, w, h)
    return _image_response(state.gen_cache[key], "x.png")


async def robots_noai(request: web.Request) -> web.Response:
    data, name = _catalogue(request)
    return _image_response(data, name, {"X-Robots-Tag": "noai, noimageai"})


@web.middleware
async def record_arrival(request: web.Request, handler: Any) -> web.StreamResponse:
    arrival = Arrival(time.monotonic(), request.host, request.path_qs, dict(request.headers))
    request.app[STATE].arrivals.append(arrival)
    return await handler(request)  # type: ignore[no-any-return]


def make_app(state: FarmState | None = None, extra_routes: Iterable[web.RouteDef] = ()) -> web.Application:
    """The farm application; ``extra_routes`` lets a test add behaviour without a new server."""
    app = web.Application(middlewares=[record_arrival])
    app[STATE] = state or FarmState()
    app.add_routes(
        [
            web.get("/img/{name}", img),
            web.get(r"/gen/{w:\d+}x{h:\d+}.{ext}", gen),
            web.get(r"/status/{code:\d+}", status),
            web.get(r"/slow/{ms:\d+}/{name}", slow),
            web.get("/throttled/{bucket}/{name}", throttled),
            web.get("/hang", hang),
            web.get("/truncated/{name}", truncated),
            web.get("/reset/{name}", reset),
            web.get("/notimage", notimage),
            web.get(r"/redirect/{n:\d+}/{name}", redirect),
            web.get("/loop", loop),
            web.get("/redirect-to", redirect_to),
            web.get("/endless", endless),
            web.get("/trickle", trickle),
            web.get("/huge-length", huge_length),
            web.get("/gzip-bomb", gzip_bomb),
            web.get("/robots-noai/{name}", robots_noai),
            web.get(r"/flaky/{n:\d+}/{name}", flaky),
            web.get("/cut/{name}", cut),
            web.get(r"/pixel-bomb/{w:\d+}x{h:\d+}.png", pixel_bomb),
            *hostile.routes(),
            *bomb_routes(),
            *extra_routes,
        ]
    )
    return app


def _check_loopback(address: str) -> None:
    if not ipaddress.ip_address(address).is_loopback:
        raise ValueError(f"the farm binds only loopback addresses, not {address}")


class Farm:
    """The farm bound on ``addresses`` (all on one port), on the running event loop."""

    def __init__(
        self,
        addresses: Iterable[str] = ("127.0.0.1",),
        port: int = 0,
        extra_routes: Iterable[web.RouteDef] = (),
    ) -> None:
        self.addresses = list(addresses)
        for a in self.addresses:
            _check_loopback(a)
        self.port = port
        self.state = FarmState()
        self.app = make_app(self.state, extra_routes)
        self._runner: web.AppRunner | None = None

    async def start(self) -> Farm:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        for i, address in enumerate(self.addresses):
            site = web.TCPSite(self._runner, address, self.port, reuse_address=True)
            await site.start()
            if i == 0 and self.port == 0:
                server = site._server
                assert server is not None and isinstance(server, asyncio.base_events.Server)
                self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def base(self, host: int = 0) -> str:
        """Base URL of the ``host``-th address."""
        return f"http://{self.addresses[host]}:{self.port}"

    def url(self, path: str, host: int = 0) -> str:
        return self.base(host) + path


class FarmThread:
    """Runs a Farm on its own event loop in a daemon thread (for sync tests and ``make run``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="farm", daemon=True)
        self.farm: Farm

    def __enter__(self) -> Farm:
        self._thread.start()
        self.farm = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self.farm

    async def _start(self) -> Farm:
        return await Farm(*self._args, **self._kwargs).start()

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.farm.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
