"""Reruns that would make different tars are refused with one line (issue 14.5); same ones resume."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fetcher.farm import Farm
from storage.manifest import RUN_FILE, RunRecord, differences
from tests.conftest import results_table, run_fetcher, write_urls
from tests.output_checks import check_output


def _urls(farm: Farm, n: int, tag: str) -> list[str]:
    return [farm.url(f"/img/small.jpg?rr={tag}{i}") for i in range(n)]


def _fetch(inp: Path, out: Path, *flags: str, check: bool = True) -> tuple[int, str]:
    proc = run_fetcher("--input", str(inp), "--output", str(out), "--allow-private-networks", "--processes", "1",
                       "--min-free-disk", "0", *flags, check=check)  # fmt: skip
    return proc.returncode, proc.stderr


def _refused(code: int, stderr: str, *needles: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("fetcher: error: ") and "holds another run" in last, stderr
    for needle in needles:
        assert needle in last, last


def test_rerun_with_other_samples_per_tar_is_refused(farm: Farm, tmp_path: Path) -> None:
    inp = write_urls(tmp_path / "urls.parquet", _urls(farm, 12, "spt"))
    out = tmp_path / "out"
    _fetch(inp, out, "--samples-per-tar", "6")
    before = sorted(p.name for p in out.iterdir())
    _refused(*_fetch(inp, out, "--samples-per-tar", "4", check=False), "samples_per_tar was 6, now 4")
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written
    assert len(check_output(out, final=True)) == 12  # and nothing duplicated


def test_prepended_rows_are_refused(farm: Farm, tmp_path: Path) -> None:
    urls = _urls(farm, 10, "pre")
    inp = write_urls(tmp_path / "urls.parquet", urls)
    out = tmp_path / "out"
    _fetch(inp, out, "--samples-per-tar", "5")
    write_urls(inp, _urls(farm, 3, "new") + urls)
    _refused(*_fetch(inp, out, "--samples-per-tar", "5", check=False), "had 10 rows, now 13")


def test_same_command_resumes(farm: Farm, tmp_path: Path) -> None:
    inp = write_urls(tmp_path / "urls.parquet", _urls(farm, 10, "same"))
    out = tmp_path / "out"
    _fetch(inp, out, "--samples-per-tar", "5")
    record = (out / RUN_FILE).read_bytes()
    assert json.loads(record)["options"]["samples_per_tar"] == 5
    (out / "00001_stats.json").unlink()  # tar 1 unfinished: the rerun must redo it, not refuse
    code, err = _fetch(inp, out, "--samples-per-tar", "5", "--timeout", "9")  # a network option may change
    assert code == 0, err
    assert (out / RUN_FILE).read_bytes() == record
    assert len(check_output(out, final=True)) == 10


def test_shards_share_one_record(farm: Farm, tmp_path: Path) -> None:
    inp = write_urls(tmp_path / "urls.parquet", _urls(farm, 8, "shards"))
    out = tmp_path / "out"
    _fetch(inp, out, "--samples-per-tar", "4", "--shard", "0/2")
    _fetch(inp, out, "--samples-per-tar", "4", "--shard", "1/2")
    assert len(results_table(out)) == 8


def test_new_run_needs_an_empty_folder(farm: Farm, tmp_path: Path) -> None:
    inp = write_urls(tmp_path / "urls.parquet", _urls(farm, 4, "new"))
    out = tmp_path / "out"
    _fetch(inp, out, "--samples-per-tar", "4")
    code, err = _fetch(inp, out, "--samples-per-tar", "2", "--new-run", check=False)
    assert code == 2 and "--new-run" in err.strip().splitlines()[-1] and "never mixed" in err, err
    # A run that recorded itself but wrote nothing else may be replaced on purpose.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / RUN_FILE).write_bytes((out / RUN_FILE).read_bytes())
    _fetch(inp, empty, "--samples-per-tar", "2", "--new-run")
    assert json.loads((empty / RUN_FILE).read_bytes())["options"]["samples_per_tar"] == 2
    assert len(check_output(empty, final=True)) == 4


def test_differences_name_options_rows_and_files() -> None:
    old = RunRecord([{"name": "a.parquet", "rows": 10, "bytes": 100}], {"samples_per_tar": 5, "image_size": 256})
    assert differences(old, old) == []
    new = RunRecord([{"name": "a.parquet", "rows": 10, "bytes": 120}], {"samples_per_tar": 5, "image_size": 512})
    assert differences(old, new) == ["image_size was 256, now 512", "input a.parquet had 100 bytes, now 120"]
    other = RunRecord([{"name": "b.parquet", "rows": 10, "bytes": None}], old.options)
    assert differences(old, other) == ["the input files were a.parquet, now b.parquet"]


def test_unreadable_record_is_refused(tmp_path: Path) -> None:
    inp = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.2:9/a.jpg"], "caption": ["c"]}), inp)
    out = tmp_path / "out"
    out.mkdir()
    (out / RUN_FILE).write_text("{not json")
    code, err = _fetch(inp, out, check=False)
    assert code == 2 and RUN_FILE in err.strip().splitlines()[-1], err


def test_output_without_a_record_is_adopted_with_a_warning(farm: Farm, tmp_path: Path) -> None:
    inp = write_urls(tmp_path / "urls.parquet", _urls(farm, 4, "legacy"))
    out = tmp_path / "out"
    _fetch(inp, out, "--samples-per-tar", "2")
    (out / RUN_FILE).unlink()  # as an output written before run records existed
    code, err = _fetch(inp, out, "--samples-per-tar", "2")
    assert code == 0 and "without a run record" in err, err
    assert json.loads((out / RUN_FILE).read_bytes())["inputs"][0]["rows"] == 4
