"""Image work: bytes in, resized encoded bytes + a record out.

Pure functions with no shared state, so they run unchanged in worker processes and in tests.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from fetcher.options import ConfigError, opt
from fetcher.records import ImageOutcome, Reason

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border", "multiple_of_64")
ENCODE_FORMATS = ("jpg", "webp", "png")
_PIL_FORMAT = {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}


@dataclass(frozen=True)
class ImageOptions:
    """Options of the imaging stage."""

    image_size: int = opt(
        "--image-size", 256, "target size in pixels (meaning depends on --resize-mode)", aliases=("--image_size",)
    )
    resize_mode: str = opt(
        "--resize-mode", "keep_ratio", "how to resize", choices=RESIZE_MODES, aliases=("--resize_mode",)
    )
    resize_only_if_bigger: bool = opt(
        "--resize-only-if-bigger", False, "never upscale", aliases=("--resize_only_if_bigger",)
    )
    encode_format: str = opt(
        "--encode-format", "jpg", "output image format", choices=ENCODE_FORMATS, aliases=("--encode_format",)
    )
    encode_quality: int = opt(
        "--encode-quality", 95, "JPEG/WebP quality (PNG: compress level 0-9)", aliases=("--encode_quality",)
    )
    max_image_pixels: int = opt("--max-image-pixels", 178_956_970, "images with more pixels are refused as bombs")
    background: str = opt("--background", "#ffffff", "colour that transparent pixels are composited on")

    def validate(self) -> None:
        if self.image_size < 1:
            raise ConfigError("--image-size must be >= 1")
        if self.encode_format == "png":
            if not 0 <= self.encode_quality <= 9:
                raise ConfigError("--encode-quality for png is a compress level 0-9")
        elif not 1 <= self.encode_quality <= 100:
            raise ConfigError("--encode-quality must be in 1..100")
        try:
            from PIL import ImageColor

            ImageColor.getrgb(self.background)
        except ValueError:
            raise ConfigError(f"--background: unknown colour {self.background!r}") from None


def target_size(width: int, height: int, opts: ImageOptions) -> tuple[int, int]:
    """Size of the image after resizing (before any crop/pad), for the given mode."""
    size = opts.image_size
    mode = opts.resize_mode
    if mode == "no":
        return width, height
    # keep_ratio, center_crop and multiple_of_64 scale the short side; the others the long side.
    fit_long = mode in ("keep_ratio_largest", "border")
    scale = size / (max(width, height) if fit_long else min(width, height))
    if opts.resize_only_if_bigger and scale > 1:
        scale = 1.0
    new_w = max(1, round(width * scale))
    new_h = max(1, round(height * scale))
    if mode == "multiple_of_64":
        new_w = max(64, round(width * scale / 64.0) * 64)
        new_h = max(64, round(height * scale / 64.0) * 64)
    return new_w, new_h


def _to_rgb(img: Image.Image, background: str) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits instead of clipping to white.
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGB", rgba.size, background)
        base.paste(rgba, mask=rgba.getchannel("A"))
        return base
    return img.convert("RGB")


def _draft_size(width: int, height: int, final: tuple[int, int], swapped: bool) -> tuple[int, int]:
    # draft() works on the stored (unrotated) orientation.
    return (final[1], final[0]) if swapped else final


def process_image(data: bytes, opts: ImageOptions) -> ImageOutcome:
    """Decode, orient, convert, resize and encode one image. Never raises on bad input."""
    start = time.process_time()
    out = _process(data, opts)
    out.cpu_ms = (time.process_time() - start) * 1000
    return out


def _process(data: bytes, opts: ImageOptions) -> ImageOutcome:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return ImageOutcome(reason=Reason.DECOMPRESSION_BOMB, detail=str(exc)[:200])
    except Exception as exc:
        return ImageOutcome(reason=Reason.NOT_AN_IMAGE, detail=f"{type(exc).__name__}: {exc}"[:200])
    src_w, src_h = img.size
    fmt = img.format
    if src_w * src_h > opts.max_image_pixels:
        return ImageOutcome(
            reason=Reason.DECOMPRESSION_BOMB,
            detail=f"{src_w}x{src_h} is over {opts.max_image_pixels} pixels",
            source_format=img.format,
        )
    try:
        orientation = img.getexif().get(0x0112, 1)
        swapped = orientation in (5, 6, 7, 8)
        ow, oh = (src_h, src_w) if swapped else (src_w, src_h)
        final = target_size(ow, oh, opts)
        if img.format == "JPEG" and opts.resize_mode != "no" and (final[0] < ow or final[1] < oh):
            # DCT-scaled decoding: decode at the smallest 1/2^k scale still >= the target.
            img.draft("RGB", _draft_size(ow, oh, final, swapped))
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img, opts.background)
        img = _resize(img, final, opts)
        encoded = _encode(img, opts)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return ImageOutcome(reason=Reason.DECOMPRESSION_BOMB, detail=str(exc)[:200])
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return ImageOutcome(
            reason=Reason.DECODE_ERROR,
            detail=f"{type(exc).__name__}: {exc}"[:200],
            original_width=ow,
            original_height=oh,
        )
    return ImageOutcome(
        data=encoded,
        ext=opts.encode_format,
        width=img.width,
        height=img.height,
        original_width=ow,
        original_height=oh,
        source_format=fmt,
    )


def _resize(img: Image.Image, final: tuple[int, int], opts: ImageOptions) -> Image.Image:
    if img.size != final:
        img = img.resize(final, Image.Resampling.LANCZOS, reducing_gap=None)
    size = opts.image_size
    if opts.resize_mode == "center_crop" and img.size != (size, size):
        w, h = img.size
        if opts.resize_only_if_bigger and (w < size or h < size):
            return img
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    elif opts.resize_mode == "border" and img.size != (size, size):
        w, h = img.size
        canvas = Image.new("RGB", (size, size), opts.background)
        canvas.paste(img, ((size - w) // 2, (size - h) // 2))
        img = canvas
    return img


def _encode(img: Image.Image, opts: ImageOptions) -> bytes:
    buf = io.BytesIO()
    if opts.encode_format == "png":
        img.save(buf, "PNG", compress_level=opts.encode_quality)
    else:
        img.save(buf, _PIL_FORMAT[opts.encode_format], quality=opts.encode_quality)
    return buf.getvalue()
