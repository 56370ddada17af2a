"""Deterministic generated test images (no files are committed)."""

from __future__ import annotations

import io
from functools import lru_cache

from PIL import Image


@lru_cache(maxsize=16)
def _base(w: int, h: int, seed: int) -> Image.Image:
    # Gradients plus noise: compresses like a photo (not like a flat colour), costs little to make.
    r = Image.linear_gradient("L").resize((w, h))
    g = Image.radial_gradient("L").resize((w, h))
    noise = Image.effect_noise((w, h), 24 + seed % 16)
    b = Image.blend(r.rotate(90 * (seed % 4)).resize((w, h)), noise, 0.5)
    return Image.merge("RGB", (Image.blend(r, noise, 0.25), g, b))


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
) -> bytes:
    """Encode a generated ``width`` x ``height`` image in ``fmt`` (jpeg, png, webp, gif, bmp, tiff)."""
    img = _base(width, height, seed)
    if mode == "RGBA":
        alpha = Image.linear_gradient("L").resize((width, height))
        img = img.copy()
        img.putalpha(alpha)
    elif mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
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
