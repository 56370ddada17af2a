"""Imaging: every resize mode, filter, hash and odd format, with exact expected sizes and pixels."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import xxhash
from PIL import Image, ImageOps

from fetcher.config import load_config
from fetcher.farm import Farm
from fetcher.farm.images import catalogue_image, make_image
from fetcher.imaging import ImageOptions, output_size, process_image, render
from fetcher.options import ConfigError
from fetcher.records import ImageOutcome, Reason
from tests.conftest import results_table, run_fetcher, write_urls


def run(data: bytes, **kw: object) -> ImageOutcome:
    if kw.get("encode_format") == "png":
        kw.setdefault("encode_quality", 1)  # a PNG compress level
    return process_image(data, ImageOptions(**kw))  # type: ignore[arg-type]


def decoded(out: ImageOutcome) -> Image.Image:
    assert out.ok, out
    assert out.data is not None
    img = Image.open(io.BytesIO(out.data))
    assert img.size == (out.width, out.height)
    return img


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b.convert(a.mode), np.float64)).mean())


# -- resize modes ----------------------------------------------------------------------------------
# (mode, only_if_bigger, source, expected) at --image-size 256.
MODE_CASES = [
    ("no", False, (1000, 500), (1000, 500)),
    ("no", True, (100, 50), (100, 50)),
    ("keep_ratio", False, (1000, 500), (512, 256)),
    ("keep_ratio", False, (500, 1000), (256, 512)),
    ("keep_ratio", False, (200, 100), (512, 256)),  # upscaled
    ("keep_ratio", True, (200, 100), (200, 100)),
    ("keep_ratio", True, (1000, 500), (512, 256)),
    ("keep_ratio", False, (333, 1000), (256, 769)),  # 1000*256/333 = 768.8
    ("keep_ratio_largest", False, (1000, 500), (256, 128)),
    ("keep_ratio_largest", False, (500, 1000), (128, 256)),
    ("keep_ratio_largest", False, (100, 50), (256, 128)),
    ("keep_ratio_largest", True, (100, 50), (100, 50)),
    ("center_crop", False, (1000, 500), (256, 256)),
    ("center_crop", False, (100, 300), (256, 256)),
    ("center_crop", True, (100, 300), (100, 256)),  # never enlarged; long side still cropped
    ("center_crop", True, (200, 100), (200, 100)),
    ("center_crop", True, (256, 400), (256, 256)),
    ("border", False, (1000, 500), (256, 256)),
    ("border", False, (100, 50), (256, 256)),
    ("border", True, (100, 50), (256, 256)),  # padded, not enlarged
    ("multiple_of_64", False, (1000, 500), (512, 256)),
    ("multiple_of_64", False, (1000, 700), (384, 256)),  # 365.7 -> 384
    ("multiple_of_64", False, (700, 1000), (256, 384)),
    ("multiple_of_64", False, (1920, 1080), (448, 256)),  # 455.1 -> 448
    ("multiple_of_64", False, (100, 30), (832, 256)),
    ("multiple_of_64", True, (100, 30), (64, 64)),  # rounded down, 64 at least
    ("multiple_of_64", True, (300, 200), (256, 192)),  # 300 would round up to 320: down to 256
]


@pytest.mark.parametrize(("mode", "only_bigger", "src", "expected"), MODE_CASES)
def test_resize_mode_sizes(mode: str, only_bigger: bool, src: tuple[int, int], expected: tuple[int, int]) -> None:
    opts = ImageOptions(image_size=256, resize_mode=mode, resize_only_if_bigger=only_bigger)
    assert output_size(*src, opts) == expected
    out = process_image(make_image(*src, "jpeg"), opts)
    assert decoded(out).size == expected
    assert (out.original_width, out.original_height) == src


def recipe_size(w: int, h: int, resolution: int) -> tuple[int, int]:
    """photo-concept-bucket's resize_for_condition_image, size part, verbatim."""
    k = float(resolution) / min(h, w)
    hf, wf = h * k, w * k
    return int(round(wf / 64.0)) * 64, int(round(hf / 64.0)) * 64  # noqa: RUF046 - verbatim


@pytest.mark.parametrize("src", [(5472, 3648), (3648, 5472), (4000, 3000), (6000, 4000), (1234, 987), (2048, 1365)])
@pytest.mark.parametrize("size", [512, 768, 1024])
def test_multiple_of_64_matches_photo_concept_bucket_recipe(src: tuple[int, int], size: int) -> None:
    assert output_size(*src, ImageOptions(image_size=size, resize_mode="multiple_of_64")) == recipe_size(*src, size)


def test_border_pads_with_background_and_centres() -> None:
    out = run(make_image(400, 200, "png"), image_size=100, resize_mode="border", background="#ff0000")
    img = decoded(out).convert("RGB")
    assert img.size == (100, 100)
    # image is 100x50 at rows 25..74; rows 0..24 and 75..99 are the border
    assert img.getpixel((50, 5)) == img.getpixel((50, 94))
    r, g, b = img.getpixel((50, 5))  # type: ignore[misc]
    assert r > 240 and g < 15 and b < 15


def test_center_crop_takes_the_middle() -> None:
    # left half black, right half white, 2:1 -> the centre square is half black, half white
    src = Image.new("RGB", (400, 200), "black")
    src.paste((255, 255, 255), (200, 0, 400, 200))
    buf = io.BytesIO()
    src.save(buf, "PNG")
    img = decoded(run(buf.getvalue(), image_size=100, resize_mode="center_crop", encode_format="png"))
    assert img.size == (100, 100)
    assert img.getpixel((10, 50)) == (0, 0, 0) and img.getpixel((90, 50)) == (255, 255, 255)


@pytest.mark.parametrize(("fmt", "src"), [("jpeg", (2400, 1600)), ("jpeg", (1200, 800)), ("png", (1800, 1200))])
def test_fast_path_quality_close_to_full_float_lanczos(fmt: str, src: tuple[int, int]) -> None:
    # jpeg: DCT-scaled decode + Lanczos; png: box reduce (reducing_gap) + Lanczos
    data = make_image(*src, fmt, texture="photo", quality=90)
    opts = ImageOptions(image_size=256)
    got = np.asarray(render(data, opts), np.float64)
    full = Image.open(io.BytesIO(data))
    chans = [c.convert("F").resize((384, 256), Image.Resampling.LANCZOS) for c in full.split()]
    ref = np.clip(np.rint(np.stack([np.asarray(c) for c in chans], -1)), 0, 255)
    psnr = 10 * np.log10(255**2 / np.mean((got - ref) ** 2))
    assert psnr >= 40, psnr


# -- filters, bombs, formats -------------------------------------------------------------------------
def truncated_jpeg(w: int, h: int) -> bytes:
    """A JPEG whose header is complete but whose pixels are cut off: decoding it would fail."""
    data = make_image(w, h, "jpeg")
    return data[: data.index(b"\xff\xda") + 40]


def png_header(w: int, h: int) -> bytes:
    """A PNG that declares ``w`` x ``h`` but carries almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_truncated_pixels_are_a_named_failure() -> None:
    assert run(truncated_jpeg(400, 300)).reason is Reason.TRUNCATED_IMAGE


@pytest.mark.parametrize(
    ("src", "kw", "reason"),
    [
        ((400, 300), {"min_image_size": 301}, Reason.IMAGE_TOO_SMALL),
        ((300, 400), {"min_image_size": 301}, Reason.IMAGE_TOO_SMALL),
        ((400, 300), {"max_image_area": 400 * 300 - 1}, Reason.IMAGE_TOO_LARGE),
        ((900, 300), {"max_aspect_ratio": 2.9}, Reason.ASPECT_RATIO),
        ((300, 900), {"max_aspect_ratio": 2.9}, Reason.ASPECT_RATIO),
        ((400, 300), {"min_aspect_ratio": 1.5}, Reason.ASPECT_RATIO),
        ((400, 300), {"max_image_pixels": 400 * 300 - 1}, Reason.DECOMPRESSION_BOMB),
    ],
)
def test_header_filters_refuse_before_decoding(src: tuple[int, int], kw: dict[str, object], reason: Reason) -> None:
    # The pixels are truncated: a named filter reason (not decode_error) proves no pixel was decoded.
    out = run(truncated_jpeg(*src), **kw)
    assert out.reason is reason, out
    assert (out.original_width, out.original_height) == src


@pytest.mark.parametrize(
    ("src", "kw"),
    [
        ((400, 300), {"min_image_size": 300}),
        ((400, 300), {"max_image_area": 400 * 300}),
        ((900, 300), {"max_aspect_ratio": 3.0}),
        ((450, 300), {"min_aspect_ratio": 1.5, "max_aspect_ratio": 1.5}),
        ((400, 300), {"max_image_pixels": 400 * 300}),
    ],
)
def test_filters_pass_at_their_limits(src: tuple[int, int], kw: dict[str, object]) -> None:
    assert run(make_image(*src, "jpeg"), **kw).ok


def test_bomb_refused_from_header_without_decoding() -> None:
    out = run(png_header(50_000, 50_000))  # 2.5 G pixels declared, 64 bytes of data
    assert out.reason is Reason.DECOMPRESSION_BOMB
    assert out.original_width == 50_000
    # Only a header exists: any decode attempt would end as decode_error, and a real one would need
    # ~7.5 GB. A bomb verdict with the declared size means the header alone decided.
    assert out.data is None and out.detail


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "gif", "bmp", "tiff"])
def test_default_allowed_formats_decode(fmt: str) -> None:
    out = run(make_image(120, 80, fmt), image_size=40)
    assert decoded(out).size == (60, 40)
    assert out.source_format == fmt.upper()


@pytest.mark.parametrize(("fmt", "kw"), [("ppm", {}), ("ico", {}), ("png", {"allowed_formats": "jpg,webp"})])
def test_other_formats_are_unsupported(fmt: str, kw: dict[str, object]) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, fmt.upper())
    out = run(buf.getvalue(), **kw)
    assert out.reason is Reason.UNSUPPORTED_FORMAT, out
    assert fmt.upper() in out.detail


def test_allowed_formats_accepts_aliases() -> None:
    assert run(make_image(64, 64, "jpeg"), allowed_formats="jpg").ok
    assert run(make_image(64, 64, "tiff"), allowed_formats="tif").ok
    with pytest.raises(ConfigError, match="allowed-formats"):
        ImageOptions(allowed_formats="JPEG,NOPE").validate()


def test_not_an_image() -> None:
    assert run(b"<html>not an image</html>").reason is Reason.NOT_AN_IMAGE


# -- odd formats come out as correct RGB ---------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_and_dropped(orientation: int) -> None:
    data = make_image(300, 200, "jpeg", exif_orientation=orientation, quality=95)
    out = run(data, image_size=100, encode_format="png")
    img = decoded(out)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert expected is not None
    assert img.size == ((100, 150) if orientation >= 5 else (150, 100))
    assert (out.original_width, out.original_height) == expected.size
    assert 0x0112 not in img.getexif()
    assert mean_diff(img, expected.resize(img.size, Image.Resampling.LANCZOS)) < 3


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_with_dct_scaled_decode(orientation: int) -> None:
    # Large enough that draft() decodes at 1/8: the draft size must be asked in stored orientation.
    data = make_image(1600, 1200, "jpeg", exif_orientation=orientation, quality=95)
    img = decoded(run(data, image_size=100, encode_format="png"))
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert expected is not None
    assert img.size == ((100, 133) if orientation >= 5 else (133, 100))
    assert mean_diff(img, expected.resize(img.size, Image.Resampling.LANCZOS)) < 3


@pytest.mark.parametrize("mode", ["CMYK", "YCCK"])
def test_cmyk_and_ycck_jpeg(mode: str) -> None:
    data = make_image(200, 100, "jpeg", mode=mode, quality=95)
    img = decoded(run(data, resize_mode="no", encode_format="png"))
    ref = make_image(200, 100, "png")  # the same picture, never in CMYK
    assert img.mode == "RGB"
    assert mean_diff(img, Image.open(io.BytesIO(ref)).convert("CMYK").convert("RGB")) < 4


@pytest.mark.parametrize("mode", ["I;16", "RGB;16"])
def test_16_bit_png(mode: str) -> None:
    img = decoded(run(make_image(200, 100, "png", mode=mode), resize_mode="no", encode_format="png"))
    ref = Image.open(io.BytesIO(make_image(200, 100, "png", mode="L" if mode == "I;16" else "RGB")))
    assert img.mode == "RGB"
    assert mean_diff(img, ref) < 1


def test_rgba_composited_on_background() -> None:
    # make_image's alpha is a top-to-bottom gradient: row 0 is fully transparent
    for colour, rgb in (("#ffffff", (255, 255, 255)), ("#0000ff", (0, 0, 255))):
        img = decoded(
            run(make_image(300, 200, "png", mode="RGBA"), resize_mode="no", encode_format="png", background=colour)
        )
        assert img.mode == "RGB" and img.getpixel((150, 0)) == rgb


def test_palette_with_transparency() -> None:
    plain = Image.open(io.BytesIO(make_image(100, 100, "png", mode="P")))
    clear = plain.getpixel((0, 0))
    data = make_image(100, 100, "png", mode="P", transparent_index=clear)  # type: ignore[arg-type]
    idx = np.asarray(Image.open(io.BytesIO(data)))
    img = decoded(run(data, resize_mode="no", encode_format="png", background="#00ff00"))
    px = np.asarray(img)
    assert (px[idx == clear] == (0, 255, 0)).all()
    assert (px[idx != clear] != (0, 255, 0)).any(axis=-1).all()
    assert 0 < (idx == clear).sum() < idx.size


@pytest.mark.parametrize(("fmt", "mode"), [("jpeg", "L"), ("png", "LA"), ("png", "1"), ("bmp", "P")])
def test_grey_and_palette_become_rgb(fmt: str, mode: str) -> None:
    data = make_image(200, 100, fmt, mode=mode)
    img = decoded(run(data, image_size=50, encode_format="png"))
    assert img.mode == "RGB" and img.size == (100, 50)
    if mode in ("L", "1"):
        px = np.asarray(img)
        assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_animated_first_frame(fmt: str) -> None:
    data = make_image(200, 160, fmt, mode="P" if fmt == "gif" else "RGB", frames=3)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    img = decoded(run(data, resize_mode="no", encode_format="png"))
    first = Image.open(io.BytesIO(data)).convert("RGB")
    second = Image.open(io.BytesIO(data))
    second.seek(1)
    assert mean_diff(img, first) < 1 < mean_diff(img, second.convert("RGB"))


# -- skip-reencode, hashes ------------------------------------------------------------------------------
def test_skip_reencode_keeps_original_bytes() -> None:
    data = make_image(300, 200, "jpeg")
    out = run(data, resize_mode="no", skip_reencode=True)
    assert out.data == data and (out.width, out.height) == (300, 200)
    out = run(data, image_size=200, resize_mode="keep_ratio", resize_only_if_bigger=True, skip_reencode=True)
    assert out.data == data
    # each of these needs new pixels, so the bytes change
    assert run(data, image_size=100, skip_reencode=True).data != data  # resized
    assert run(data, resize_mode="no", encode_format="webp", skip_reencode=True).ext == "webp"
    rotated = make_image(300, 200, "jpeg", exif_orientation=6)
    assert decoded(run(rotated, resize_mode="no", skip_reencode=True)).size == (200, 300)
    png = make_image(300, 200, "png", mode="RGBA")
    assert run(png, resize_mode="no", encode_format="png", skip_reencode=True).data != png  # alpha composited
    assert run(truncated_jpeg(300, 200), resize_mode="no", skip_reencode=True).reason is Reason.TRUNCATED_IMAGE


@pytest.mark.parametrize(
    ("algo", "fn"),
    [
        ("sha256", lambda d: hashlib.sha256(d).hexdigest()),
        ("md5", lambda d: hashlib.md5(d).hexdigest()),
        ("xxh3", lambda d: xxhash.xxh3_64_hexdigest(d)),
        ("none", lambda d: None),
    ],
)
def test_hash_of_original_bytes(algo: str, fn: object) -> None:
    data = make_image(120, 90, "png")
    out = run(data, hash=algo, image_size=32)
    assert out.ok and out.hash == fn(data)  # type: ignore[operator]


def test_verify_hash() -> None:
    data = make_image(120, 90, "jpeg")
    opts = ImageOptions(hash="md5")
    good = hashlib.md5(data).hexdigest()
    assert process_image(data, opts, good).ok
    assert process_image(data, opts, good.upper()).ok
    assert process_image(data, opts, None).ok  # empty cell: nothing to verify
    bad = process_image(data, opts, "0" * 32)
    assert bad.reason is Reason.HASH_MISMATCH and bad.hash == good


def test_hash_flags_validated() -> None:
    base = ["--input", "x", "--output", "y"]
    with pytest.raises(ConfigError, match="--verify-hash"):
        load_config([*base, "--verify-hash", "md5", "--hash", "none"])
    assert load_config([*base, "--compute_hash", "md5"]).imaging.hash == "md5"


def test_verify_hash_end_to_end(farm: Farm, tmp_path: Path) -> None:
    names = ["small.jpg", "portrait.jpg", "alpha.png", "gray.jpg"]
    urls = [farm.url(f"/img/{n}", i) for i, n in enumerate(names)]
    expected = [hashlib.md5(catalogue_image(n)).hexdigest() for n in names]
    expected[1] = "f" * 32  # wrong
    expected[3] = None  # nothing to verify
    inp = write_urls(tmp_path / "urls.parquet", urls, expected_md5=expected)
    out = tmp_path / "out"
    run_fetcher(
        "--input", str(inp), "--output", str(out), "--allow-private-networks", "--retries", "0",
        "--hash", "md5", "--verify-hash", "expected_md5",
    )  # fmt: skip
    table = results_table(out)
    assert "md5" in table.column_names and "sha256" not in table.column_names
    rows = table.to_pylist()
    assert [r["error_message"] for r in rows] == [None, "hash_mismatch", None, None]
    assert [r["md5"] for r in rows] == [hashlib.md5(catalogue_image(n)).hexdigest() for n in names]
    missing = run_fetcher("--input", str(inp), "--output", str(tmp_path / "o2"), "--verify-hash", "nope", check=False)
    assert missing.returncode == 2 and "--verify-hash" in missing.stderr
