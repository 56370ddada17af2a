"""Hostile image servers, end to end through ``python -m fetcher``: scan bombs, pixel bombs, truncated
images and header lies each end as their own named reason, and never cost the other rows."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from fetcher.farm import Farm
from fetcher.farm.bombs import header_lie, patch_sof, pixel_bomb, scan_bomb
from fetcher.farm.images import make_image
from fetcher.imaging import ImageOptions, process_image
from fetcher.jpeg import walk_scans
from fetcher.records import Reason
from tests.conftest import results_table, run_fetcher, write_urls

CASES = {
    "/bomb/scans/2048x2048-2000.jpg": "image_too_complex",
    "/bomb/pixels/20000x20000.png": "decompression_bomb",
    "/bomb/pixels/30000x30000.jpg": "decompression_bomb",
    "/bomb/pixels/65000x65000.gif": "decompression_bomb",
    "/bomb/lie/4000x3000.jpg": "decode_error",
    "/bomb/corrupt.jpg": "decode_error",
    "/bomb/truncated.jpg": "truncated_image",
    "/bomb/truncated.png": "truncated_image",
    "/bomb/truncated.gif": "truncated_image",
    "/bomb/truncated.webp": "truncated_image",
    "/img/small.jpg": None,
}


def _run(farm: Farm, tmp_path: Path, paths: list[str], *flags: str) -> tuple[dict[str, dict[str, object]], list[str]]:
    tag = uuid.uuid4().hex[:8]
    urls = [farm.url(f"{p}{'&' if '?' in p else '?'}t={tag}") for p in paths]
    inp = write_urls(tmp_path / "urls.parquet", urls)
    out = tmp_path / "out"
    run_fetcher("--input", str(inp), "--output", str(out), "--allow-private-networks", *flags)
    return {r["url"]: r for r in results_table(out).to_pylist()}, urls


def test_each_hostile_image_ends_in_its_named_reason(farm: Farm, tmp_path: Path) -> None:
    rows, urls = _run(farm, tmp_path, list(CASES), "--processes", "1")
    got = {path: rows[url]["error_message"] for path, url in zip(CASES, urls, strict=True)}
    assert got == CASES, {p: rows[u]["error_detail"] for p, u in zip(CASES, urls, strict=True)}
    for path, url in zip(CASES, urls, strict=True):
        if CASES[path] is not None:
            assert rows[url]["status"] == "failed_to_resize", rows[url]


def test_scan_bombs_do_not_stall_the_pool(farm: Farm, tmp_path: Path) -> None:
    # Each bomb costs ~5 s of CPU to decode (2000 scans over 2048x2048): refused before decoding,
    # so 20 normal rows on 2 workers finish in seconds and all succeed.
    paths = [f"/bomb/scans/2048x2048-2000.jpg?i={i}" for i in range(4)]
    paths += [f"/gen/{400 + i}x300.jpg?seed={i}" for i in range(20)]
    start = time.monotonic()
    rows, urls = _run(farm, tmp_path, paths, "--processes", "2", "--shard-watchdog", "30")
    took = time.monotonic() - start
    reasons = [rows[u]["error_message"] for u in urls]
    assert reasons[:4] == ["image_too_complex"] * 4, [rows[u]["error_detail"] for u in urls[:4]]
    assert reasons[4:] == [None] * 20
    assert "over 500 scans" in rows[urls[0]]["error_detail"]
    assert took < 60, took  # ~20 s of bomb CPU never ran (the run itself takes a few seconds)


def test_cpu_budget_flag_refuses_costly_scans_below_the_scan_limit(farm: Farm, tmp_path: Path) -> None:
    path = "/bomb/scans/4096x4096-300.jpg"  # 300 scans x 262144 luma blocks: seconds of CPU
    rows, urls = _run(farm, tmp_path, [path], "--processes", "1", "--image-cpu-budget", "1")
    row = rows[urls[0]]
    assert row["error_message"] == "image_too_complex", row
    assert "--image-cpu-budget 1" in row["error_detail"] and "300 scans" in row["error_detail"]


def test_scan_walk_counts_scans_and_blocks() -> None:
    rep = walk_scans(scan_bomb(256, 128, 50), max_scans=10**6)
    assert rep.scans == 50 and rep.progressive and rep.complete
    # 256x128 greyscale-looking RGB at 4:2:0: 512 luma blocks; the repeats are luma-only scans
    assert rep.blocks[1] == 512 and rep.block_scans >= 40 * 512


def test_pillow_decodes_stop_at_the_cpu_budget() -> None:
    bomb = pixel_bomb(6000, 6000, "png")  # ~36 M pixels: tenths of a second to decode
    out = process_image(bomb, ImageOptions(image_cpu_budget=0.001, max_image_pixels=10**9))
    assert out.reason is Reason.IMAGE_TOO_COMPLEX and "--image-cpu-budget" in out.detail, out
    assert process_image(bomb, ImageOptions(max_image_pixels=10**9)).ok  # the default budget lets it through


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_header_lie_is_not_a_padded_success(mode: str) -> None:
    lie = patch_sof(make_image(320, 240, "jpeg", mode=mode), 1280, 960)
    out = process_image(lie, ImageOptions())
    assert out.reason is Reason.DECODE_ERROR and "premature end of data segment" in out.detail, out


def test_harmless_libjpeg_warnings_keep_the_image() -> None:
    # A few padding bytes before EOI (some encoders write them) warn in libjpeg but lose no pixel;
    # the same junk in bulk means the decoder lost its place: damaged.
    good = header_lie(320, 240)  # claims exactly what it holds: a valid JPEG
    assert process_image(good, ImageOptions()).ok
    padded = good[:-2] + b"\x00" * 8 + b"\xff\xd9"
    assert process_image(padded, ImageOptions()).ok
    junk = good[:-2] + b"\x00" * 4000 + b"\xff\xd9"
    assert process_image(junk, ImageOptions()).reason is Reason.DECODE_ERROR
