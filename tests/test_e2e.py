"""End-to-end: real HTTP to the loopback farm, real tars on disk, read back with real readers."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from fetcher.farm import Farm
from tests.conftest import results_table, run_fetcher, write_urls


def mixed_urls(farm: Farm, n: int) -> tuple[list[str], dict[int, str]]:
    """Good images over several hosts plus one fault every 7 rows; returns urls and expected reasons."""
    faults = {
        0: ("/status/404", "http_404"),
        1: ("/notimage", "not_an_image"),
        2: ("/status/403", "http_403"),
        3: ("/truncated/medium.jpg", "truncated_body"),
    }
    urls: list[str] = []
    expected: dict[int, str] = {}
    for i in range(n):
        host = i % 8
        if i % 7 == 6:
            path, reason = faults[(i // 7) % len(faults)]
            expected[i] = reason
        else:
            path = [f"/gen/{640 + i % 5 * 100}x{480 + i % 3 * 50}.jpg?seed={i}", "/img/alpha.png", "/img/exif6.jpg"][
                i % 3
            ]
        urls.append(farm.url(path, host))
    return urls, expected


@pytest.fixture(scope="module")
def mixed_run(farm: Farm, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[int, str], str]:
    tmp = tmp_path_factory.mktemp("mixed")
    urls, expected = mixed_urls(farm, 120)
    inp = write_urls(tmp / "in" / "urls.parquet", urls, [f"a photo number {i}" for i in range(len(urls))])
    out = tmp / "out"
    proc = run_fetcher(
        "--input", str(inp), "--output", str(out), "--samples-per-tar", "50",
        "--allow-private-networks", "--retries", "0",
    )  # fmt: skip
    return out, urls, expected, proc.stderr


def test_every_row_accounted_once_with_named_reasons(mixed_run: tuple[Path, list[str], dict[int, str], str]) -> None:
    out, urls, expected, _ = mixed_run
    table = results_table(out).to_pylist()
    assert len(table) == len(urls)
    keys = [r["key"] for r in table]
    assert len(set(keys)) == len(keys)
    by_url_index = {int(r["key"][:5]) * 50 + int(r["key"][5:]): r for r in table}
    assert sorted(by_url_index) == list(range(len(urls)))
    for i, rec in by_url_index.items():
        assert rec["url"] == urls[i]
        if i in expected:
            assert rec["status"] != "success", rec
            assert rec["error_message"] == expected[i], rec
        else:
            assert rec["status"] == "success", rec
            assert rec["error_message"] is None
    assert sorted(p.name for p in out.glob("*_stats.json")) == [
        "00000_stats.json",
        "00001_stats.json",
        "00002_stats.json",
    ]
    assert not list(out.glob("*.tmp"))


def test_tars_read_by_tarfile_and_webdataset(mixed_run: tuple[Path, list[str], dict[int, str], str]) -> None:
    out, urls, expected, _ = mixed_run
    n_ok = len(urls) - len(expected)
    members: Counter[str] = Counter()
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tf:
            for m in tf.getmembers():
                members[m.name.rsplit(".", 1)[1]] += 1
                assert "/" not in m.name and m.name.count(".") == 1
    assert members == {"jpg": n_ok, "txt": n_ok, "json": n_ok}

    dataset = wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False).decode("pil")
    samples = list(dataset)
    assert len(samples) == n_ok
    for s in samples:
        img = s["jpg"]
        meta = s["json"]
        assert min(img.size) == 256, (img.size, meta)  # keep_ratio: short side = --image-size
        assert (meta["width"], meta["height"]) == img.size
        assert s["txt"].startswith("a photo number ")
        assert meta["key"] == s["__key__"]


def test_exif_rotated_and_alpha_images_come_out_right(mixed_run: tuple[Path, list[str], dict[int, str], str]) -> None:
    out, _, _, _ = mixed_run
    rows = {r["key"]: r for r in results_table(out).to_pylist()}
    checked: Counter[str] = Counter()
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tf:
            for m in tf.getmembers():
                if not m.name.endswith(".jpg"):
                    continue
                key = m.name[:-4]
                url = rows[key]["url"]
                f = tf.extractfile(m)
                assert f is not None
                img = Image.open(io.BytesIO(f.read()))
                assert img.mode == "RGB"
                if url.endswith("/img/exif6.jpg"):
                    # stored 600x400 with orientation 6 -> displayed 400x600 -> short side 256
                    assert img.size == (256, 384)
                    checked["exif"] += 1
                if url.endswith("/img/alpha.png"):
                    assert img.size == (384, 256)
                    assert img.getpixel((2, 2)) >= (240, 240, 240)  # transparent corner composited on white
                    checked["alpha"] += 1
    assert checked["exif"] > 10 and checked["alpha"] > 10, checked


def test_summary_printed(mixed_run: tuple[Path, list[str], dict[int, str], str]) -> None:
    _, urls, expected, stderr = mixed_run
    assert f"rows        {len(urls)} of {len(urls)}" in stderr
    assert f"ok          {len(urls) - len(expected)}" in stderr
    assert "images/s" in stderr
    assert "http_404" in stderr


def test_rerun_is_a_no_op(mixed_run: tuple[Path, list[str], dict[int, str], str], tmp_path: Path) -> None:
    out, _, _, _ = mixed_run
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()}
    inp = next(out.parent.glob("in/*.parquet"))
    proc = run_fetcher("--input", str(inp), "--output", str(out), "--samples-per-tar", "50", "--allow-private-networks")
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()}
    assert after == before
    assert "3 already complete" in proc.stderr


def test_stats_json_counts(mixed_run: tuple[Path, list[str], dict[int, str], str]) -> None:
    out, urls, expected, _ = mixed_run
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    assert sum(s["count"] for s in stats) == len(urls)
    assert sum(s["successes"] for s in stats) == len(urls) - len(expected)
    assert [s["count"] for s in stats] == [50, 50, 20]


def test_shards_are_disjoint_and_cover(farm: Farm, tmp_path: Path) -> None:
    urls = [farm.url(f"/gen/320x240.jpg?seed={i}", i % 8) for i in range(70)]
    inp = write_urls(tmp_path / "urls.parquet", urls)
    seen: list[str] = []
    tars: list[str] = []
    for i in range(3):
        out = tmp_path / f"out{i}"
        run_fetcher("--input", str(inp), "--output", str(out), "--samples-per-tar", "10", "--shard", f"{i}/3",
                    "--allow-private-networks")  # fmt: skip
        tars += [p.name for p in out.glob("*.tar")]
        seen += results_table(out).column("url").to_pylist()
        assert all(int(p.name[:5]) % 3 == i for p in out.glob("*.tar"))
    assert sorted(seen) == sorted(urls) and len(seen) == len(set(seen))
    assert len(tars) == len(set(tars)) == 7


def test_private_networks_refused_by_default(farm: Farm, tmp_path: Path) -> None:
    urls = [farm.url("/img/small.jpg?probe=private", 0), "ftp://example.invalid/a.jpg", "not a url", None]
    inp = write_urls(tmp_path / "urls.parquet", urls)
    out = tmp_path / "out"
    run_fetcher("--input", str(inp), "--output", str(out))
    rows = results_table(out).to_pylist()
    reasons = [r["error_message"] for r in rows]
    assert reasons == ["blocked_address", "unsupported_scheme", "unsupported_scheme", "missing_url"]
    assert not [a for a in farm.state.arrivals if a.path.endswith("probe=private")], "a refused URL was requested"
