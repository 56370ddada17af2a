"""The human side of the CLI (issue 15 items 4-12): img2dataset flags, --help, CPU count, env typos,
the progress line's width, log routing, run hints, nullable result ints, and the skip guard."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fetcher.config import OPTION_CLASSES, load_config, make_parser
from fetcher.cpus import available_cpus, cgroup_cpu_limit
from fetcher.farm import Farm
from fetcher.logs import setup_logging
from fetcher.options import ConfigError, unknown_env
from fetcher.progress import BarField, ProgressView, Rates, progress_bar
from fetcher.records import InputRow, SampleResult, Status
from fetcher.summary import RunStats
from tests.conftest import ROOT, results_table, run_fetcher, write_urls
from tests.monitoring import free_port, http_get, samples, total

ROW = InputRow(key="000000000", tar_index=0, row_in_tar=0, url="http://example.com/a.jpg", caption="c")

SEED_003 = Path("/work/shared/seeds")


def seed_003_command() -> list[str]:
    """The first img2dataset command of seed 003 (LAION recipe), as the user wrote it; a copy when the
    seeds folder is not there (a fresh clone)."""
    found = sorted(SEED_003.glob("003_*.txt")) if SEED_003.is_dir() else []
    if found:
        text = found[0].read_text()
        block = text.split("```shell", 1)[1].split("```", 1)[0]
        line = block.split("img2dataset ", 1)[1].split("\n\n")[0].split("\n#")[0]
        return shlex.split(line.replace("\\\n", " "))
    return shlex.split(
        """--url_list data/laion-high-resolution --input_format "parquet" --url_col "URL" --caption_col "TEXT"
        --output_format files --output_folder data/laion/laion-high-resolution --processes_count 30
        --thread_count 128 --image_size 1024 --resize_only_if_bigger=True --resize_mode="no"
        --skip_reencode=True --save_additional_columns '["similarity","hash","punsafe","pwatermark","LANGUAGE"]'
        --enable_wandb True"""
    )


# -- item 4: img2dataset flags ---------------------------------------------------------------------------
def test_seed_003_img2dataset_command_parses_verbatim(caplog: pytest.LogCaptureFixture) -> None:
    argv = seed_003_command()
    assert "--enable_wandb" in argv and "--save_additional_columns" in argv
    with caplog.at_level(logging.WARNING):
        cfg = load_config(argv)
    assert cfg.run.input == "data/laion-high-resolution" and cfg.run.processes == 30
    assert cfg.scheduler.concurrency == 128 and cfg.imaging.image_size == 1024
    assert cfg.imaging.resize_mode == "no" and cfg.imaging.skip_reencode and cfg.imaging.resize_only_if_bigger
    assert cfg.input.save_list == ["similarity", "hash", "punsafe", "pwatermark", "LANGUAGE"]
    assert cfg.img2dataset.enable_wandb
    assert "--enable_wandb" in caplog.text and "/metrics" in caplog.text


def test_every_img2dataset_147_download_parameter_is_a_flag() -> None:
    # img2dataset 1.47.0 img2dataset/main.py download(...) parameters, in order.
    params = [
        "url_list",
        "image_size",
        "output_folder",
        "processes_count",
        "resize_mode",
        "resize_only_if_bigger",
        "upscale_interpolation",
        "downscale_interpolation",
        "encode_quality",
        "encode_format",
        "skip_reencode",
        "output_format",
        "input_format",
        "url_col",
        "caption_col",
        "bbox_col",
        "thread_count",
        "number_sample_per_shard",
        "extract_exif",
        "save_additional_columns",
        "timeout",
        "enable_wandb",
        "wandb_project",
        "oom_shard_count",
        "compute_hash",
        "verify_hash",
        "distributor",
        "subjob_size",
        "retries",
        "disable_all_reencoding",
        "min_image_size",
        "max_image_area",
        "max_aspect_ratio",
        "incremental_mode",
        "max_shard_retry",
        "user_agent_token",
        "disallowed_header_directives",
    ]
    flags = {s for a in make_parser()._actions for s in a.option_strings}
    assert [p for p in params if f"--{p}" not in flags] == []
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## img2dataset flags", 1)[1].split("\n## ", 1)[0]
    assert [p for p in params if f"`--{p}`" not in table] == []


def test_img2dataset_values_map_onto_fetcher_options() -> None:
    base = ["--url_list", "x", "--output_folder", "y"]
    cfg = load_config([*base, "--caption_col", "None", "--disable_all_reencoding", "True",
                       "--verify_hash", '["md5sum","md5"]', "--max_image_area", "inf",
                       "--disallowed_header_directives", '["noai"]', "--downscale_interpolation", "area"])  # fmt: skip
    assert cfg.input.caption_col == ""
    assert cfg.imaging.resize_mode == "no" and cfg.imaging.skip_reencode
    assert (cfg.imaging.verify_hash, cfg.imaging.hash) == ("md5sum", "md5")
    assert cfg.imaging.max_image_area == 0
    assert cfg.http.disallowed_header_directives == ["noai"]  # replaces the default list, as img2dataset
    assert cfg.imaging.downscale_interpolation == "area"
    assert load_config([*base, "--disallowed_header_directives", "[]"]).http.deny_directives == frozenset()
    assert load_config(base).http.deny_directives == {"noai", "noimageai", "noindex", "noimageindex"}
    for bad, needle in (
        (["--bbox_col", "boxes"], "does not blur"),
        (["--incremental_mode", "overwrite"], "new --output"),
        (["--distributor", "pyspark"], "--shard i/N"),
        (["--verify_hash", "sha256"], "[COLUMN, ALGORITHM]"),
    ):
        with pytest.raises(ConfigError, match=re.escape(needle)):
            load_config([*base, *bad])


def test_interpolation_flags_change_the_pixels() -> None:
    from PIL import Image

    from fetcher.imaging import ImageOptions, render

    img = Image.effect_noise((97, 61), 80).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    down = {
        m: render(buf.getvalue(), ImageOptions(image_size=20, downscale_interpolation=m))
        for m in ("nearest", "lanczos")
    }
    assert down["nearest"].size == down["lanczos"].size == (32, 20)
    assert down["nearest"].tobytes() != down["lanczos"].tobytes()
    up = {
        m: render(buf.getvalue(), ImageOptions(image_size=122, upscale_interpolation=m)) for m in ("nearest", "bicubic")
    }
    assert up["nearest"].tobytes() != up["bicubic"].tobytes()


# -- item 5: CPUs and env typos ------------------------------------------------------------------------------
def test_available_cpus_honour_affinity_and_cgroup_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == affinity  # no cpu.max: affinity alone
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    assert available_cpus(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    # taskset: a child pinned to one CPU sees one.
    code = "from fetcher.cpus import available_cpus; print(available_cpus())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)  # fmt: skip
    assert out.stdout.strip() == "1"


def test_too_many_processes_and_typoed_env_vars_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_config(["--input", "x", "--output", "y", "--processes_count", str(available_cpus() * 2 + 1)])
    assert "--processes" in caplog.text and "CPU" in caplog.text
    env = {"FETCHER_IMAGE_SIZ": "64", "FETCHER_IMAGE_SIZE": "64", "FETCHER_SHARDS": "4"}
    warnings = unknown_env(OPTION_CLASSES, env)
    assert len(warnings) == 1 and "FETCHER_IMAGE_SIZ " in warnings[0] and "--image-size" in warnings[0]


# -- item 6: one-host lists ------------------------------------------------------------------------------
def test_a_one_host_list_is_told_about_per_host_concurrency(farm: Farm, tmp_path: Path) -> None:
    urls = [farm.url(f"/img/small.jpg?one={i}", 0) for i in range(12)] + [farm.url("/img/small.jpg?other=1", 1)]
    inp = write_urls(tmp_path / "urls.parquet", urls)
    proc = run_fetcher("--input", str(inp), "--output", str(tmp_path / "out"), "--allow-private-networks",
                       "--processes", "1", "--thread_count", "64", "--metrics-address", "")  # fmt: skip
    host = urls[0].split("/")[2].split(":")[0]
    lines = proc.stderr.splitlines()
    said = [i for i, line in enumerate(lines) if "92 % of the first 13 rows are on " + host in line]
    summary = lines.index("fetcher summary")
    assert len(said) == 2 and said[0] < summary < said[1], proc.stderr  # once when seen, once in the summary
    assert "--per-host-concurrency" in lines[said[0]] and "--concurrency 64" in lines[said[0]]
    # Many hosts: nothing to say.
    inp2 = write_urls(tmp_path / "many.parquet", [farm.url(f"/img/small.jpg?m={i}", i % 8) for i in range(16)])
    proc = run_fetcher("--input", str(inp2), "--output", str(tmp_path / "out2"), "--allow-private-networks",
                       "--processes", "1", "--metrics-address", "")  # fmt: skip
    assert "rows are on" not in proc.stderr


# -- item 8: --help ------------------------------------------------------------------------------------------
def test_help_reads_like_a_cli() -> None:
    proc = subprocess.run([sys.executable, "-m", "fetcher", "--help"], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="100"), check=True)  # fmt: skip
    text = proc.stdout
    assert not re.search(r"[A-Z]+OPTIONS\.[A-Z_]+", text), "metavars leak dest names"
    assert "python -m fetcher metadata OUTPUT" in text and "examples:" in text
    assert re.search(r"--input, --url_list PATH +input file.*\(required\)", text.replace("\n", " "))
    assert "--max-bytes-in-flight BYTES" in text and "(default: 128 MiB)" in text and "134217728)" not in text
    assert "--timeout SECONDS" in text and "(default: 30s)" in text
    assert "--resize-only-if-bigger, --resize_only_if_bigger [BOOL]" in text
    for title in ("run:", "imaging:", "politeness and retries", "img2dataset flags"):
        assert title in text
    meta = subprocess.run([sys.executable, "-m", "fetcher", "metadata", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert meta.returncode == 0 and "metadata OUTPUT" in meta.stdout


# -- item 9: the progress line fits the terminal; messages get their own line ----------------------------
def busy_stats() -> RunStats:
    st = RunStats(total_rows=12_345_678, tars_total=1235)
    st.rows_done, st.ok, st.bytes_downloaded = 1_234_567, 1_000_000, 98_765_432_100
    return st


@pytest.mark.parametrize("columns", [40, 60, 79, 99, 200])
def test_progress_bar_fits_and_drops_fields_by_priority(columns: int) -> None:
    rates = Rates(images=1234.5, rows=1500.0, bytes=98e6)
    extra = (BarField("outstanding 1234", 60), BarField("oldest 5m02s", 10))
    line = progress_bar(busy_stats(), rates, columns=columns, extra=extra)
    assert len(line) <= columns, line
    assert "1234567/12345678 rows" in line  # never dropped
    full = progress_bar(busy_stats(), rates, extra=extra)
    assert len(full) > 99  # the unfitted line is the one that wrapped in 80 columns
    if columns < len(full):
        # lowest priority first: 'oldest' (10) before MB/s (20) before ok % (40) before the bar (50) ...
        order = ["oldest", "MB/s", "ok ", "[", "outstanding", "img/s", "ETA"]
        kept = [name in line for name in order]
        assert kept == sorted(kept), (columns, line)  # once one is dropped, every lower one is too
    else:
        assert line == full


def test_log_messages_clear_the_bar_line(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    setup_logging("text")
    view = ProgressView(busy_stats(), "auto", "text", 30, "0/1")
    view.tick()
    logging.getLogger("fetcher.lifecycle").warning("SIGTERM received: stopping")
    view.tick()
    view.close()
    screen = tty.getvalue()
    # The bar is wiped (CR + erase line) before the message, which ends its own line; the bar comes back after.
    assert "\r\x1b[Kfetcher: warning: SIGTERM received: stopping\n\r[" in screen, repr(screen)


# -- items 10 and 12: hints, JSON-only summary, simpletuner, nullable ints ----------------------------------
def test_all_blocked_run_says_what_to_do_and_the_advice_works(farm: Farm, tmp_path: Path) -> None:
    inp = write_urls(tmp_path / "urls.parquet", [farm.url(f"/img/small.jpg?b={i}", i % 3) for i in range(6)])
    out = tmp_path / "out"
    first = run_fetcher("--input", str(inp), "--output", str(out), "--processes", "1", "--metrics-address", "")
    assert "blocked_address" in first.stderr
    hint = next(line for line in first.stderr.splitlines() if "hint" in line and "blocked_address" in line)
    assert "all 6 rows" in hint and "--allow-private-networks" in hint and "--retry-failed" in hint
    again = run_fetcher("--input", str(inp), "--output", str(out), "--processes", "1", "--metrics-address", "",
                        "--allow-private-networks")  # fmt: skip
    assert "already complete: nothing was fetched" in again.stderr and "--retry-failed" in again.stderr
    fixed = run_fetcher("--input", str(inp), "--output", str(out), "--processes", "1", "--metrics-address", "",
                        "--allow-private-networks", "--retry-failed")  # fmt: skip
    assert "hint" not in fixed.stderr, fixed.stderr
    assert [r["status"] for r in results_table(out).to_pylist()] == ["success"] * 6


def test_json_log_format_prints_json_only(farm: Farm, tmp_path: Path) -> None:
    inp = write_urls(tmp_path / "urls.parquet", [farm.url("/img/small.jpg?j=1", 0), farm.url("/status/404", 1)])
    env_typo = dict(os.environ, PYTHONPATH=str(ROOT), FETCHER_IMAGE_SIZ="64")
    proc = subprocess.run(
        [sys.executable, "-m", "fetcher", "--input", str(inp), "--output", str(tmp_path / "out"), "--processes", "1",
         "--allow-private-networks", "--log-format", "json", "--progress", "log", "--metrics-address", ""],
        capture_output=True, text=True, env=env_typo, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is JSON
    assert [d["event"] for d in docs].count("summary") == 1
    (warning,) = [d for d in docs if d["event"] == "log" and d["level"] == "warning"]
    assert "FETCHER_IMAGE_SIZ" in warning["message"]
    # results parquet: a failed row leaves width empty, and pandas reads it as a nullable int, not float64
    df = pd.read_parquet(next((tmp_path / "out").glob("*.parquet")))
    assert str(df["width"].dtype) == "Int32" and str(df["http_status"].dtype) == "Int16"
    assert df["width"].isna().sum() == 1 and df["width"].dropna().iloc[0] > 0


def test_summary_never_reports_negative_savings() -> None:
    st = RunStats(total_rows=1)
    st.record(SampleResult(row=ROW, status=Status.SUCCESS, bytes_downloaded=1_000_000, bytes_written=3_000_000))
    text = st.format()
    assert "saved" not in text and "2.0 MB more than downloaded" in text


def test_print_simpletuner_config_needs_no_input(tmp_path: Path) -> None:
    proc = run_fetcher("--output", str(tmp_path / "pcb"), "--output-format", "files", "--print-simpletuner-config")
    assert json.loads(proc.stdout)["parquet"]["path"] == str(tmp_path / "pcb" / "metadata.parquet")


# -- item 7: a skipped test is not a pass -------------------------------------------------------------------
def test_skipped_tests_fail_the_session_unless_allowed(tmp_path: Path) -> None:
    (tmp_path / "test_s.py").write_text(
        "import pytest\n"
        "def test_a(): pass\n"
        "def test_b(): pytest.skip('tool missing')\n"
        "@pytest.mark.skip_ok\n"
        "def test_c(): pytest.skip('fine here')\n"
    )
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "tests.skipguard", "-p", "no:cacheprovider", "test_s.py"]
    env = {k: v for k, v in os.environ.items() if k != "ALLOW_SKIPPED_TESTS"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "1 test(s) skipped" in proc.stdout and "test_b" in proc.stdout, proc.stdout
    assert "test_c" not in proc.stdout.split("skipped, and")[1]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**env, "ALLOW_SKIPPED_TESTS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stdout


# -- item 11: a finished shard's last scrape says it is finished -------------------------------------------
def test_finished_shard_waits_for_a_last_scrape_that_says_done(farm: Farm, tmp_path: Path) -> None:
    rows = 8
    inp = write_urls(
        tmp_path / "urls.parquet", [farm.url(f"/slow/1500/small.jpg?s={i}", i % 2) for i in range(rows)]
    )  # ~6 s: several scrapes
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fetcher", "--input", str(inp), "--output", str(tmp_path / "out"), "--processes", "1",
         "--allow-private-networks", "--metrics-address", f"127.0.0.1:{port}", "--concurrency", "2"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    last: dict[Any, float] = {}
    deadline = time.monotonic() + 120
    # A scraper every 2 s, like Prometheus (15 s there): keep the last exposition fetcher answered before
    # it exited. Without the wait for a final scrape, that one usually still shows rows left.
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            status, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            if status == 200:
                last = samples(body.decode())
        except OSError:
            pass
        time.sleep(2.0)
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    assert total(last, "fetcher_shard_rows_planned") == rows
    assert total(last, "fetcher_shard_rows_done") == rows  # what FetcherInstanceDown reads after the exit


def test_worker_memory_cap_without_worker_processes_is_called_out(caplog: pytest.LogCaptureFixture) -> None:
    base = ["--input", "in.parquet", "--output", "out"]
    with caplog.at_level(logging.WARNING):
        load_config([*base, "--worker-max-memory", "4G"])
    assert "--worker-max-memory caps imaging worker processes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_config([*base, "--worker-max-memory", "4G", "--imaging-pool", "processes"])
        load_config(base)
    assert "--worker-max-memory" not in caplog.text
