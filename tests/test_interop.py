"""Interop: fetcher's outputs read by the real webdataset, wids and Hugging Face datasets libraries,
the files output through its metadata.parquet, every input format, --filter accounting, and the
object-store path against a local S3 server (moto) on loopback."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import types
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from fetcher.farm import Farm
from fetcher.inputs import normalize_format
from fetcher.options import ConfigError
from fetcher.reader import InputOptions, iter_rows, open_inputs, plan_tars, sanitize_key
from fetcher.rowfilter import parse_filter
from tests.conftest import run_fetcher

N = 36
S = 10  # samples per tar -> tars of 10, 10, 10, 6


def results(out: Path) -> list[dict[str, Any]]:
    """Rows of the per-tar results parquets (not the metadata pieces or image parquets)."""
    files = sorted(p for p in out.glob("*.parquet") if p.stem.isdigit())
    assert files, f"no results parquet in {out}"
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


def laion_rows(farm: Farm) -> list[dict[str, Any]]:
    """LAION-style rows (URL, TEXT, scores); every 9th row is a 404, one row has no URL."""
    rows = []
    for i in range(N):
        path = "/status/404" if i % 9 == 4 else f"/gen/{320 + i % 4 * 40}x{240 + i % 3 * 30}.jpg?seed={i}"
        rows.append(
            {
                "URL": None if i == 7 else farm.url(path, i % 8),
                "TEXT": f"laion caption {i}",
                "punsafe": (i % 10) / 10,
                "pwatermark": 0.1 if i % 6 else 0.95,
                "similarity": 0.2 if i % 11 == 3 else 0.35,
            }
        )
    return rows


FILTER = "punsafe < 0.5 and pwatermark < 0.8 and similarity > 0.3"


def keep(row: dict[str, Any]) -> bool:
    return row["punsafe"] < 0.5 and row["pwatermark"] < 0.8 and row["similarity"] > 0.3


@pytest.fixture(scope="module")
def laion(farm: Farm, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("laion")
    rows = laion_rows(farm)
    inp = tmp / "part-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), inp, row_group_size=8)
    return inp, rows


@pytest.fixture(scope="module")
def wds_run(laion: tuple[Path, list[dict[str, Any]]]) -> tuple[Path, list[dict[str, Any]]]:
    inp, rows = laion
    out = inp.parent / "wds"
    # img2dataset spellings on purpose: the seed recipe's flags work unchanged
    proc = run_fetcher(
        "--url_list", str(inp), "--input_format", "parquet", "--url_col", "URL", "--caption_col", "TEXT",
        "--output_folder", str(out), "--output_format", "webdataset", "--number_sample_per_shard", str(S),
        "--save_additional_columns", '["similarity","punsafe","pwatermark"]', "--filter", FILTER,
        "--allow-private-networks", "--retries", "0",
    )  # fmt: skip
    n_filtered = sum(not keep(r) for r in rows)
    assert f"  filtered    {n_filtered}" in proc.stderr
    assert f"ok          {len(expected_successes(rows))}" in proc.stderr
    return out, rows


def downloadable(rows: list[dict[str, Any]]) -> list[int]:
    """Rows that succeed without a filter (the others have no URL or a 404)."""
    return [i for i, r in enumerate(rows) if r["URL"] is not None and i % 9 != 4]


def expected_successes(rows: list[dict[str, Any]]) -> list[int]:
    return [i for i in downloadable(rows) if keep(rows[i])]


def test_filter_counts_add_up(wds_run: tuple[Path, list[dict[str, Any]]]) -> None:
    out, rows = wds_run
    table = results(out)
    assert len(table) == N
    by_row = {int(r["key"][:5]) * S + int(r["key"][5:]): r for r in table}
    assert sorted(by_row) == list(range(N))
    for i, row in enumerate(rows):
        rec = by_row[i]
        if not keep(row):
            assert (rec["status"], rec["error_message"]) == ("filtered", "filtered"), rec
            assert rec["attempts"] == 0
        elif row["URL"] is None:
            assert rec["error_message"] == "missing_url"
        elif i % 9 == 4:
            assert rec["error_message"] == "http_404"
        else:
            assert rec["status"] == "success", rec
        assert rec["similarity"] == row["similarity"]  # saved columns in the results
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    n_filtered = sum(not keep(r) for r in rows)
    assert 0 < n_filtered < N
    assert sum(s["filtered"] for s in stats) == n_filtered
    assert sum(s["successes"] for s in stats) == len(expected_successes(rows))
    assert sum(s["count"] for s in stats) == N
    # img2dataset-compatible result columns plus ours
    for col in ("key", "url", "caption", "status", "error_message", "width", "height", "original_width",
                "original_height", "sha256", "attempts", "http_status", "bytes_downloaded", "fetch_ms"):  # fmt: skip
        assert col in table[0]


def check_sample(image: Image.Image, caption: str, meta: dict[str, Any], key: str, rows: list[dict[str, Any]]) -> int:
    """One loaded sample matches its input row; returns the row number."""
    i = int(key[:5]) * S + int(key[5:])
    assert meta["key"] == key
    assert caption == rows[i]["TEXT"] == meta["caption"]
    assert meta["url"] == rows[i]["URL"]
    assert image.size == (meta["width"], meta["height"])
    assert min(image.size) == 256
    assert meta["punsafe"] == rows[i]["punsafe"]
    return i


def test_webdataset_reads_every_sample(wds_run: tuple[Path, list[dict[str, Any]]]) -> None:
    out, rows = wds_run
    tars = sorted(str(p) for p in out.glob("*.tar"))
    seen = []
    for s in wds.WebDataset(tars, shardshuffle=False).decode("pil"):
        seen.append(check_sample(s["jpg"], s["txt"], s["json"], s["__key__"], rows))
    assert sorted(seen) == expected_successes(rows)


_T = TypeVar("_T")


class _TorchBase(Generic[_T]):
    """What ``torch.utils.data.Dataset``/``Sampler`` are to a subclass: a plain generic base."""


@pytest.fixture()
def torchless_wids(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Import the real wids without PyTorch (gigabytes we do not otherwise need).

    wids imports ``torch.distributed`` (for its distributed sampler) and takes its ``Dataset`` and
    ``Sampler`` base classes from ``torch.utils.data``; those bases are plain generic classes there
    (wids' own torch-less fallback is not subscriptable, so it cannot be used). Nothing on the reading
    path (index, tar indexing, grouping, decoding) calls torch. With PyTorch installed, it is used.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        torch_mod = types.ModuleType("torch")
        dist = types.ModuleType("torch.distributed")
        dist.is_initialized = lambda: False  # type: ignore[attr-defined]
        utils = types.ModuleType("torch.utils")
        data = types.ModuleType("torch.utils.data")
        data.Dataset = _TorchBase  # type: ignore[attr-defined]
        data.Sampler = _TorchBase  # type: ignore[attr-defined]
        for name, mod in (("torch", torch_mod), ("torch.distributed", dist), ("torch.utils", utils),
                          ("torch.utils.data", data)):  # fmt: skip
            monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.delitem(sys.modules, "wids", raising=False)
        monkeypatch.delitem(sys.modules, "wids.wids", raising=False)
    import wids

    yield wids


def test_wids_reads_every_sample_through_the_shard_index(
    wds_run: tuple[Path, list[dict[str, Any]]], torchless_wids: Any, tmp_path: Path
) -> None:
    out, rows = wds_run
    index = json.loads((out / "wids-index.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1"
    completed = sorted(p.name[:5] for p in out.glob("*_stats.json"))
    assert [s["url"] for s in index["shardlist"]] == [f"{k}.tar" for k in completed]
    ds = torchless_wids.ShardListDataset(str(out / "wids-index.json"), cache_dir=str(tmp_path / "wids-cache"))
    assert len(ds) == len(expected_successes(rows))
    seen = []
    for j in range(len(ds)):
        s = ds[j]
        image = s[".jpg"] if isinstance(s[".jpg"], Image.Image) else Image.open(io.BytesIO(s[".jpg"].read()))
        caption = s[".txt"] if isinstance(s[".txt"], str) else s[".txt"].read().decode()
        meta = s[".json"] if isinstance(s[".json"], dict) else json.loads(s[".json"].read())
        seen.append(check_sample(image, caption, meta, s["__key__"], rows))
    assert sorted(seen) == expected_successes(rows)


def test_hf_datasets_webdataset_builder_reads_every_sample(
    wds_run: tuple[Path, list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, rows = wds_run
    for var, value in (("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"), ("HF_HOME", str(tmp_path / "hf"))):
        monkeypatch.setenv(var, value)
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    tars = sorted(str(p) for p in out.glob("*.tar"))
    ds = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train", cache_dir=str(tmp_path / "c"))
    assert ds.num_rows == len(expected_successes(rows))
    seen = [check_sample(s["jpg"], s["txt"], s["json"], s["__key__"], rows) for s in ds]
    assert sorted(seen) == expected_successes(rows)


def test_files_output_loads_through_metadata_parquet(laion: tuple[Path, list[dict[str, Any]]]) -> None:
    inp, rows = laion
    out = inp.parent / "files"
    common = ("--input", str(inp), "--url-col", "URL", "--caption-col", "TEXT", "--output", str(out),
              "--output-format", "files", "--samples-per-tar", str(S), "--save-columns", "punsafe",
              "--allow-private-networks", "--retries", "0")  # fmt: skip
    # two workers sharing the folder, at the same time: metadata.parquet must still cover every tar
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "fetcher", *common, "--shard", f"{i}/2"], env=env, stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    meta = pq.read_table(out / "metadata.parquet").to_pylist()
    ok = downloadable(rows)
    assert len(meta) == len(ok)
    seen = []
    for m in meta:
        path = out / m["filename"]
        image = Image.open(path)
        assert image.size == (m["width"], m["height"])
        assert path.with_suffix(".txt").read_text() == m["caption"]
        meta_json = json.loads(path.with_suffix(".json").read_text())
        seen.append(check_sample(image, m["caption"], meta_json, m["key"], rows))
        assert m["punsafe"] == rows[seen[-1]]["punsafe"]
    assert sorted(seen) == ok
    assert not list(out.glob("*.tmp"))
    # the rebuild command gives the same table; the SimpleTuner entry points at it
    before = pq.read_table(out / "metadata.parquet")
    (out / "metadata.parquet").unlink()
    proc = run_fetcher("metadata", str(out))
    assert "metadata.parquet: 4 completed tars" in proc.stdout
    assert pq.read_table(out / "metadata.parquet").equals(before)
    proc = run_fetcher("--input", str(inp), "--output", str(out), "--output-format", "files",
                       "--print-simpletuner-config")  # fmt: skip
    entry = json.loads(proc.stdout)
    assert entry["metadata_backend"] == "parquet" and entry["instance_data_dir"] == str(out)
    pqc = entry["parquet"]
    assert pqc["path"] == str(out / "metadata.parquet")
    assert {pqc["filename_column"], pqc["caption_column"], pqc["width_column"], pqc["height_column"]} <= set(
        before.column_names
    )


def test_parquet_output_holds_image_bytes(laion: tuple[Path, list[dict[str, Any]]]) -> None:
    inp, rows = laion
    out = inp.parent / "pq"
    run_fetcher("--input", str(inp), "--url-col", "URL", "--caption-col", "TEXT", "--output", str(out),
                "--output-format", "parquet", "--samples-per-tar", str(S), "--allow-private-networks",
                "--retries", "0", "--save-columns", "punsafe")  # fmt: skip
    table = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("*_images.parquet"))]).to_pylist()
    seen = [
        check_sample(Image.open(io.BytesIO(r["image"])), r["caption"], json.loads(r["json"]), r["key"], rows)
        for r in table
    ]
    assert sorted(seen) == downloadable(rows)
    assert len(results(out)) == N


# -- inputs ------------------------------------------------------------------------------------------


def _write_formats(tmp: Path, rows: list[dict[str, Any]]) -> dict[str, Path]:
    paths = {"parquet": tmp / "in.parquet", "jsonl": tmp / "in.jsonl.gz", "csv": tmp / "in.csv", "tsv": tmp / "in.tsv"}
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"], row_group_size=4)
    paths["json"] = tmp / "in.json"  # img2dataset's json: one JSON array
    paths["json"].write_text(json.dumps(rows, indent=2))
    with gzip.open(paths["jsonl"], "wt") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n\n")  # blank lines are not rows
    for fmt, delim in (("csv", ","), ("tsv", "\t")):
        with open(paths[fmt], "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delim)
            w.writeheader()
            w.writerows(rows)
    paths["txt"] = tmp / "in.txt"
    paths["txt"].write_text("".join(f"{r['url']}\n" for r in rows))
    return paths


def test_every_input_format_numbers_rows_the_same(tmp_path: Path) -> None:
    rows = [
        {"url": f"http://h{i % 3}.test/{i}.jpg", "cogvlm_caption": "" if i % 5 == 0 else f"cap, with comma\n{i}",
         "tags": f"tag{i}", "id": f"pexels-{i}.jpg", "score": i / 10}
        for i in range(23)
    ]  # fmt: skip
    paths = _write_formats(tmp_path, rows)
    layouts = {}
    for fmt, path in paths.items():
        opts = InputOptions(
            url_col="url",
            caption_col="cogvlm_caption" if fmt != "txt" else "caption",
            fallback_caption_col="tags" if fmt != "txt" else "",
            key_col="id" if fmt != "txt" else "",
            filter="score < 1.5" if fmt != "txt" else "",
            batch_rows=3,
        )
        files = open_inputs(str(path), opts)
        assert sum(f.num_rows for f in files) == len(rows), fmt
        got = [r for t in plan_tars(len(rows), 5, (0, 1)) for r in iter_rows(files, t, opts, 5)]
        assert [r.url for r in got] == [r["url"] for r in rows], fmt
        assert [(r.tar_index, r.row_in_tar) for r in got] == [(i // 5, i % 5) for i in range(len(rows))]
        if fmt != "txt":
            assert [r.caption for r in got] == [r["cogvlm_caption"] or r["tags"] for r in rows], fmt
            kept = [r for r in got if r.skip_reason is None]
            assert [r.key for r in kept] == [f"pexels{i}" for i in range(15)], fmt  # ".jpg" is no part of it
            assert {r.skip_reason for r in got[15:]} == {"filtered"}
        layouts[fmt] = [(r.tar_index, r.row_in_tar, r.url) for r in got]
    assert len({tuple(v) for v in layouts.values()}) == 1
    # a second shard of the concatenated input sees the same rows as the full run
    both = open_inputs(str(tmp_path / "in.*"), InputOptions(url_col="url", caption_col=""))
    assert [f.path for f in both] == sorted(str(p) for p in paths.values())
    assert sum(f.num_rows for f in both) == len(rows) * len(paths)


def test_key_col_sanitised_and_unique_per_tar(tmp_path: Path) -> None:
    rows = [{"url": f"http://x.test/{i}", "id": v} for i, v in enumerate(["a/b.c", "a.b/c", "", "ok-1", "ok_1"])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "k.parquet")
    opts = InputOptions(key_col="id", caption_col="")
    got = list(iter_rows(open_inputs(str(tmp_path / "k.parquet"), opts), plan_tars(5, 5, (0, 1))[0], opts, 5))
    assert [r.key for r in got if r.skip_reason is None] == ["abc", "ok1"]
    assert [r.skip_reason for r in got] == [None, "bad_key", "bad_key", None, "bad_key"]
    assert sanitize_key(12.0) == "12" and sanitize_key("ü/..x") == "x"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("__import__('os').system('true')", "only col()"),
        ("punsafe.real < 1", "Attribute is not allowed"),
        ("[x for x in punsafe]", "ListComp is not allowed"),
        ("punsafe <", "syntax error"),
        ("lambda: 1", "Lambda is not allowed"),
    ],
)
def test_filter_parser_refuses_anything_but_expressions(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_filter(text)


def test_filter_semantics() -> None:
    table = pa.table({"a": [0.1, 0.6, None, 0.3], "lang": ["en", "de", "en", None], "TEXT": ["x", "long one", "", "y"]})
    assert parse_filter("a < 0.5").mask(table) == [True, False, False, True]  # null is not kept
    assert parse_filter("0.2 < a <= 0.5 or lang in ['de']").mask(table) == [False, True, False, True]
    assert parse_filter("not (lang == 'de') and lang is not None").mask(table) == [True, False, True, False]
    assert parse_filter("len(TEXT) > 3 or col('a') * 10 == 1").mask(table) == [True, True, False, False]
    assert parse_filter("a < 0.5").columns == ("a",)
    assert normalize_format("csv.gz") == "csv" and normalize_format("json") == "json"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--filter", "nope < 1"], "column 'nope' (--filter) not found"),
        (["--filter", "open('x')"], "--filter"),
        (["--key-col", "missing"], "column 'missing' (--key-col) not found"),
        (["--input-format", "xml"], "--input-format 'xml'"),
        (["--output-format", "tfrecords"], "--output-format"),
    ],
)
def test_cli_input_errors_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    inp = tmp_path / "u.parquet"
    pq.write_table(pa.table({"url": ["http://x.test/a"], "caption": ["c"]}), inp)
    proc = run_fetcher("--input", str(inp), "--output", str(tmp_path / "o"), *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- object store ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 with dummy credentials: no real cloud endpoint is ever used."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    try:
        yield env
    finally:
        server.stop()


@pytest.fixture()
def s3(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """An s3fs client of the local server; the environment points fetcher subprocesses at it too."""
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server["AWS_ENDPOINT_URL"]})


def test_s3_round_trip(s3: Any, laion: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    fs = s3
    fs.mkdir("bucket")
    inp, rows = laion
    fs.put_file(str(inp), "bucket/in/part-00000.parquet")
    args = ("--input", "s3://bucket/in/", "--output", "s3://bucket/out", "--url-col", "URL", "--caption-col", "TEXT",
            "--samples-per-tar", str(S), "--allow-private-networks", "--retries", "0",
            "--save-columns", "punsafe", "--staging-dir", str(tmp_path / "staging"))  # fmt: skip
    run_fetcher(*args)
    fs.invalidate_cache()
    names = sorted(os.path.basename(p) for p in fs.ls("bucket/out"))
    assert names == sorted(
        [f"{k:05d}{suffix}" for k in range(4) for suffix in (".tar", ".parquet", "_stats.json")]
        + ["wids-index.json", "_fetcher_run.json"]
    )
    assert not list((tmp_path / "staging").iterdir()), "staging copies must be removed after upload"
    local = tmp_path / "down"
    fs.get("bucket/out/", str(local), recursive=True)
    seen = []
    for s in wds.WebDataset(sorted(str(p) for p in local.glob("*.tar")), shardshuffle=False).decode("pil"):
        seen.append(check_sample(s["jpg"], s["txt"], s["json"], s["__key__"], rows))
    assert sorted(seen) == downloadable(rows)
    assert len(results(local)) == N
    counts = Counter(json.loads((local / f"{k:05d}_stats.json").read_text())["count"] for k in range(4))
    assert counts == {S: 3, N - 3 * S: 1}
    # resume against the object store: every marker is there, nothing is redone
    proc = run_fetcher(*args)
    assert "4 already complete" in proc.stderr


def test_s3_files_output_with_metadata(s3: Any, laion: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    fs = s3
    fs.mkdir("files-bucket")
    inp, rows = laion
    run_fetcher("--input", str(inp), "--output", "s3://files-bucket/pcb", "--url-col", "URL", "--caption-col", "TEXT",
                "--samples-per-tar", str(S), "--output-format", "files", "--allow-private-networks", "--retries", "0",
                "--staging-dir", str(tmp_path / "staging"))  # fmt: skip
    fs.invalidate_cache()
    meta = pq.read_table(fs.open("files-bucket/pcb/metadata.parquet", "rb")).to_pylist()
    ok = downloadable(rows)
    assert len(meta) == len(ok)
    for m in meta:
        image = Image.open(io.BytesIO(fs.cat_file(f"files-bucket/pcb/{m['filename']}")))
        assert image.size == (m["width"], m["height"])
        caption = fs.cat_file(f"files-bucket/pcb/{m['filename'].rsplit('.', 1)[0]}.txt").decode()
        assert caption == m["caption"] == rows[int(m["key"][:5]) * S + int(m["key"][5:])]["TEXT"]
    # folder, piece, results, marker per tar + metadata.parquet, data.json and the run record
    assert len(fs.ls("files-bucket/pcb")) == 4 * 4 + 3
    data = json.loads(fs.cat_file("files-bucket/pcb/data.json"))
    assert [(d["image"], d["caption"], d["width"]) for d in data] == [
        (m["filename"], m["caption"], m["width"]) for m in meta
    ]


def test_csv_column_blank_in_the_first_block_still_filters(tmp_path: Path) -> None:
    # pyarrow infers CSV types from the first block (1 MiB); a score that is blank there must not
    # break the stream when numbers appear later.
    n, blank = 30_000, 25_000
    path = tmp_path / "late.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["url", "caption", "score"])
        for i in range(n):
            w.writerow([f"http://h.test/{i:08d}.jpg", f"caption number {i:08d}", "" if i < blank else (i % 10) / 10])
    assert path.stat().st_size > 1.2 * (1 << 20)
    opts = InputOptions(filter="score >= 0.5", save_columns="score")
    files = open_inputs(str(path), opts)
    rows = [r for t in plan_tars(n, 10_000, (0, 1)) for r in iter_rows(files, t, opts, 10_000)]
    kept = [r for r in rows if r.skip_reason is None]
    assert len(rows) == n and len(kept) == (n - blank) // 2
    assert all(r.extra["score"] >= 0.5 for r in kept)
