"""Hostile image files for the farm: scan bombs, pixel bombs, truncated images and header lies.

Each is small on the wire and passes a naive header check; each must end as its own named reason
(image_too_complex, decompression_bomb, truncated_image, decode_error), never as a success.

Routes (``/bomb/...``):
  scans/{w}x{h}-{n}.jpg     progressive JPEG whose last scan is repeated until it has ``n`` scans
  pixels/{w}x{h}.{png,jpg,gif}  a few KB declaring ``w`` x ``h`` pixels
  lie/{w}x{h}.jpg           a 320x240 JPEG whose frame header claims ``w`` x ``h``
  corrupt.jpg               a JPEG with garbage in the middle of its entropy data
  truncated.{jpg,png,gif,webp}  the first 60 % of a valid file
"""

from __future__ import annotations

import asyncio
import io
import re
import struct
from collections.abc import Callable
from functools import lru_cache

from aiohttp import web
from PIL import Image

_TYPES = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp"}


def _picture(w: int, h: int) -> Image.Image:
    g = Image.linear_gradient("L").resize((w, h))
    return Image.merge("RGB", (g, g.transpose(Image.Transpose.ROTATE_90).resize((w, h)), g.rotate(45)))


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@lru_cache(maxsize=8)
def scan_bomb(w: int, h: int, scans: int) -> bytes:
    """A progressive JPEG whose final scan repeats: each repeat costs a pass over every luma block."""
    data = _save(Image.linear_gradient("L").resize((w, h)).convert("RGB"), "JPEG", quality=75, progressive=True)
    last = data.rindex(b"\xff\xda")
    body = data[:-2]  # without EOI
    return body + body[last:] * max(0, scans - data.count(b"\xff\xda")) + b"\xff\xd9"


def patch_sof(data: bytes, w: int, h: int) -> bytes:
    """``data`` (a JPEG) with its frame header claiming ``w`` x ``h``."""
    out = bytearray(data)
    sof = re.search(rb"\xff[\xc0-\xc2]", data)
    assert sof is not None
    struct.pack_into(">HH", out, sof.start() + 5, h, w)
    return bytes(out)


@lru_cache(maxsize=8)
def pixel_bomb(w: int, h: int, ext: str) -> bytes:
    """A small file that declares ``w`` x ``h`` pixels."""
    if ext == "png":
        return _save(Image.new("1", (w, h)), "PNG")
    if ext == "jpg":
        return patch_sof(_save(_picture(64, 64), "JPEG"), w, h)
    # GIF: a tiny frame on a huge logical screen (the screen size is what Pillow reports).
    data = bytearray(_save(Image.new("P", (8, 8)), "GIF"))
    struct.pack_into("<HH", data, 6, w, h)
    return bytes(data)


@lru_cache(maxsize=4)
def header_lie(w: int, h: int) -> bytes:
    """320x240 of entropy data under a frame header that claims ``w`` x ``h``."""
    return patch_sof(_save(_picture(320, 240), "JPEG", quality=90), w, h)


@lru_cache(maxsize=1)
def corrupt_jpeg() -> bytes:
    """A JPEG with 256 bytes of garbage in the middle of its entropy data (markers intact)."""
    data = bytearray(_save(_picture(320, 240), "JPEG", quality=90))
    mid = (data.index(b"\xff\xda") + len(data)) // 2
    data[mid : mid + 256] = b"\xab" * 256
    return bytes(data)


@lru_cache(maxsize=4)
def truncated(ext: str) -> bytes:
    """The first 60 % of a valid image."""
    fmt = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP"}[ext]
    img = _picture(320, 240)
    data = _save(img.convert("P") if ext == "gif" else img, fmt)
    return data[: len(data) * 6 // 10]


async def _respond(make: Callable[[], bytes], ext: str) -> web.Response:
    # Generated off the event loop: a big scan bomb takes a moment to build (then it is cached).
    return web.Response(body=await asyncio.to_thread(make), content_type=_TYPES[ext])


async def _scans(request: web.Request) -> web.Response:
    m = request.match_info
    return await _respond(lambda: scan_bomb(int(m["w"]), int(m["h"]), int(m["n"])), "jpg")


async def _pixels(request: web.Request) -> web.Response:
    m = request.match_info
    return await _respond(lambda: pixel_bomb(int(m["w"]), int(m["h"]), m["ext"]), m["ext"])


async def _lie(request: web.Request) -> web.Response:
    m = request.match_info
    return await _respond(lambda: header_lie(int(m["w"]), int(m["h"])), "jpg")


async def _corrupt(request: web.Request) -> web.Response:
    return await _respond(corrupt_jpeg, "jpg")


async def _truncated(request: web.Request) -> web.Response:
    ext = request.match_info["ext"]
    return await _respond(lambda: truncated(ext), ext)


def bomb_routes() -> list[web.RouteDef]:
    """The farm's hostile-image routes."""
    return [
        web.get(r"/bomb/scans/{w:\d+}x{h:\d+}-{n:\d+}.jpg", _scans),
        web.get(r"/bomb/pixels/{w:\d+}x{h:\d+}.{ext:png|jpg|gif}", _pixels),
        web.get(r"/bomb/lie/{w:\d+}x{h:\d+}.jpg", _lie),
        web.get("/bomb/corrupt.jpg", _corrupt),
        web.get(r"/bomb/truncated.{ext:jpg|png|gif|webp}", _truncated),
    ]
