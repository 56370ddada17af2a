"""The tfrecord and dummy output formats, and the output-format registry (issue 15.4): tfrecords written
without TensorFlow are read back by an independent reader (the ``tfrecord`` package, its own protobuf
code) with every checksum verified; a dummy run downloads and resizes but leaves only results."""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import crc32c as crc32c_c
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from tfrecord.reader import tfrecord_loader

from fetcher.farm import Farm
from storage.formats import FORMATS
from storage.tfrecord import _crc32c_py, encode_example, frame, masked_crc
from tests.conftest import run_fetcher

N = 14
S = 6


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records_with_checked_crcs(path: Path) -> list[bytes]:
    """Every record's payload; each length and data CRC checked with the C crc32c library."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        (len_crc,) = struct.unpack_from("<I", data, pos + 8)
        assert len_crc == _mask(crc32c_c.crc32c(data[pos : pos + 8])), f"length CRC of record at {pos}"
        payload = data[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack_from("<I", data, pos + 12 + length)
        assert data_crc == _mask(crc32c_c.crc32c(payload)), f"data CRC of record at {pos}"
        out.append(payload)
        pos += 12 + length + 4
    assert pos == len(data)
    return out


def test_crc32c_and_example_encoding_match_independent_implementations(tmp_path: Path) -> None:
    # CRC-32C check value from the iSCSI spec, and the C library on bytes of every value
    assert _crc32c_py(b"123456789") == 0xE3069283
    blob = bytes(range(256)) * 37
    assert _crc32c_py(blob) == crc32c_c.crc32c(blob)
    assert masked_crc(blob) == _mask(crc32c_c.crc32c(blob))
    features = {
        "key": "000000001",
        "jpg": b"\xff\xd8binary\x00",
        "txt": "ünïcode caption",
        "width": 640,
        "neg": -3,
        "score": 0.25,
        "tags": ["a", "b"],
        "bbox": [0.5, 1.0],
        "ids": [1, 2, 300000],
        "nothing": None,
        "nested": {"a": 1},
    }
    path = tmp_path / "one.tfrecord"
    path.write_bytes(frame(encode_example(features)) * 2)
    assert len(records_with_checked_crcs(path)) == 2
    got = list(tfrecord_loader(str(path), None))
    assert len(got) == 2
    rec = got[0]
    assert bytes(rec["key"]) == b"000000001" and bytes(rec["jpg"]) == b"\xff\xd8binary\x00"
    assert bytes(rec["txt"]).decode() == "ünïcode caption"
    assert rec["width"].tolist() == [640] and rec["neg"].tolist() == [-3] and rec["ids"].tolist() == [1, 2, 300000]
    assert rec["score"].tolist() == [0.25] and rec["bbox"].tolist() == [0.5, 1.0]
    assert [bytes(t) for t in rec["tags"]] == [b"a", b"b"]
    assert json.loads(bytes(rec["nested"])) == {"a": 1} and "nothing" not in rec


def _urls(farm: Farm, tmp: Path) -> Path:
    rows = [
        {"url": farm.url("/status/404" if i % 5 == 2 else f"/gen/{200 + i * 8}x{150 + i * 4}.jpg?seed={i}", i % 4),
         "caption": f"caption {i}", "score": i / 10}
        for i in range(N)
    ]  # fmt: skip
    path = tmp / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _run(inp: Path, out: Path, fmt: str) -> str:
    proc = run_fetcher("--input", str(inp), "--output", str(out), "--output-format", fmt,
                       "--samples-per-tar", str(S), "--save-columns", "score", "--allow-private-networks",
                       "--retries", "0", "--metrics-address", "")  # fmt: skip
    return proc.stderr


def _results(out: Path) -> list[dict[str, Any]]:
    files = sorted(p for p in out.glob("*.parquet") if p.stem.isdigit())
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


def test_tfrecord_output_read_back_by_an_independent_reader(farm: Farm, tmp_path: Path) -> None:
    out = tmp_path / "tfr"
    _run(_urls(farm, tmp_path), out, "tfrecord")
    files = sorted(out.glob("*.tfrecord"))
    assert [f.name for f in files] == ["00000.tfrecord", "00001.tfrecord", "00002.tfrecord"]
    assert not list(out.glob("*.tar")) and not list(out.glob("*.tmp"))
    ok = {r["key"]: r for r in _results(out) if r["status"] == "success"}
    assert len(ok) == N - len(range(2, N, 5))
    seen = {}
    for f in files:
        assert len(records_with_checked_crcs(f)) == len(list(tfrecord_loader(str(f), None)))
        for rec in tfrecord_loader(str(f), None):
            key = bytes(rec["key"]).decode()
            image = Image.open(io.BytesIO(bytes(rec["jpg"])))
            image.load()
            assert image.size == (ok[key]["width"], ok[key]["height"])
            assert rec["width"].tolist() == [ok[key]["width"]]
            assert bytes(rec["txt"]).decode() == ok[key]["caption"]
            assert rec["score"].tolist() == pytest.approx([ok[key]["score"]])
            assert bytes(rec["url"]).decode() == ok[key]["url"]
            seen[key] = True
    assert sorted(seen) == sorted(ok)


def test_dummy_output_keeps_only_results(farm: Farm, tmp_path: Path) -> None:
    out = tmp_path / "dummy"
    inp = _urls(farm, tmp_path)
    err = _run(inp, out, "dummy")
    names = sorted(os.listdir(out))
    assert names == ["00000.parquet", "00000_stats.json", "00001.parquet", "00001_stats.json",
                     "00002.parquet", "00002_stats.json", "_fetcher_run.json"], names  # fmt: skip
    rows = _results(out)
    ok = [r for r in rows if r["status"] == "success"]
    assert len(rows) == N and len(ok) == N - len(range(2, N, 5))
    assert all(r["width"] and r["height"] and r["bytes_downloaded"] > 0 for r in ok)  # downloaded and resized
    assert f"ok          {len(ok)}" in err
    stats = json.loads((out / "00000_stats.json").read_text())
    assert stats["successes"] > 0 and stats["bytes_written"] == 0
    assert "3 already complete" in _run(inp, out, "dummy")  # a rerun finds every tar done
    assert sorted(os.listdir(out)) == names


def test_every_format_is_one_registry_entry() -> None:
    # what the callers ask instead of comparing names
    assert set(FORMATS) == {"webdataset", "files", "parquet", "tfrecord", "dummy"}
    assert [n for n, f in FORMATS.items() if not f.keeps_samples] == ["dummy"]
    assert [n for n, f in FORMATS.items() if f.image_folder] == ["files"]


def _samples(out: Path, fmt: str) -> dict[str, Any]:
    """What a user's reader sees in each format, by key (bytes compared exactly)."""
    from storage.formats import FORMATS
    from storage.layout import ShardFiles

    found: dict[str, Any] = {}
    for marker in sorted(out.glob("*_stats.json")):
        files = ShardFiles(str(out), int(marker.name[:5]))
        if fmt == "tfrecord":  # through the independent reader, not ours
            for rec in tfrecord_loader(files.tfrecord, None):
                found[bytes(rec["key"]).decode()] = (bytes(rec["jpg"]), bytes(rec["txt"]), rec["width"].tolist())
        else:
            found.update(FORMATS[fmt].read_samples(files))
    return found


@pytest.mark.parametrize("fmt", ["files", "parquet", "tfrecord", "dummy"])
def test_retry_failed_in_every_format(farm: Farm, tmp_path: Path, fmt: str) -> None:
    """15.10: --retry-failed refetches the retryable failures of finished tars in every format and
    keeps the old samples byte for byte (it used to refuse anything but webdataset)."""
    tag = os.urandom(4).hex()
    kinds = ["good", "flaky", "gone"]
    paths = {"good": "/img/small.jpg", "flaky": "/flaky/1/small.jpg", "gone": "/status/404"}
    rows = [{"url": farm.url(f"{paths[kinds[i % 3]]}?r={tag}-{i}", i % 8), "caption": f"c{i}"} for i in range(12)]
    inp = tmp_path / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(rows), inp)
    out = tmp_path / fmt
    args = ["--input", str(inp), "--output", str(out), "--output-format", fmt, "--samples-per-tar", "6",
            "--allow-private-networks", "--retries", "0", "--metrics-address", "", "--processes", "1"]  # fmt: skip
    run_fetcher(*args)
    first = {r["key"]: r for r in _results(out)}
    assert [r["status"] for r in first.values()].count("success") == 4
    before = _samples(out, fmt)
    proc = run_fetcher(*args, "--retry-failed")
    assert "rows        4 of 4" in proc.stderr  # the flaky rows only; the 404s are final
    second = {r["key"]: r for r in _results(out)}
    assert sorted(second) == sorted(first)
    for key, rec in second.items():
        kind = kinds[(int(key[:5]) * 6 + int(key[5:])) % 3]
        assert rec["status"] == ("failed_to_download" if kind == "gone" else "success"), rec
        if kind == "good":
            assert rec == first[key], "a kept row is carried over unchanged"
    after = _samples(out, fmt)
    assert {k: v for k, v in after.items() if k in before} == before, "old samples kept byte for byte"
    assert len(after) == (0 if fmt == "dummy" else 8)
    if fmt == "files":  # the carried-over rows keep their caption and size in metadata.parquet
        meta = pq.read_table(out / "metadata.parquet").to_pylist()
        assert sorted(m["key"] for m in meta) == sorted(k for k, r in second.items() if r["status"] == "success")
        assert all(m["caption"] == second[m["key"]]["caption"] and m["width"] for m in meta)
