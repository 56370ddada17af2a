"""Image work: bytes in, resized encoded bytes + a record out.

Pure functions with no shared state, so they run unchanged in worker processes and in tests.

The order of work is chosen so that no CPU is spent on an image that will be refused: hash check on
the bytes, then format, bomb and size/aspect filters on the header alone, and only then pixels.
The decode/resize path was chosen by measurement (``python -m bench imaging``, variants table):
JPEGs are decoded DCT-scaled (as ``Image.draft`` would) at the smallest 1/2^k scale that still leaves
DRAFT_MARGIN x the target for one Lanczos pass (box-reduced first only when the ratio is still
>= 2 * REDUCING_GAP, as for large PNG/WebP sources); rotation for EXIF orientation is
applied to the small result, not the large decode.

JPEGs (RGB, greyscale, CMYK) are decoded by libjpeg-turbo in strict mode (:mod:`fetcher.jpeg`), so a
header that claims more rows than the data holds, or corrupt entropy data, is a failure instead of
a grey-padded success.

CPU budget (``--image-cpu-budget``), per image and per thread, with no signal and no process kill,
so it works the same in a worker pool and in threads of an engine process: progressive JPEGs are
refused before decoding when their scans would cost too much (scan count and a block-scan estimate
from the marker walk); Pillow decodes read their bytes through a reader that checks this thread's
CPU clock at every block read, and the clock is checked again between decode, resize and encode.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageColor, ImageFile

from fetcher import jpeg
from fetcher.options import ConfigError, opt
from fetcher.records import ImageOutcome, Reason

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border", "multiple_of_64")
ENCODE_FORMATS = ("jpg", "webp", "png")
HASHES = ("sha256", "md5", "xxh3", "none")
# img2dataset's (OpenCV) interpolation names -> Pillow filters; "area" is a box filter in both.
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "linear": Image.Resampling.BILINEAR,
    "bilinear": Image.Resampling.BILINEAR,
    "cubic": Image.Resampling.BICUBIC,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
    "lanczos4": Image.Resampling.LANCZOS,
}


def int_or_inf(text: str) -> int:
    """An integer limit where img2dataset's ``inf`` means no limit (0 here)."""
    return 0 if text.strip().lower() in ("inf", "infinity", "none") else int(text)


_PIL_FORMAT = {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}
# Names users may write for a format -> Pillow's name. MPO is what cameras' multi-picture JPEGs open as.
_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "MPO": "JPEG"}
# EXIF orientation -> the transpose that undoes it (as ImageOps.exif_transpose does).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Pillow's own draft rule (margin 1) fell to 39.9 dB PSNR vs a float Lanczos of the full decode when
# the DCT-scaled size landed within 1.38x of the target (3 MP -> 256); keeping >= 1.5x for Lanczos
# gave >= 42 dB everywhere measured, and costs nothing for 20-MP sources (their margin is 1.78x).
DRAFT_MARGIN = 1.5
# Box-reduce first when the Lanczos ratio is >= 2x this: no effect after a draft (ratio < 3), but
# full decodes (PNG, WebP, ...) shrinking a lot save ~15 % CPU at >= 53 dB PSNR.
REDUCING_GAP = 2.0

# A truncated file must fail, never be padded: guard against a library or plugin having set it.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Pillow's own bomb check warns at 89 MP and raises at 179 MP whatever --max-image-pixels says; our
# header check below replaces it so the flag is the one limit (it still runs before any pixel).
Image.MAX_IMAGE_PIXELS = None


def _normalize_format(name: str) -> str:
    up = name.strip().upper()
    return _FORMAT_ALIASES.get(up, up)


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
    skip_reencode: bool = opt(
        "--skip-reencode",
        False,
        "keep the original bytes when no resize is needed and the format already matches",
        aliases=("--skip_reencode",),
    )
    downscale_interpolation: str = opt(
        "--downscale-interpolation",
        "lanczos",
        "resampling filter when shrinking (img2dataset's default is area)",
        choices=tuple(INTERPOLATIONS),
        aliases=("--downscale_interpolation",),
    )
    upscale_interpolation: str = opt(
        "--upscale-interpolation",
        "lanczos",
        "resampling filter when enlarging",
        choices=tuple(INTERPOLATIONS),
        aliases=("--upscale_interpolation",),
    )
    max_image_pixels: int = opt("--max-image-pixels", 178_956_970, "images with more pixels are refused as bombs")
    background: str = opt("--background", "#ffffff", "colour that transparent pixels are composited on")
    allowed_formats: str = opt(
        "--allowed-formats", "JPEG,PNG,WEBP,GIF,BMP,TIFF", "comma-separated source formats accepted for decoding"
    )
    min_image_size: int = opt(
        "--min-image-size", 0, "refuse images whose short side is smaller (0 = off)", aliases=("--min_image_size",)
    )
    max_image_area: int = opt(
        "--max-image-area",
        0,
        "refuse images with more pixels than this (0 or inf = off)",
        aliases=("--max_image_area",),
        type=int_or_inf,
    )
    max_aspect_ratio: float = opt(
        "--max-aspect-ratio",
        0.0,
        "refuse images whose long/short side ratio is larger (0 = off)",
        aliases=("--max_aspect_ratio",),
    )
    min_aspect_ratio: float = opt(
        "--min-aspect-ratio", 0.0, "refuse images whose long/short side ratio is smaller (0 = off)"
    )
    hash: str = opt(
        "--hash",
        "sha256",
        "hash of the original bytes stored in the results",
        choices=HASHES,
        aliases=("--compute_hash",),
    )
    verify_hash: str = opt(
        "--verify-hash", "", "input column holding the expected --hash of each image; a mismatch fails the row"
    )
    image_cpu_budget: float = opt(
        "--image-cpu-budget",
        10.0,
        "CPU seconds one image may cost to decode and resize; over it = image_too_complex (0 = no limit)",
    )

    @property
    def allowed(self) -> frozenset[str]:
        """Pillow format names allowed to decode."""
        return frozenset(_normalize_format(f) for f in self.allowed_formats.split(",") if f.strip())

    @property
    def hash_column(self) -> str | None:
        """Name of the results column holding the hash (img2dataset names it after the algorithm)."""
        return None if self.hash == "none" else self.hash

    def validate(self) -> None:
        if self.image_size < 1:
            raise ConfigError("--image-size must be >= 1")
        if self.encode_format == "png":
            if not 0 <= self.encode_quality <= 9:
                raise ConfigError("--encode-quality for png is a compress level 0-9")
        elif not 1 <= self.encode_quality <= 100:
            raise ConfigError("--encode-quality must be in 1..100")
        try:
            ImageColor.getrgb(self.background)
        except ValueError:
            raise ConfigError(f"--background: unknown colour {self.background!r}") from None
        Image.init()
        unknown = sorted(f for f in self.allowed if f not in Image.OPEN)
        if unknown or not self.allowed:
            raise ConfigError(f"--allowed-formats: unknown format(s) {', '.join(unknown) or '(none given)'}")
        if self.max_image_pixels < 1:
            raise ConfigError("--max-image-pixels must be >= 1")
        for flag, value in (
            ("--min-image-size", self.min_image_size),
            ("--max-image-area", self.max_image_area),
            ("--max-aspect-ratio", self.max_aspect_ratio),
            ("--min-aspect-ratio", self.min_aspect_ratio),
        ):
            if value < 0:
                raise ConfigError(f"{flag} must be >= 0")
        if 0 < self.max_aspect_ratio < self.min_aspect_ratio:
            raise ConfigError("--min-aspect-ratio is larger than --max-aspect-ratio")
        if self.hash not in HASHES:
            raise ConfigError(f"--hash {self.hash!r}: expected one of {', '.join(HASHES)}")
        if self.verify_hash and self.hash == "none":
            raise ConfigError("--verify-hash needs a --hash other than none")
        if self.image_cpu_budget < 0:
            raise ConfigError("--image-cpu-budget must be >= 0 (0 = no limit)")


def _xxh3(data: bytes) -> str:
    import xxhash

    return str(xxhash.xxh3_64_hexdigest(data))


_HASHERS: dict[str, Callable[[bytes], str]] = {
    "sha256": lambda d: hashlib.sha256(d).hexdigest(),
    "md5": lambda d: hashlib.md5(d, usedforsecurity=False).hexdigest(),
    "xxh3": _xxh3,
}


def hash_bytes(data: bytes, algorithm: str) -> str | None:
    """Hex digest of ``data`` with ``algorithm`` (``none`` gives None)."""
    return None if algorithm == "none" else _HASHERS[algorithm](data)


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
    if mode == "multiple_of_64":
        # As the photo-concept-bucket recipe: scale, then round each side to the nearest multiple of 64.
        sides = [max(64, round(side * scale / 64.0) * 64) for side in (width, height)]
        if opts.resize_only_if_bigger:
            # Rounding up may enlarge a side: round that one down instead.
            sides = [
                s if s <= side else max(64, side // 64 * 64) for s, side in zip(sides, (width, height), strict=True)
            ]
        return sides[0], sides[1]
    return max(1, round(width * scale)), max(1, round(height * scale))


def output_size(width: int, height: int, opts: ImageOptions) -> tuple[int, int]:
    """Final size of an oriented ``width`` x ``height`` image, crop and border included."""
    w, h = target_size(width, height, opts)
    size = opts.image_size
    if opts.resize_mode == "center_crop":
        return min(w, size), min(h, size)
    if opts.resize_mode == "border":
        return size, size
    return w, h


def check_header(width: int, height: int, opts: ImageOptions) -> tuple[Reason, str] | None:
    """The reason an image of this (header) size is refused, or None. No pixel is needed."""
    pixels = width * height
    if pixels > opts.max_image_pixels:
        return Reason.DECOMPRESSION_BOMB, f"{width}x{height} is over {opts.max_image_pixels} pixels"
    short, long = min(width, height), max(width, height)
    if short < max(opts.min_image_size, 1):
        return Reason.IMAGE_TOO_SMALL, f"{width}x{height}: short side under {opts.min_image_size}"
    if opts.max_image_area and pixels > opts.max_image_area:
        return Reason.IMAGE_TOO_LARGE, f"{width}x{height} is over {opts.max_image_area} pixels"
    ratio = long / short
    if opts.max_aspect_ratio and ratio > opts.max_aspect_ratio:
        return Reason.ASPECT_RATIO, f"{width}x{height}: aspect ratio {ratio:.3g} over {opts.max_aspect_ratio}"
    if ratio < opts.min_aspect_ratio:
        return Reason.ASPECT_RATIO, f"{width}x{height}: aspect ratio {ratio:.3g} under {opts.min_aspect_ratio}"
    return None


def _to_rgb(img: Image.Image, background: str) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: keep the top 8 bits instead of clipping everything over 255 to white.
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    elif img.mode == "F":
        img = img.convert("L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        base = Image.new("RGB", rgba.size, background)
        base.paste(rgba, mask=rgba.getchannel("A"))
        return base
    # CMYK (YCCK is turned into CMYK by libjpeg already), L, 1, P, YCbCr, LAB, HSV.
    return img.convert("RGB")


class ImageTooComplex(Exception):
    """This image used up its CPU budget."""


class _Budget:
    """The CPU time one image may still use, on the clock of the thread doing its work."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.restart()

    def restart(self) -> None:
        """Count from now, on the calling thread's clock (also when the image moves to another thread)."""
        self.deadline = time.thread_time() + self.seconds if self.seconds > 0 else math.inf

    def check(self, stage: str) -> None:
        if time.thread_time() > self.deadline:
            raise ImageTooComplex(f"over --image-cpu-budget {self.seconds:g}s of CPU while {stage}")


class _BudgetedReader(io.BytesIO):
    """The image bytes; every read checks the budget, so a Pillow decode (fed 64 KiB at a time)
    stops soon after the budget is spent instead of running to the end."""

    def __init__(self, data: bytes, budget: _Budget) -> None:
        super().__init__(data)
        self.budget = budget

    def read(self, size: int | None = -1, /) -> bytes:
        self.budget.check("decoding")
        return super().read(size)


@dataclass
class _Opened:
    img: Image.Image
    format: str
    width: int  # oriented (as displayed) size
    height: int
    orientation: int
    data: bytes = b""
    budget: _Budget | None = None


def process_image(data: bytes, opts: ImageOptions, expected_hash: str | None = None) -> ImageOutcome:
    """Check, decode, orient, convert, resize and encode one image. Never raises on bad input.

    ``expected_hash`` (from ``--verify-hash``) is compared with the ``--hash`` of ``data`` first.
    """
    out = _timed(lambda: _process(data, opts, expected_hash, 0))
    assert isinstance(out, ImageOutcome)  # no pixel limit: every image is done here
    return out


@dataclass
class Pending:
    """An image that :func:`process_small_image` checked, hashed and opened (header only), but found too
    large to decode where it runs: :func:`finish_image` does the rest, on another thread."""

    opened: _Opened
    digest: str | None
    cpu_ms: float = 0.0


def process_small_image(
    data: bytes, opts: ImageOptions, expected_hash: str | None, max_pixels: int
) -> ImageOutcome | Pending:
    """:func:`process_image` for an image of at most ``max_pixels`` (by its header), cheap enough for the
    event loop whatever its bytes claim; a larger one comes back Pending, its header work kept."""
    return _timed(lambda: _process(data, opts, expected_hash, max_pixels))


def finish_image(data: bytes, opts: ImageOptions, pending: Pending) -> ImageOutcome:
    """The decode, resize and encode :func:`process_small_image` left ``pending`` (on a worker thread)."""
    if pending.opened.budget is not None:
        pending.opened.budget.restart()  # its CPU clock is this thread's now
    out = _timed(lambda: _finish(data, pending.opened, pending.digest, opts))
    assert isinstance(out, ImageOutcome)
    out.cpu_ms += pending.cpu_ms
    return out


def _timed(work: Callable[[], ImageOutcome | Pending]) -> ImageOutcome | Pending:
    # This thread's CPU: with imaging threads (and on the event loop) the process's clock would count
    # the other threads' work too.
    start = time.thread_time()
    out: ImageOutcome | Pending
    try:
        out = work()
    except MemoryError:
        raise  # the worker pool names it (--worker-max-memory); the worker itself is fine
    except ImageTooComplex as exc:
        out = ImageOutcome(reason=Reason.IMAGE_TOO_COMPLEX, detail=str(exc)[:200])
    except Exception as exc:
        # A codec bug on some hostile file must cost that row only: an exception escaping to the
        # pool would leave the row without a result and its tar never finished.
        out = ImageOutcome(reason=Reason.DECODE_ERROR, detail=f"{type(exc).__name__}: {exc}"[:200])
    out.cpu_ms = (time.thread_time() - start) * 1000
    return out


def _open(data: bytes, opts: ImageOptions) -> _Opened | ImageOutcome:
    allowed = opts.allowed
    budget = _Budget(opts.image_cpu_budget)
    try:
        img = Image.open(_BudgetedReader(data, budget), formats=sorted(allowed))
    except ImageTooComplex:
        raise
    except Exception as exc:
        return _not_allowed(data, f"{type(exc).__name__}: {exc}")
    fmt = _normalize_format(img.format or "")
    try:
        # Pillow's PNG getexif() decodes every pixel to look for an eXIf chunk after the image data:
        # a pixel bomb would be decoded before the size check. Only an eXIf before the data counts.
        has_exif = fmt != "PNG" or "exif" in img.info
        orientation = int(img.getexif().get(0x0112, 1)) if has_exif else 1
    except Exception:
        orientation = 1  # a broken EXIF block must not cost the image
    w, h = img.size
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return _Opened(img, fmt, w, h, orientation if orientation in _ORIENTATION else 1, data, budget)


def _not_allowed(data: bytes, detail: str) -> ImageOutcome:
    # Not openable as an allowed format: name the format if Pillow knows it (header parse only).
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and int.from_bytes(data[4:8], "little") + 8 > len(data):
        # Pillow's WebP plugin decodes at open, so a cut WebP fails there; its RIFF size says why.
        return ImageOutcome(reason=Reason.TRUNCATED_IMAGE, detail=f"WebP cut short: {detail}"[:200])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fmt = Image.open(io.BytesIO(data)).format
    except Exception:
        return ImageOutcome(reason=Reason.NOT_AN_IMAGE, detail=detail[:200])
    return ImageOutcome(reason=Reason.UNSUPPORTED_FORMAT, detail=f"format {fmt} not in --allowed-formats")


def _process(data: bytes, opts: ImageOptions, expected_hash: str | None, max_pixels: int) -> ImageOutcome | Pending:
    digest = hash_bytes(data, opts.hash)
    if expected_hash is not None and digest is not None and expected_hash.strip().lower() != digest:
        detail = f"{opts.hash} {digest} != {expected_hash}"[:200]
        return ImageOutcome(reason=Reason.HASH_MISMATCH, detail=detail, hash=digest)
    with warnings.catch_warnings():
        # Truncated/odd files warn through PIL; they are judged by whether they decode.
        warnings.simplefilter("ignore")
        opened = _open(data, opts)
    if isinstance(opened, ImageOutcome):
        opened.hash = digest
        return opened
    if max_pixels and opened.width * opened.height > max_pixels:
        return Pending(opened, digest)
    return _finish(data, opened, digest, opts)


def _finish(data: bytes, opened: _Opened, digest: str | None, opts: ImageOptions) -> ImageOutcome:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = _render_outcome(data, opened, opts)
    out.hash = digest
    return out


def _render_outcome(data: bytes, op: _Opened, opts: ImageOptions) -> ImageOutcome:
    def failed(reason: Reason, detail: str) -> ImageOutcome:
        return ImageOutcome(
            reason=reason,
            detail=detail[:200],
            original_width=op.width,
            original_height=op.height,
            source_format=op.format,
        )

    refused = check_header(op.width, op.height, opts)
    if refused is not None:
        return failed(*refused)
    if op.format == "JPEG":
        costly = jpeg.too_complex(data, opts.image_cpu_budget)
        if costly is not None:
            return failed(Reason.IMAGE_TOO_COMPLEX, costly)
    try:
        if _can_keep_bytes(op, opts):
            _load_checked(op)  # the kept bytes must decode: never store a broken file
            img, encoded = op.img, data
        else:
            img = _render(op, opts)
            encoded = b""
    except ImageTooComplex as exc:
        return failed(Reason.IMAGE_TOO_COMPLEX, str(exc))
    except jpeg.JpegDamaged as exc:
        return failed(Reason.TRUNCATED_IMAGE if exc.truncated else Reason.DECODE_ERROR, f"JPEG: {exc}")
    except Image.DecompressionBombError as exc:
        return failed(Reason.DECOMPRESSION_BOMB, str(exc))
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        truncated = isinstance(exc, EOFError) or "truncated" in str(exc)
        return failed(Reason.TRUNCATED_IMAGE if truncated else Reason.DECODE_ERROR, f"{type(exc).__name__}: {exc}")
    if not encoded:
        try:
            encoded = _encode(img, opts)
        except (OSError, ValueError) as exc:
            return failed(Reason.ENCODE_ERROR, f"{type(exc).__name__}: {exc}")
    return ImageOutcome(
        data=encoded,
        ext=opts.encode_format,
        width=img.width,
        height=img.height,
        original_width=op.width,
        original_height=op.height,
        source_format=op.format,
    )


def _strict_jpeg(op: _Opened) -> bool:
    return op.format == "JPEG" and op.img.mode in ("RGB", "L", "CMYK") and bool(op.data)


def _load_checked(op: _Opened) -> None:
    if _strict_jpeg(op):
        jpeg.decode(op.data, op.img.mode, (1, 1))  # 1/8 scale: the whole entropy stream, few pixels
    else:
        op.img.load()


def _draft_scale(size: tuple[int, int], wanted: tuple[int, int]) -> int:
    """The 1/2^k DCT scale Pillow's ``draft`` picks for ``wanted`` (same rule, so both paths agree)."""
    ratio = min(size[0] // max(1, wanted[0]), size[1] // max(1, wanted[1]))
    return next((s for s in (8, 4, 2) if ratio >= s), 1)


def _can_keep_bytes(op: _Opened, opts: ImageOptions) -> bool:
    return (
        opts.skip_reencode
        and op.format == _PIL_FORMAT[opts.encode_format]
        and op.orientation == 1
        and op.img.mode in ("RGB", "L")
        and getattr(op.img, "n_frames", 1) == 1
        and output_size(op.width, op.height, opts) == (op.width, op.height)
    )


def render(data: bytes, opts: ImageOptions) -> Image.Image:
    """The final RGB image before encoding (benchmarks compare its pixels). Raises on bad input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opened = _open(data, opts)
    if isinstance(opened, ImageOutcome):
        raise ValueError(f"{opened.reason}: {opened.detail}")
    return _render(opened, opts)


def _render(op: _Opened, opts: ImageOptions) -> Image.Image:
    img = op.img
    final = target_size(op.width, op.height, opts)
    swapped = op.orientation in (5, 6, 7, 8)
    stored = (final[1], final[0]) if swapped else final  # size in the file's (unrotated) orientation
    wanted = (math.ceil(stored[0] * DRAFT_MARGIN), math.ceil(stored[1] * DRAFT_MARGIN))
    shrink = stored[0] < img.width or stored[1] < img.height
    if _strict_jpeg(op):
        # DCT-scaled decoding at the smallest 1/2^k scale still >= the size asked, strictly.
        img = jpeg.decode(op.data, img.mode, img.size, _draft_scale(img.size, wanted) if shrink else 1)
    elif op.format == "JPEG" and shrink:
        img.draft("RGB", wanted)
    if op.budget is not None:
        img.load()
        op.budget.check("decoding")
    if img.mode not in ("L", "RGBX"):
        # Greyscale stays one channel through the resize (a third of the work), RGBX (a strict JPEG
        # decode) is resized as it is; the rest go to RGB first (palettes cannot be Lanczos-resized,
        # alpha is composited before it is averaged).
        img = _to_rgb(img, opts.background)
    if img.size != stored:
        shrink = stored[0] * stored[1] < img.width * img.height
        name = opts.downscale_interpolation if shrink else opts.upscale_interpolation
        img = img.resize(stored, INTERPOLATIONS[name], reducing_gap=REDUCING_GAP)
        if op.budget is not None:
            op.budget.check("resizing")
    if op.orientation in _ORIENTATION:
        # Rotating the small result is cheaper than rotating the decode; the tag is not re-written.
        img = img.transpose(_ORIENTATION[op.orientation])
    img = _to_rgb(img, opts.background)
    return _crop_or_pad(img, opts)


def _crop_or_pad(img: Image.Image, opts: ImageOptions) -> Image.Image:
    size = opts.image_size
    w, h = img.size
    if opts.resize_mode == "center_crop" and (w > size or h > size):
        cw, ch = min(w, size), min(h, size)
        left, top = (w - cw) // 2, (h - ch) // 2
        img = img.crop((left, top, left + cw, top + ch))
    elif opts.resize_mode == "border" and (w, h) != (size, size):
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
