"""Deterministic generated test images (no files are committed)."""

from __future__ import annotations

import io
import random
import struct
import zlib
from functools import lru_cache

from PIL import Image


def _noise(size: tuple[int, int], sigma: float, key: tuple[int, ...]) -> Image.Image:
    """Seeded noise around 128 with standard deviation ``sigma``.

    Image.effect_noise draws from the C library's rand(), so images would differ between
    processes; tests and benchmarks need the same bytes for the same parameters everywhere.
    """
    w, h = size
    raw = random.Random(repr(key)).randbytes(w * h)
    scale = sigma / 73.9  # standard deviation of uniform bytes
    lut = [max(0, min(255, round(128 + (i - 127.5) * scale))) for i in range(256)]
    return Image.frombytes("L", size, raw).point(lut)


@lru_cache(maxsize=16)
def _base(w: int, h: int, seed: int) -> Image.Image:
    # Gradients plus noise: compresses like a photo (not like a flat colour), costs little to make.
    r = Image.linear_gradient("L").resize((w, h))
    g = Image.radial_gradient("L").resize((w, h))
    noise = _noise((w, h), 24 + seed % 16, (w, h, seed))
    b = Image.blend(r.rotate(90 * (seed % 4)).resize((w, h)), noise, 0.5)
    return Image.merge("RGB", (Image.blend(r, noise, 0.25), g, b))


@lru_cache(maxsize=4)
def _photo(w: int, h: int, seed: int) -> Image.Image:
    # Noise at four scales, each upsampled smoothly: a roughly 1/f spectrum, so it compresses and
    # down-samples like a real photo (the fine layer sets the JPEG size: ~7 MB for 20 MP at q90).
    out: Image.Image | None = None
    for i, div in enumerate((64, 16, 4, 1)):
        sw, sh = max(2, w // div), max(2, h // div)
        sigma = 60 - 12 * i + seed % 7
        layer = Image.merge(
            "RGB",
            [
                _noise((sw, sh), sigma, (w, h, seed, i, band)).resize((w, h), Image.Resampling.BICUBIC)
                for band in range(3)
            ],
        )
        out = layer if out is None else Image.blend(out, layer, (0.3, 0.3, 0.45)[i - 1])
    assert out is not None
    return out


def _png16_rgb(img: Image.Image) -> bytes:
    # Pillow cannot write 16-bit RGB PNGs, so build one by hand: each 8-bit sample v becomes v*257.
    w, h = img.size
    raw = img.tobytes()
    rows = bytearray()
    for y in range(h):
        rows.append(0)  # filter type: none
        line = raw[y * w * 3 : (y + 1) * w * 3]
        rows += bytes(b for v in line for b in (v, v))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(rows))) + chunk(b"IEND", b"")
    )


def _ycck_jpeg(cmyk: Image.Image, quality: int) -> bytes:
    # Pillow cannot write YCCK either. libjpeg turns YCCK into stored (inverted) CMYK as
    # (255-R, 255-G, 255-B, K) from the YCC of (R, G, B); Pillow inverts again on read. So store
    # the YCbCr of the ink (C, M, Y) plus 255-K through Pillow's CMYK writer (which inverts every
    # channel), then flip the Adobe marker's transform byte from 0 (CMYK) to 2 (YCCK).
    c, m, y, k = cmyk.split()
    ycc = Image.merge("RGB", (c, m, y)).convert("YCbCr").split()
    inv = [ch.point(lambda v: 255 - v) for ch in ycc]
    buf = io.BytesIO()
    Image.merge("CMYK", (*inv, k)).save(buf, "JPEG", quality=quality)
    data = bytearray(buf.getvalue())
    at = data.find(b"Adobe")
    assert at > 0 and data[at + 11] == 0, "Pillow wrote no Adobe CMYK marker"
    data[at + 11] = 2
    return bytes(data)


def make_image(
    width: int,
    height: int,
    fmt: str = "jpeg",
    *,
    seed: int = 0,
    mode: str = "RGB",
    quality: int = 90,
    progressive: bool = False,
    exif_orientation: int | None = None,
    frames: int = 1,
    texture: str = "noise",
    transparent_index: int | None = None,
) -> bytes:
    """Encode a generated ``width`` x ``height`` image in ``fmt`` (jpeg, png, webp, gif, bmp, tiff).

    ``mode`` is any Pillow mode plus ``I;16`` (16-bit grey PNG), ``RGB;16`` (16-bit RGB PNG) and
    ``YCCK`` (4-channel Adobe JPEG); ``texture="photo"`` gives photo-like content for benchmarks;
    ``transparent_index`` marks one palette entry transparent (mode ``P``).
    """
    img = _photo(width, height, seed) if texture == "photo" else _base(width, height, seed)
    if mode == "RGB;16":
        return _png16_rgb(img)
    if mode == "YCCK":
        return _ycck_jpeg(img.convert("CMYK"), quality)
    if mode == "I;16":
        img = img.convert("L").point(lambda v: v * 257, "I").convert("I;16")
    elif mode == "RGBA":
        alpha = Image.linear_gradient("L").resize((width, height))
        img = img.copy()
        img.putalpha(alpha)
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    if transparent_index is not None:
        img.info["transparency"] = transparent_index
    fmt = fmt.lower()
    kwargs: dict[str, object] = {}
    if fmt == "jpeg":
        kwargs.update(quality=quality, progressive=progressive)
        if exif_orientation is not None:
            exif = Image.Exif()
            exif[0x0112] = exif_orientation
            kwargs["exif"] = exif.tobytes()
    elif fmt == "webp":
        kwargs.update(quality=quality)
    if frames > 1 and fmt in ("gif", "webp"):
        others = [img.rotate(180 * i) for i in range(1, frames)]
        kwargs.update(save_all=True, append_images=others, duration=100, loop=0)
    img.save(buf, fmt.upper(), **kwargs)
    return buf.getvalue()


# Named samples served under /img/<name>: (width, height, format, options).
CATALOGUE: dict[str, tuple[int, int, str, dict[str, object]]] = {
    "small.jpg": (320, 240, "jpeg", {}),
    "medium.jpg": (1024, 768, "jpeg", {}),
    "large.jpg": (2400, 1600, "jpeg", {}),
    "portrait.jpg": (600, 900, "jpeg", {}),
    "progressive.jpg": (1600, 1200, "jpeg", {"progressive": True}),
    "exif6.jpg": (600, 400, "jpeg", {"exif_orientation": 6}),
    "cmyk.jpg": (400, 300, "jpeg", {"mode": "CMYK"}),
    "gray.jpg": (500, 400, "jpeg", {"mode": "L"}),
    "alpha.png": (300, 200, "png", {"mode": "RGBA"}),
    "palette.png": (300, 300, "png", {"mode": "P"}),
    "photo.webp": (800, 600, "webp", {}),
    "anim.gif": (200, 160, "gif", {"mode": "P", "frames": 3}),
    "tiny.png": (16, 16, "png", {}),
}


@lru_cache(maxsize=64)
def catalogue_image(name: str) -> bytes:
    """Bytes of a named sample image."""
    w, h, fmt, opts = CATALOGUE[name]
    return make_image(w, h, fmt, **opts)  # type: ignore[arg-type]


CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
}
