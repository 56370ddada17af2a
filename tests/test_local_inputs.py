"""Datasets that ship as tars, folders or a JSON array manifest (issue 15.1-15.3), each seed's job run
with fetcher alone on a small imitation of its data and read back the way its trainer reads it:

- seeds 001/002 (DALLE-3): tars of ``.png`` + ``.json`` -> ``--output-format files`` -> SimpleTuner's
  parquet metadata backend (filename/caption/width/height, identifier includes the extension) and
  its textfile captions;
- seed 004 (ShareGPT-4o-Image): ``text_to_image.json`` (a JSON array) + image tars -> ``data.json``
  of image/caption/width/height as its CaptionDataset loads it, and HF ``imagefolder``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fetcher.config import load_config
from fetcher.inputs import discover
from fetcher.options import ConfigError
from fetcher.pipeline import run
from fetcher.reader import InputOptions, iter_rows, open_inputs, plan_tars
from fetcher.readers import json_array
from tests.conftest import ROOT, run_fetcher

# DALLE-3 images go to SimpleTuner as they are: same size, still PNG, named by image_name
AS_IS = ("--resize-mode", "no", "--encode-format", "png", "--encode-quality", "6")


def png(w: int, h: int, seed: int) -> bytes:
    img = Image.new("RGB", (w, h), (seed * 37 % 256, seed * 91 % 256, 128))
    for x in range(0, w, 7):  # some structure, so a wrong image cannot pass for the right one
        img.putpixel((x, (x * seed) % h), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def dalle3_samples(n: int) -> list[dict[str, Any]]:
    """DALLE-3 sidecars: hex image names with their extension, several caption styles, the size."""
    return [
        {"image_name": f"19d1{i:04x}e0c7b.png", "short_caption": f"short {i}", "long_caption": f"a long caption {i}",
         "width": 96 + 8 * i, "height": 64 + 4 * (i % 3)}
        for i in range(n)
    ]  # fmt: skip


def write_dalle3_tars(where: Path, samples: list[dict[str, Any]], per_tar: int) -> list[Path]:
    where.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in range(0, len(samples), per_tar):
        path = where / f"data-{t // per_tar:06d}.tar"
        with tarfile.open(path, "w") as tf:
            for i, s in enumerate(samples[t : t + per_tar], start=t):
                stem = s["image_name"].removesuffix(".png")
                add(tf, f"{stem}.png", png(s["width"], s["height"], i))
                add(tf, f"{stem}.json", json.dumps(s).encode())
        paths.append(path)
    return paths


def simpletuner_rows(out: Path, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """What SimpleTuner's parquet metadata backend takes from the dataloader entry fetcher printed."""
    pqc = entry["parquet"]
    table = pq.read_table(pqc["path"]).to_pylist()
    rows = []
    for r in table:
        name = r[pqc["filename_column"]]
        assert pqc["identifier_includes_extension"] and "." in name
        path = Path(entry["instance_data_dir"]) / name
        rows.append({"path": path, "caption": r[pqc["caption_column"]], "size": (r[pqc["width_column"]],
                     r[pqc["height_column"]]), "text": path.with_suffix(".txt").read_text()})  # fmt: skip
    return rows


def check_dalle3_output(out: Path, samples: list[dict[str, Any]]) -> None:
    proc = run_fetcher("--input", "-", "--output", str(out), "--output-format", "files", "--print-simpletuner-config")
    rows = simpletuner_rows(out, json.loads(proc.stdout))
    by_stem = {s["image_name"].removesuffix(".png"): s for s in samples}
    assert sorted(r["path"].name for r in rows) == sorted(s["image_name"] for s in samples)  # not "…bpng.png"
    for r in rows:
        s = by_stem[r["path"].stem]
        with Image.open(r["path"]) as img:
            assert img.size == r["size"] == (s["width"], s["height"])
        assert r["caption"] == r["text"] == s["short_caption"]


def test_seed_001_dalle3_tars_to_simpletuner(tmp_path: Path) -> None:
    samples = dalle3_samples(9)
    write_dalle3_tars(tmp_path / "dalle3", samples, per_tar=4)
    (tmp_path / "dalle3" / "README.md").write_text("# the dataset card\n")
    out = tmp_path / "out"
    proc = run_fetcher("--input", str(tmp_path / "dalle3"), "--input-format", "webdataset",
                       "--caption-col", "short_caption", "--key-col", "image_name", "--save-columns", "long_caption",
                       "--output", str(out), "--output-format", "files", "--samples-per-tar", "5",
                       "--metrics-address", "", *AS_IS)  # fmt: skip
    assert "ok          9" in proc.stderr and "failed      0" in proc.stderr
    check_dalle3_output(out, samples)
    res = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("0000?.parquet"))]).to_pylist()
    assert [r["long_caption"] for r in res] == [s["long_caption"] for s in samples]
    assert all(r["url"].startswith("tar://") and r["url"].endswith(".tar") for r in res)


def test_seed_002_extracted_folder_with_stray_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same data already extracted to data/ (png + json), with a README.txt, a _SUCCESS marker and a
    sidecar whose image is missing: only the images are rows, the rest is skipped and said so."""
    samples = dalle3_samples(7)
    data = tmp_path / "data"
    data.mkdir()
    for i, s in enumerate(samples):
        stem = data / s["image_name"].removesuffix(".png")
        stem.with_suffix(".png").write_bytes(png(s["width"], s["height"], i))
        stem.with_suffix(".json").write_text(json.dumps(s))
    (data / "README.txt").write_text("downloaded from the hub\n")
    (data / "_SUCCESS").write_text("")
    (data / "lost.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        files = open_inputs(str(data), InputOptions(input_format="folder", caption_col="short_caption"))
    assert sum(f.num_rows for f in files) == len(samples)
    assert "3 other file(s) skipped: README.txt, _SUCCESS, lost.json" in caplog.text
    out = tmp_path / "out"
    proc = run_fetcher("--input", str(data), "--input-format", "folder", "--caption-col", "short_caption",
                       "--key-col", "image_name", "--output", str(out), "--output-format", "files",
                       "--metrics-address", "", *AS_IS)  # fmt: skip
    assert "ok          7" in proc.stderr and "README.txt" in proc.stderr
    check_dalle3_output(out, samples)


def test_tars_through_fsspec_urls(tmp_path: Path) -> None:
    """``file://`` and an in-memory file system stand for remote tar stores (hf:// is the same path)."""
    samples = dalle3_samples(5)
    (tar,) = write_dalle3_tars(tmp_path / "src", samples, per_tar=5)
    common = ["--input-format", "webdataset", "--caption-col", "short_caption", "--key-col", "image_name",
              "--output-format", "files", "--metrics-address", "", "--processes", "1", *AS_IS]  # fmt: skip
    run_fetcher("--input", f"file://{tar}", "--output", str(tmp_path / "o1"), *common)
    check_dalle3_output(tmp_path / "o1", samples)
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/dalle3/data-000000.tar", tar.read_bytes())
    fs.pipe("/bucket/dalle3/.gitattributes", b"*.tar filter=lfs\n")
    try:
        assert discover("memory://bucket/dalle3", "webdataset") == ["memory:///bucket/dalle3/data-000000.tar"]
        stats = run(load_config(["--input", "memory://bucket/dalle3", "--output", str(tmp_path / "o2"), *common]))
        assert stats.ok == 5
    finally:
        fs.rm("/bucket", recursive=True)
    check_dalle3_output(tmp_path / "o2", samples)


def write_sharegpt4o(raw: Path, n: int) -> list[dict[str, Any]]:
    """raw/text_to_image.json (one JSON array) + raw/text_to_image_part_{0,1}.tar of the images."""
    raw.mkdir(parents=True)
    entries = [
        {"input_prompt": f"A prompt number {i}, with «unicode»", "output_image": f"image/{17400 + i}.png",
         "output_image_resolution": [80 + 16 * (i % 4), 60 + 8 * (i % 3)]}
        for i in range(n)
    ]  # fmt: skip
    for part in range(2):
        with tarfile.open(raw / f"text_to_image_part_{part}.tar", "w") as tf:
            for i, e in enumerate(entries):
                if i % 2 == part and i != 3:  # image 3 is missing from every tar
                    add(tf, os.path.basename(e["output_image"]), png(*e["output_image_resolution"], i))
    entries.append({"input_prompt": "escape", "output_image": "../../etc/passwd", "output_image_resolution": [1, 1]})
    entries.append({"input_prompt": "abs", "output_image": "/etc/hostname", "output_image_resolution": [1, 1]})
    (raw / "text_to_image.json").write_text(json.dumps(entries, indent=2, ensure_ascii=False))
    return entries


def caption_dataset(data_path: Path, image_folder: Path) -> list[tuple[Image.Image, str, tuple[int, int]]]:
    """What seed 004's CaptionDataset does with data.json: image path under image_folder, caption, size."""
    items = []
    for e in json.loads(data_path.read_text(encoding="utf-8")):
        img = Image.open(image_folder / e["image"])
        img.load()
        items.append((img, e["caption"], (e["width"], e["height"])))
    return items


def test_seed_004_json_manifest_and_tars_to_data_json_and_imagefolder(tmp_path: Path) -> None:
    entries = write_sharegpt4o(tmp_path / "raw", 8)
    out = tmp_path / "sharegpt-4o-image"
    proc = run_fetcher("--input", str(tmp_path / "raw" / "text_to_image.json"), "--input_format", "json",
                       "--url-col", "output_image", "--caption-col", "input_prompt", "--images-from",
                       str(tmp_path / "raw"), "--save-columns", "output_image_resolution", "--output", str(out),
                       "--output-format", "files", "--samples-per-tar", "4", "--metrics-address", "",
                       "--resize-mode", "no")  # fmt: skip
    assert "ok          7" in proc.stderr
    res = {r["url"]: r for p in sorted(out.glob("0000?.parquet")) for r in pq.read_table(p).to_pylist()}
    assert res["image/17403.png"]["error_message"] == "missing_file"
    assert res["../../etc/passwd"]["error_message"] == "invalid_url"  # never read outside --images-from
    assert res["/etc/hostname"]["error_message"] == "invalid_url"
    items = caption_dataset(out / "data.json", out)
    by_caption = {e["input_prompt"]: e for e in entries}
    assert len(items) == 7
    for img, caption, size in items:
        assert img.size == size == tuple(by_caption[caption]["output_image_resolution"])
    # Hugging Face imagefolder, offline, through metadata.parquet's file_name column
    code = (
        "import json, sys; from datasets import load_dataset;"
        "ds = load_dataset('imagefolder', data_dir=sys.argv[1], split='train');"
        "print(json.dumps([[r['caption'], list(r['image'].size), r['output_image_resolution']] for r in ds]))"
    )
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    got = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env,
                         timeout=120, cwd=ROOT)  # fmt: skip
    assert got.returncode == 0, got.stderr[-2000:]
    rows = json.loads(got.stdout.strip().splitlines()[-1])
    assert len(rows) == 7
    for caption, size, resolution in rows:
        assert size == resolution == by_caption[caption]["output_image_resolution"]


def test_local_files_only_when_asked(tmp_path: Path) -> None:
    (tar,) = write_dalle3_tars(tmp_path / "t", dalle3_samples(2), per_tar=2)
    proc = run_fetcher("--input", str(tar), "--output", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "pass --input-format webdataset" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # a URL list naming local files: the SSRF guard refuses them, even beside a local run's flags
    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [f"file://{tar}", str(tar)], "caption": ["a", "b"]}), urls)
    run_fetcher("--input", str(urls), "--output", str(tmp_path / "o2"), "--metrics-address", "")
    res = pq.read_table(tmp_path / "o2" / "00000.parquet").to_pylist()
    assert [r["error_message"] for r in res] == ["unsupported_scheme", "unsupported_scheme"]


def test_folder_of_url_lists_reads_only_the_lists(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """15.3: README.txt and _SUCCESS beside txt URL lists are not rows (they used to shift every key)."""
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "part-0.txt").write_text("".join(f"http://h.test/{i}.jpg\n" for i in range(5)))
    (lists / "part-1.txt").write_text("".join(f"http://h.test/{i}.jpg\n" for i in range(5, 8)))
    (lists / "README.txt").write_text("These lists come from\nsomewhere.\n")
    (lists / "notes.txt").write_text("todo: rerun\n")
    (lists / "_SUCCESS").write_text("")
    with caplog.at_level(logging.WARNING):
        files = open_inputs(str(lists), InputOptions(input_format="txt", caption_col=""))
    assert [Path(f.path).name for f in files] == ["part-0.txt", "part-1.txt"]
    assert sum(f.num_rows for f in files) == 8
    assert "skipped 3 other file(s): README.txt, _SUCCESS, notes.txt" in caplog.text
    # auto: one format per folder (the parquet), never the notes beside it
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(pa.table({"url": ["http://h.test/a.jpg"], "caption": ["c"]}), mixed / "a.parquet")
    (mixed / "urls-backup.txt").write_text("http://h.test/b.jpg\n")
    assert [Path(f.path).name for f in open_inputs(str(mixed), InputOptions())] == ["a.parquet"]


def test_json_array_is_streamed_element_by_element(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Elements cross read-chunk boundaries anywhere (strings holding ']' and ',' too); errors are one line."""
    monkeypatch.setattr(json_array, "_CHUNK", 5)
    data = [{"url": f"http://h.test/{i}", "caption": "], [x" * i, "n": [1, {"q": "}"}]} for i in range(30)]
    for text in (json.dumps(data), json.dumps(data, indent=3), "[]", " \n[ ] "):
        got = list(json_array.iter_objects(io.BytesIO(text.encode()), "m.json"))
        assert got == json.loads(text)
    lines = Path(tmp_path / "lines.json")  # a .json file of JSON Lines stays readable
    lines.write_text("".join(json.dumps(d) + "\n" for d in data))
    files = open_inputs(str(lines), InputOptions())
    assert files[0].source.fmt == "jsonl" and files[0].num_rows == len(data)
    array = Path(tmp_path / "array.jsonl")  # an array named .jsonl: the error says what to do
    array.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="pass --input-format json"):
        open_inputs(str(array), InputOptions())
    assert open_inputs(str(array), InputOptions(input_format="json"))[0].num_rows == len(data)
    for broken, why in (('[{"a": 1}', "not closed"), ('[{"a": 1} {"b": 2}]', "expected ','"), ('[{"a": ', "broken")):
        with pytest.raises(ConfigError, match=why):
            list(json_array.iter_objects(io.BytesIO(broken.encode()), "m.json"))


def test_sidecar_text_is_the_caption_and_imageless_samples_are_recorded(tmp_path: Path) -> None:
    """A folder of image + .txt (the layout most trainers use) needs no --caption-col; a tar sample
    without an image is a row that fails as missing_url, so every key after it stays in place."""
    folder = tmp_path / "train"
    folder.mkdir()
    for i in range(3):
        (folder / f"pexels-{i}.jpg").write_bytes(png(40, 30, i))
        (folder / f"pexels-{i}.txt").write_text(f"  a photo {i}\n")
    opts = InputOptions(input_format="folder", key_col="__key__")
    files = open_inputs(str(folder), opts)
    rows = list(iter_rows(files, plan_tars(3, 10, (0, 1))[0], opts, 10))
    assert [(r.key, r.caption, Path(r.url).name) for r in rows] == [
        (f"pexels{i}", f"a photo {i}", f"pexels-{i}.jpg") for i in range(3)
    ]
    with tarfile.open(tmp_path / "t.tar", "w") as tf:
        add(tf, "a.jpg", png(40, 30, 1))
        add(tf, "a.txt", b"first")
        add(tf, "b.json", b"{}")  # no image
        add(tf, "c.jpg", png(40, 30, 2))
    opts = InputOptions(input_format="webdataset")
    files = open_inputs(str(tmp_path / "t.tar"), opts)
    rows = list(iter_rows(files, plan_tars(3, 10, (0, 1))[0], opts, 10))
    assert [(r.url, r.caption) for r in rows] == [
        (f"tar://a.jpg::{tmp_path / 't.tar'}", "first"),
        (None, None),
        (f"tar://c.jpg::{tmp_path / 't.tar'}", None),
    ]
    out = tmp_path / "out"
    run_fetcher("--input", str(tmp_path / "t.tar"), "--input-format", "webdataset", "--output", str(out),
                "--metrics-address", "")  # fmt: skip
    res = pq.read_table(out / "00000.parquet").to_pylist()
    assert [r["error_message"] for r in res] == [None, "missing_url", None]
    assert res[1]["error_detail"] == "no image file in this sample"


def test_one_run_one_kind_of_fetch(tmp_path: Path) -> None:
    """URL lists and local images are not mixed in one run, nor --images-from with tars that carry images."""
    from fetcher.fetchers import LocalRoots, local_roots
    from fetcher.readers import reader

    tar, folder, urls = (
        ("a.tar", reader("webdataset")),
        (str(tmp_path), reader("folder")),
        ("u.parquet", reader("parquet")),
    )
    assert local_roots([urls], "") is None
    assert local_roots([tar, folder], "") == LocalRoots(folders=(str(tmp_path),), tars=("a.tar",))
    with pytest.raises(ConfigError, match="mixes URL lists and local images"):
        local_roots([urls, tar], "")
    with pytest.raises(ConfigError, match="--images-from"):
        local_roots([tar], str(tmp_path))
    (tmp_path / "p0.tar").write_bytes(b"")
    assert local_roots([urls], str(tmp_path)) == LocalRoots(folders=(str(tmp_path),), tars=(str(tmp_path / "p0.tar"),))
