"""Hostile input tables and hostile image files: named failures per row, one-line errors per file."""

from __future__ import annotations

import gzip
import io
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fetcher.cli import main
from fetcher.farm import Farm
from fetcher.imaging import ImageOptions, process_image
from fetcher.records import ImageOutcome, Reason
from tests.conftest import results_table, run_fetcher, write_urls
from tests.output_checks import check_output

REASONS = {r.value for r in Reason}


def test_weird_rows_become_per_row_failures(farm: Farm, tmp_path: Path) -> None:
    good = farm.url("/img/small.jpg?weird=1")
    huge = "x" * 3_000_000
    inp = tmp_path / "in"
    write_urls(inp / "a.parquet", [good, None, "", "   ", "not a url", "ftp://h/x.jpg", good, "http://[::1/x"],
               [huge, "nul\x00byte", None, "é" * 10, "c", "c", "dup", "c"])  # fmt: skip
    pq.write_table(pa.table({"url": pa.array([7, None], pa.int64()), "caption": ["int url", "null int"]}),
                   inp / "b.parquet")  # fmt: skip
    pq.write_table(pa.table({"url": pa.array([good.encode(), b"\xff\xfe"], pa.binary()),
                             "caption": pa.array([b"bad \xff\xfe utf8", b"\x00\x01"], pa.binary())}),
                   inp / "c.parquet")  # fmt: skip
    out = tmp_path / "out"
    run_fetcher("--input", str(inp), "--output", str(out), "--allow-private-networks", "--processes", "1")
    rows = check_output(out, final=True)
    got = [(r["error_message"], r["caption"]) for _, r in sorted(rows.items())]
    assert [g[0] for g in got] == [
        None, "missing_url", "missing_url", "missing_url", "unsupported_scheme", "unsupported_scheme", None,
        "invalid_url", "invalid_url", "missing_url", None, "invalid_url",
    ]  # fmt: skip
    assert got[0][1] == huge  # an enormous caption is kept, not a crash
    assert got[1][1] == "nulbyte"  # NUL bytes removed
    assert got[10][1] == "bad \ufffd\ufffd utf8"  # invalid UTF-8 replaced, valid text kept
    assert rows["000000006"]["status"] == "success"  # a duplicate row is simply another row


def test_corrupt_input_data_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "urls.parquet"
    urls = [f"http://127.0.0.2:9/{i}.jpg" for i in range(2000)]
    pq.write_table(pa.table({"url": urls, "caption": ["c"] * 2000}), path, row_group_size=500, compression="snappy")
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 200] = b"\xab" * 200  # a data page, footer intact
    path.write_bytes(bytes(data))
    proc = run_fetcher("--input", str(path), "--output", str(tmp_path / "out"), "--samples-per-tar", "1000",
                       check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"fetcher: error: {path}: unreadable data"), proc.stderr
    check_output(tmp_path / "out", final=True)


def test_hostile_images_are_named_failures_with_bounded_worker_memory(farm: Farm, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    cases = {
        "/img/small.jpg": None,
        "/cut/medium.jpg": "truncated_image",
        "/notimage": "not_an_image",
        "/pixel-bomb/9000x9000.png": "decompression_bomb",  # passes the pixel check, not the memory cap
        "/pixel-bomb/12000x12000.png": "decompression_bomb",  # refused by the pixel check before decoding
    }
    urls = [farm.url(f"{p}?bomb={tag}") for p in cases]
    inp = write_urls(tmp_path / "urls.parquet", [*urls, farm.url(f"/img/medium.jpg?bomb={tag}")])
    out = tmp_path / "out"
    run_fetcher("--input", str(inp), "--output", str(out), "--allow-private-networks", "--processes", "1",
                "--imaging-pool", "processes", "--worker-max-memory", "300M",
                "--max-image-pixels", "100000000")  # fmt: skip
    rows = {r["url"]: r for r in results_table(out).to_pylist()}
    for url, reason in zip(urls, cases.values(), strict=True):
        assert rows[url]["error_message"] == reason, rows[url]
    assert "--worker-max-memory" in rows[urls[3]]["error_detail"]
    assert "over 100000000 pixels" in rows[urls[4]]["error_detail"]  # refused from the header
    assert rows[farm.url(f"/img/medium.jpg?bomb={tag}")]["status"] == "success"  # the pool survived


# -- property test: random rows through the whole pipeline --------------------------------------------

_JUNK = st.text(max_size=40).filter(lambda s: "//" not in s)  # no authority part: never a DNS lookup


def _row_urls(farm: Farm) -> st.SearchStrategy[Any]:
    paths = st.sampled_from(["/img/small.jpg", "/status/404", "/notimage", "/status/503", "/cut/small.jpg"])
    return st.one_of(
        st.none(),
        _JUNK,
        paths.map(farm.url),
        st.sampled_from(["http://10.0.0.1/x.jpg", "http://169.254.169.254/", "ftp://127.0.0.2/x", "http://[::1/"]),
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])  # fmt: skip
@given(data=st.data())
def test_property_every_random_row_ends_once_with_a_named_outcome(farm: Farm, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 12), label="rows")
    urls = data.draw(st.lists(_row_urls(farm), min_size=n, max_size=n), label="urls")
    captions = data.draw(st.lists(st.one_of(st.none(), st.text(max_size=200)), min_size=n, max_size=n))
    per_tar = data.draw(st.integers(1, 5), label="per_tar")
    with tempfile.TemporaryDirectory() as tmp:
        inp = write_urls(Path(tmp) / "u.parquet", urls, captions)
        code = main(["--input", str(inp), "--output", f"{tmp}/out", "--samples-per-tar", str(per_tar),
                     "--allow-network", "127.0.0.2/32", "--processes", "1", "--retries", "0", "--timeout", "5",
                     "--min-free-disk", "0"])  # fmt: skip
        assert code == 0
        rows = check_output(Path(tmp) / "out", final=True)
    assert len(rows) == n
    for key, rec in rows.items():
        i = int(key[:5]) * per_tar + int(key[5:])
        assert rec["status"] == "success" or rec["error_message"] in REASONS, rec
        if isinstance(urls[i], str) and urls[i].strip():
            assert rec["url"] == urls[i].strip()
        if captions[i] is not None:
            assert rec["caption"] == captions[i].replace("\x00", "")


# -- fuzz test of the imaging entry point -----------------------------------------------------------


def _seed(w: int, h: int, fmt: str, mode: str = "RGB", **save: Any) -> bytes:
    # Gradients only: no Image.effect_noise, whose C rand() state other tests' images depend on.
    g = Image.linear_gradient("L").resize((w, h))
    img = Image.merge("RGB", (g, g.rotate(90), g.transpose(Image.Transpose.FLIP_LEFT_RIGHT))).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


_SEEDS = [
    _seed(64, 48, "JPEG"),
    _seed(64, 48, "JPEG", progressive=True),
    _seed(40, 30, "PNG", "RGBA"),
    _seed(40, 40, "PNG", "P"),
    _seed(48, 32, "WEBP"),
    _seed(32, 24, "GIF", "P"),
]
_FUZZ_OPTS = ImageOptions(image_size=32, max_image_pixels=4_000_000)


@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "byte", "insert", "delete"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif len(data) > 1:
            del data[pos]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(mutated_image())
def test_fuzz_process_image_never_raises(data: bytes) -> None:
    out = process_image(data, _FUZZ_OPTS)
    assert isinstance(out, ImageOutcome)
    if out.ok:
        assert out.data is not None and out.width is not None and 0 < out.width <= 4096
    else:
        assert out.reason is not None and out.reason.value in REASONS


_TINY_PNG, _SMALL_JPEG = _seed(1, 1, "PNG"), _seed(64, 64, "JPEG")


@pytest.mark.parametrize(
    ("body", "reason", "size"),
    [
        (b"", Reason.NOT_AN_IMAGE, None),
        (b"\x00", Reason.NOT_AN_IMAGE, None),
        (b"\xff\xd8", Reason.NOT_AN_IMAGE, None),  # JPEG SOI marker alone
        (_TINY_PNG[:8], Reason.NOT_AN_IMAGE, None),  # PNG signature alone
        (_TINY_PNG[:33], Reason.NOT_AN_IMAGE, None),  # signature + IHDR, no pixel data
        (b"GIF89a\x01\x00\x01\x00\x00\x00\x00", Reason.NOT_AN_IMAGE, None),  # GIF header alone
        (_SMALL_JPEG[: len(_SMALL_JPEG) * 3 // 4], Reason.TRUNCATED_IMAGE, (64, 64)),  # header fine, scan cut
        (_SMALL_JPEG[:-2], Reason.TRUNCATED_IMAGE, (64, 64)),  # only the end-of-image marker missing
        (_TINY_PNG, None, (1, 1)),  # a 1x1 image is an image: upscaled to the target size
        (_seed(1, 1, "JPEG"), None, (1, 1)),
        (_TINY_PNG[:-12], None, (1, 1)),  # PNG without its IEND chunk still decodes whole
    ],
    ids=[
        "empty",
        "one_byte",
        "jpeg_soi",
        "png_signature",
        "png_ihdr_only",
        "gif_header",
        "jpeg_cut_scan",
        "jpeg_no_eoi",
        "png_1x1",
        "jpeg_1x1",
        "png_no_iend",
    ],
)
def test_empty_and_tiny_bodies(body: bytes, reason: Reason | None, size: tuple[int, int] | None) -> None:
    out = process_image(body, _FUZZ_OPTS)
    assert out.reason is reason, (out.reason, out.detail)
    assert (out.original_width, out.original_height) == (size or (None, None))
    if reason is None:
        assert out.ok and (out.width, out.height) == (32, 32) and out.data
        assert Image.open(io.BytesIO(out.data)).size == (32, 32)
    else:
        assert out.data is None and out.detail


def test_tiny_image_refused_by_min_image_size() -> None:
    out = process_image(_TINY_PNG, ImageOptions(image_size=32, min_image_size=2))
    assert (out.reason, out.original_width, out.original_height) == (Reason.IMAGE_TOO_SMALL, 1, 1)


# -- one-line errors for broken inputs and unusable outputs (issue 14.7) ------------------------------


def _one_line_error(proc: Any, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fetcher: error: "), proc.stderr
    for needle in needles:
        assert needle in last, proc.stderr


@pytest.mark.parametrize("name", ["urls.txt.gz", "urls.jsonl.gz", "urls.csv.gz"])
def test_cut_gzip_input_is_a_one_line_error(tmp_path: Path, name: str) -> None:
    rows = [f"http://127.0.0.2:9/{i}.jpg" for i in range(3000)]
    if name.startswith("urls.jsonl"):
        text = "".join(json.dumps({"url": u, "caption": "c"}) + "\n" for u in rows)
    elif name.startswith("urls.csv"):
        text = "url,caption\n" + "".join(f"{u},c\n" for u in rows)
    else:
        text = "".join(u + "\n" for u in rows)
    packed = gzip.compress(text.encode())
    path = tmp_path / name
    path.write_bytes(packed[: len(packed) // 2])  # cut mid-stream, as an interrupted copy leaves it
    proc = run_fetcher("--input", str(path), "--output", str(tmp_path / "out"), check=False)
    _one_line_error(proc, 2, str(path))


def test_duplicate_url_column_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    cols = [pa.array(["http://127.0.0.2:9/a"]), pa.array(["http://127.0.0.2:9/b"]), pa.array(["c"])]
    pq.write_table(pa.Table.from_arrays(cols, names=["url", "url", "caption"]), path)
    proc = run_fetcher("--input", str(path), "--output", str(tmp_path / "out"), check=False)
    _one_line_error(proc, 2, str(path), "'url'", "2 times")


@pytest.mark.parametrize(("output", "code"), [("/proc/x", 2), ("FILE", 2), ("/proc/self", 75)])
def test_unusable_output_is_a_one_line_error(tmp_path: Path, output: str, code: int) -> None:
    # /proc/x cannot be created, FILE is an existing file, /proc/self is a folder nobody can write in.
    if output == "FILE":
        output = str(tmp_path / "a-file")
        Path(output).write_text("x")
    inp = write_urls(tmp_path / "urls.parquet", ["http://127.0.0.2:9/a.jpg"])
    proc = run_fetcher("--input", str(inp), "--output", output, "--min-free-disk", "0", check=False)
    _one_line_error(proc, code, output)


# -- invalid UTF-8 costs a value, never the file (issue 14.8) ----------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "txt"])
def test_invalid_utf8_costs_at_most_its_row(farm: Farm, tmp_path: Path, fmt: str) -> None:
    n, bad = 24, 17
    urls = [farm.url(f"/img/small.jpg?u8={fmt}{i}") for i in range(n)]
    lines = []
    for i, u in enumerate(urls):
        junk = b"\xff\xfe" if i == bad else b""
        if fmt == "csv":
            lines.append(u.encode() + b",cap " + str(i).encode() + junk)
        elif fmt == "jsonl":
            lines.append(b'{"url": "' + u.encode() + b'", "caption": "cap ' + str(i).encode() + junk + b'"}')
        else:
            lines.append(u.encode() + junk)  # in a URL list the bad bytes sit in the URL itself
    path = tmp_path / f"urls.{fmt}"
    path.write_bytes((b"url,caption\n" if fmt == "csv" else b"") + b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    proc = run_fetcher("--input", str(path), "--output", str(out), "--allow-private-networks", "--processes", "1",
                       "--samples-per-tar", "10")  # fmt: skip
    assert "not UTF-8" in proc.stderr  # the replacement is counted in the log, not silent
    rows = sorted(results_table(out).to_pylist(), key=lambda r: r["key"])
    assert len(rows) == n
    for i, row in enumerate(rows):
        if fmt == "txt" and i == bad:  # the URL's bad bytes are replaced: fetched as such, or a named failure
            assert row["status"] == "success" or row["error_message"] in REASONS, row
        else:
            assert row["status"] == "success", row
    if fmt != "txt":
        assert rows[bad]["caption"] == f"cap {bad}\ufffd\ufffd"


def test_jsonl_columns_come_from_every_line(farm: Farm, tmp_path: Path) -> None:
    url = farm.url("/img/small.jpg?late-columns=1")
    path = tmp_path / "urls.jsonl"
    path.write_text(json.dumps({"url": url}) + "\n" + json.dumps({"url": url, "caption": "late", "score": 5}) + "\n")
    out = tmp_path / "out"
    run_fetcher("--input", str(path), "--output", str(out), "--allow-private-networks", "--processes", "1",
                "--save-columns", "score")  # fmt: skip
    rows = sorted(results_table(out).to_pylist(), key=lambda r: r["key"])
    assert [(r["caption"], r["score"]) for r in rows] == [(None, None), ("late", 5)]
