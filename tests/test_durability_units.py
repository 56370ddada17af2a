"""Unit tests of the durability pieces: sizes, options, result round trip, writer guards."""

from __future__ import annotations

from pathlib import Path

import pytest

from fetcher.config import load_config
from fetcher.lifecycle import parse_size
from fetcher.options import ConfigError
from fetcher.records import ImageOutcome, InputRow, Reason, SampleResult, Status
from fetcher.retry_failed import result_from_record
from storage.layout import ShardFiles
from storage.results import result_record
from storage.shard import ShardWriter


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("123", 123), ("1k", 1024), ("512M", 512 * 2**20), ("2GiB", 2 * 2**30), ("1.5T", 3 * 2**39)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--min-free-disk", "lots"], "--min-free-disk"),
        (["--worker-max-memory", "10M"], "at least 256M"),
        (["--allow-network", "10.0.0.0/33"], "--allow-network: '10.0.0.0/33' is not an address"),
        (["--shutdown-timeout", "-1"], "--shutdown-timeout"),
    ],
)
def test_durability_flags_validated(args: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_config(["--input", "x", "--output", "y", *args])


def test_allow_network_is_repeatable_and_comes_from_env_and_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(["--input", "x", "--output", "y", "--allow-network", "127.0.0.2/32",
                       "--allow-network", "10.1.0.0/16, fd00::/8"])  # fmt: skip
    assert cfg.http.allow_network == ["127.0.0.2/32", "10.1.0.0/16", "fd00::/8"]
    monkeypatch.setenv("FETCHER_ALLOW_NETWORK", "10.0.0.0/8,192.168.0.0/16")
    assert load_config(["--input", "x", "--output", "y"]).http.allow_network == ["10.0.0.0/8", "192.168.0.0/16"]
    monkeypatch.delenv("FETCHER_ALLOW_NETWORK")
    toml = tmp_path / "c.toml"
    toml.write_text('allow-network = ["10.2.0.0/16"]\n')
    assert load_config(["--input", "x", "--output", "y", "--config", str(toml)]).http.allow_network == ["10.2.0.0/16"]


def _row(i: int) -> InputRow:
    return InputRow(tar_index=3, row_in_tar=i, key=f"00003{i:04d}", url=f"http://h/{i}", caption="c", extra={"e": i})


def test_result_record_round_trip() -> None:
    ok = SampleResult(row=_row(1), status=Status.SUCCESS, attempts=2, http_status=200, bytes_downloaded=10,
                      image=ImageOutcome(width=4, height=3, original_width=8, original_height=6, hash="ab",
                                         source_format="JPEG", cpu_ms=1.5))  # fmt: skip
    bad = SampleResult.failure(_row(2), Reason.HTTP_404, "HTTP 404", http_status=404, attempts=1)
    for res in (ok, bad):
        rec = result_record(res) | {"e": res.row.extra["e"]}
        assert result_record(result_from_record(rec, 3, ["e"])) == result_record(res)
        assert result_from_record(rec, 3, ["e"]).row == res.row


def test_writer_ignores_a_second_result_for_a_row(tmp_path: Path) -> None:
    w = ShardWriter(ShardFiles(str(tmp_path), 3), 2, [])
    assert w.add(SampleResult.failure(_row(0), Reason.TIMEOUT, "watchdog"))
    assert not w.add(SampleResult.failure(_row(0), Reason.HTTP_404))
    w.reading_done = True
    assert not w.complete
    assert w.add(SampleResult.failure(_row(1), Reason.HTTP_404))
    assert w.complete
    w.finalize()
    assert ShardFiles(str(tmp_path), 3).is_complete()
