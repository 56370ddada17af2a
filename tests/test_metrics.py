"""Metrics, progress view, summary and the shard/monitoring flags: in-process checks (no network)."""

from __future__ import annotations

import io
import json
import subprocess

import pytest

from fetcher.config import load_config
from fetcher.metrics import HTTP_CLASSES, REASON_LABELS, Metrics, parse_address, reason_label, status_class
from fetcher.options import ConfigError
from fetcher.progress import ProgressView, RateWindow, format_duration, log_line, progress_bar
from fetcher.records import FetchOutcome, ImageOutcome, InputRow, Reason, SampleResult, Status
from fetcher.summary import RunStats
from tests.monitoring import samples, tool, total

ROW = InputRow(tar_index=0, row_in_tar=0, key="000000000", url="http://127.0.0.1/x.jpg", caption=None)


def test_every_reason_maps_to_one_label_value_and_its_status() -> None:
    labels = [reason_label(r) for r in Reason]
    assert len(set(labels)) == len(Reason), "two reasons share a label value"
    assert set(labels) == set(REASON_LABELS)
    m = Metrics()
    for r in Reason:
        m.row_done(SampleResult.failure(ROW, r, "x"))
    parsed = samples(m.exposition().decode())
    for r in Reason:
        assert parsed[("fetcher_row_failures_total", (("reason", r.value),))] == 1, r
    by_status = {s: parsed[("fetcher_rows_total", (("status", s.value),))] for s in Status}
    assert by_status[Status.SUCCESS] == 0
    for s in Status:
        if s is not Status.SUCCESS:
            assert by_status[s] == sum(1 for r in Reason if r.status is s)
    # Only the fixed label values ever appear: nothing from the URL or host leaks into labels.
    reasons_seen = {dict(lbl)["reason"] for (n, lbl), _ in parsed.items() if n == "fetcher_row_failures_total"}
    assert reasons_seen == set(REASON_LABELS)
    assert "127.0.0.1" not in m.exposition().decode()


def test_status_class_and_events() -> None:
    assert [status_class(c) for c in (200, 204, 301, 404, 429, 503, None, 99, 700)] == [
        "2xx", "2xx", "3xx", "4xx", "4xx", "5xx", "none", "none", "none",
    ]  # fmt: skip
    assert set(HTTP_CLASSES) >= {status_class(c) for c in range(90, 700)}
    m = Metrics()
    m.fetched(FetchOutcome(body=b"x" * 1000, http_status=200, fetch_ms=120))
    m.fetched(FetchOutcome(reason=Reason.TIMEOUT, fetch_ms=30000))
    m.imaged(ImageOutcome(data=b"y", cpu_ms=40))
    m.row_done(SampleResult(row=ROW, status=Status.SUCCESS, bytes_downloaded=1000, bytes_written=300))
    p = samples(m.exposition().decode())
    assert p[("fetcher_http_responses_total", (("code_class", "2xx"),))] == 1
    assert p[("fetcher_http_responses_total", (("code_class", "none"),))] == 1
    assert total(p, "fetcher_downloaded_bytes_total") == 1000
    assert total(p, "fetcher_written_bytes_total") == 300
    assert total(p, "fetcher_fetch_duration_seconds_count") == 2
    assert total(p, "fetcher_fetch_duration_seconds_sum") == pytest.approx(30.12)
    assert p[("fetcher_fetch_duration_seconds_bucket", (("le", "0.25"),))] == 1
    assert total(p, "fetcher_imaging_duration_seconds_sum") == pytest.approx(0.04)
    assert total(p, "fetcher_shard_rows_done") == 1
    assert total(p, "fetcher_disk_free_bytes") > 0


@pytest.mark.skipif(tool("promtool") is None, reason="promtool not installed (Debian package 'prometheus')")
def test_promtool_accepts_exposition_with_every_label_value() -> None:
    m = Metrics(shard=(3, 16))
    for r in Reason:
        m.row_done(SampleResult.failure(ROW, r))
    proc = subprocess.run(["promtool", "check", "metrics"], input=m.exposition(), capture_output=True, timeout=30)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc


def test_metrics_address_parsing() -> None:
    assert parse_address("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_address("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_address("[::1]:9108") == ("::1", 9108)
    assert parse_address("") is None and parse_address("off") is None
    for bad in ("9108", "localhost", "h:99999", ":9108", "h:x"):
        with pytest.raises(ValueError):
            parse_address(bad)
    with pytest.raises(ConfigError, match="--metrics-address"):
        load_config(["--input", "a", "--output", "b", "--metrics-address", "nope"])


def test_shard_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--input", "a", "--output", "b"]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "5")
    monkeypatch.setenv("MY_INDEX", "2")
    assert load_config([*base, "--shard", "$INDEX/16"]).run.shard_pair == (5, 16)
    assert load_config([*base, "--shard", "$INDEX/4", "--shard-index-env", "MY_INDEX"]).run.shard_pair == (2, 4)
    assert load_config([*base, "--shard", "$MY_INDEX/3"]).run.shard_pair == (2, 3)
    assert load_config([*base, "--shard", "1/2"]).run.shard_pair == (1, 2)
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        load_config([*base, "--shard", "$INDEX/4", "--shard-index-env", "NOT_SET_ANYWHERE"])
    with pytest.raises(ConfigError, match="out of range"):
        load_config([*base, "--shard", "$INDEX/4"])  # 5 of 4


def stats_with_failures() -> RunStats:
    st = RunStats(total_rows=200, tars_total=2)
    for i in range(100):
        if i % 10 == 0:
            res = SampleResult.failure(ROW, Reason.HTTP_404 if i % 20 else Reason.TIMEOUT)
        else:
            res = SampleResult(row=ROW, status=Status.SUCCESS, bytes_downloaded=200_000, bytes_written=20_000)
        st.record(res)
    return st


def test_summary_table_has_reasons_throughput_and_bytes() -> None:
    text = stats_with_failures().format()
    assert "rows        100 of 200" in text
    assert "ok          90 (90.0 %)" in text
    assert "http_404              5       5.0 %" in text and "timeout               5" in text
    assert "images/s" in text and "MB/s downloaded" in text
    assert "18.0 MB downloaded -> 1.8 MB written (10 %, 16.2 MB saved by resizing)" in text


def test_progress_bar_and_log_lines() -> None:
    st = stats_with_failures()
    bar = progress_bar(st)
    assert bar.startswith("[############------------] 100/200 rows  50.0 %")
    assert "img/s" in bar and "ok  90.0 %" in bar and "MB/s" in bar and "ETA " in bar
    doc = json.loads(log_line(st, "json", "3/16"))
    assert doc["event"] == "progress" and doc["shard"] == "3/16"
    assert doc["rows_done"] == 100 and doc["rows_total"] == 200
    assert doc["failed_by_reason"] == {"http_404": 5, "timeout": 5}
    text = log_line(st, "text", "3/16")
    assert text.startswith("fetcher progress shard=3/16 rows_done=100 rows_total=200")
    assert "top_failures=timeout:5,http_404:5" in text  # ties keep first-seen order
    assert [format_duration(s) for s in (None, 4.4, 65, 3725)] == ["?", "4s", "1m05s", "1h02m"]


def test_progress_view_picks_bar_on_tty_and_log_elsewhere() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    st = stats_with_failures()
    tty, plain = Tty(), io.StringIO()
    bar_view = ProgressView(st, "auto", "text", 30, "0/1", tty)
    log_view = ProgressView(st, "auto", "json", 30, "0/1", plain)
    assert (bar_view.mode, log_view.mode) == ("bar", "log")
    bar_view.tick()
    bar_view.close()
    log_view.tick()
    log_view.close()
    assert tty.getvalue().startswith("\r[") and tty.getvalue().endswith("\n")
    events = [json.loads(line)["event"] for line in plain.getvalue().splitlines()]
    assert events == ["progress", "summary"]


def test_bar_speeds_follow_the_recent_window() -> None:
    st = RunStats(total_rows=1000)
    win = RateWindow(span=10)
    win.update(st, now=0)
    # A slow first minute, then 50 rows/s for the last 10 s: the bar must show 50/s and ETA 4 s.
    for t, rows in ((50, 100), (60, 300), (70, 800)):
        st.rows_done = st.ok = rows
        st.bytes_downloaded = rows * 100_000
        rates = win.update(st, now=t)
    assert rates.rows == pytest.approx(50) and rates.images == pytest.approx(50)
    assert rates.bytes == pytest.approx(5e6)
    bar = progress_bar(st, rates)
    assert "50.0 img/s" in bar and "5.00 MB/s" in bar and bar.endswith("ETA 4s")
