"""A late second result for a row never replaces the first: checked in what the tar and parquet hold.

The watchdog fails a stuck row as ``timeout``; the fetch may still finish later. Whichever result came
first is the row's result, in memory, in the results parquet, in the marker's counts and in the tar.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq

from fetcher.records import ImageOutcome, InputRow, Reason, SampleResult, Status
from storage.layout import ShardFiles
from storage.shard import ShardWriter


def _row(i: int) -> InputRow:
    return InputRow(tar_index=7, row_in_tar=i, key=f"00007{i:04d}", url=f"http://h/{i}.jpg", caption=f"c{i}")


def _success(i: int, payload: bytes) -> SampleResult:
    image = ImageOutcome(data=payload, width=2, height=2, original_width=4, original_height=4, source_format="JPEG")
    return SampleResult(row=_row(i), status=Status.SUCCESS, image=image, http_status=200, attempts=1)


Stored = tuple[dict[str, dict[str, object]], dict[str, bytes], dict[str, object]]  # parquet rows, tar members, marker


def _finish(tmp: Path, first: list[SampleResult], late: list[SampleResult]) -> Stored:
    files = ShardFiles(str(tmp), 7)
    w = ShardWriter(files, 2, [])
    for res in first:
        assert w.add(res)
    for res in late:
        assert not w.add(res), "a second result for a row must be refused"
    w.reading_done = True
    assert w.complete
    # The writer keeps the first result's record for each row (what the parquet and journal get).
    kept = [(r["key"], r["status"], r["error_message"], r["error_detail"]) for r in w.records]
    want = [(f.row.key, f.status.value, f.reason.value if f.reason else None, f.detail or None) for f in first]
    assert kept == want, "the first result must be the kept one"
    w.finalize()
    rows = {str(r["key"]): r for r in pq.read_table(files.parquet).to_pylist()}
    members: dict[str, bytes] = {}
    with tarfile.open(files.tar) as tf:
        for m in tf.getmembers():
            assert m.name not in members, f"{m.name} twice in the tar"
            members[m.name] = tf.extractfile(m).read()  # type: ignore[union-attr]
    return rows, members, json.loads(Path(files.stats).read_text())


def test_late_success_after_watchdog_timeout_is_ignored(tmp_path: Path) -> None:
    first = [SampleResult.failure(_row(0), Reason.TIMEOUT, "shard watchdog"), _success(1, b"first-1")]
    late = [_success(0, b"late-0"), SampleResult.failure(_row(1), Reason.HTTP_404, "late")]
    rows, members, stats = _finish(tmp_path, first, late)
    assert (rows["000070000"]["status"], rows["000070000"]["error_message"]) == ("failed_to_download", "timeout")
    assert rows["000070000"]["error_detail"] == "shard watchdog"
    assert (rows["000070001"]["status"], rows["000070001"]["error_message"]) == ("success", None)
    assert sorted(members) == ["000070001.jpg", "000070001.json", "000070001.txt"]  # no late sample 0
    assert members["000070001.jpg"] == b"first-1"
    assert (stats["count"], stats["successes"], stats["status_dict"]) == (2, 1, {"timeout": 1})


def test_late_second_success_does_not_replace_the_first_image(tmp_path: Path) -> None:
    first = [_success(0, b"first-0"), _success(1, b"first-1")]
    late = [_success(0, b"late-0"), _success(1, b"late-1")]
    rows, members, stats = _finish(tmp_path, first, late)
    assert [m for m in members if m.endswith(".jpg")] == ["000070000.jpg", "000070001.jpg"]
    assert (members["000070000.jpg"], members["000070001.jpg"]) == (b"first-0", b"first-1")
    assert all(r["status"] == "success" for r in rows.values())
    assert (stats["count"], stats["successes"]) == (2, 2)
