"""A box of engine processes: the shared politeness table, one /metrics, signals, and exactly-once tars."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from multiprocessing.queues import Queue
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fetcher.boxmonitor import merge_expositions
from fetcher.boxslots import BoxHandle, BoxSlots
from fetcher.farm import Farm
from fetcher.hostlimits import SlotLimits
from tests.conftest import ROOT, results_table, run_fetcher, write_urls
from tests.monitoring import free_port, http_get, samples, wait_for
from tests.output_checks import finish, reaped

CTX = multiprocessing.get_context("spawn")


def _grab(
    handle: BoxHandle, index: int, limits: SlotLimits, seconds: float, out: Queue[tuple[int, list[float]]]
) -> None:
    """Start as many requests to one host as the box allows for ``seconds``, never finishing any."""
    table = BoxSlots.attach(handle, index)
    started: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.monotonic()
        if table.try_start("one.example", limits, now) is None:
            started.append(now)
        else:
            time.sleep(0.001)
    out.put((index, started))
    table.close()


def _run_grabbers(table: BoxSlots, limits: SlotLimits, seconds: float) -> list[float]:
    q: Queue[tuple[int, list[float]]] = CTX.Queue()
    procs = [CTX.Process(target=_grab, args=(table.handle, i, limits, seconds, q)) for i in range(table.processes)]
    for p in procs:
        p.start()
    got = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    return sorted(t for _, ts in got for t in ts)


def test_box_concurrency_holds_across_processes_and_a_dead_process_leases_come_back() -> None:
    with BoxSlots.create(4, CTX.Lock()) as table:
        starts = _run_grabbers(table, SlotLimits(concurrency=3), 0.5)
        # Four processes racing for one host with 3 allowed in flight: exactly 3 leases, box-wide.
        assert len(starts) == 3
        assert table.inflight("one.example") == 3
        freed = sum(table.release_process(i) for i in range(4))
        assert freed == 3 and table.inflight("one.example") == 0


def test_box_rate_holds_across_processes() -> None:
    rate, burst, seconds = 40.0, 2, 1.5
    with BoxSlots.create(4, CTX.Lock()) as table:
        starts = _run_grabbers(table, SlotLimits(concurrency=10**6, rate=rate, burst=burst), seconds)
    assert starts
    span = starts[-1] - starts[0]
    # GCRA: n starts need (n - burst) / rate seconds; four processes do not get four times the rate.
    assert len(starts) <= rate * span + burst + 1, (len(starts), span)
    assert len(starts) >= rate * span * 0.8, (len(starts), span)


def test_box_pause_and_dead_host_are_shared() -> None:
    with BoxSlots.create(2, CTX.Lock()) as table:
        a, b = BoxSlots.attach(table.handle, 0), BoxSlots.attach(table.handle, 1)
        lim = SlotLimits(concurrency=8)
        now = time.monotonic()
        assert a.try_start("h", lim, now) is None
        a.finish("h", pause_until=now + 5, delay=0.0, dead_until=0.0, failures=0)  # a 429 with Retry-After: 5
        busy = b.try_start("h", lim, now + 1)
        assert busy is not None and not busy.dead and busy.at == pytest.approx(now + 5)
        a.finish("h", pause_until=0.0, delay=0.5, dead_until=now + 60, failures=7)  # a's breaker gave up
        busy = b.try_start("h", lim, now + 6)
        assert busy is not None and busy.dead
        learned = b.learned("h")
        assert learned.failures == 7 and learned.delay == 0.5  # b's breaker and delay go on from a's
        assert b.try_start("other", lim, now) is None  # other hosts are not affected
        a.close()
        b.close()


def test_merge_expositions_sums_counters_and_histograms_and_keeps_box_gauges() -> None:
    one = (
        "# HELP fetcher_rows_total rows\n# TYPE fetcher_rows_total counter\n"
        'fetcher_rows_total{status="success"} 3.0\nfetcher_rows_total{status="failed_to_download"} 1.0\n'
        "# HELP fetcher_fetch_duration_seconds t\n# TYPE fetcher_fetch_duration_seconds histogram\n"
        'fetcher_fetch_duration_seconds_bucket{le="0.1"} 2.0\nfetcher_fetch_duration_seconds_bucket{le="+Inf"} 4.0\n'
        "fetcher_fetch_duration_seconds_count 4.0\nfetcher_fetch_duration_seconds_sum 0.5\n"
        "# HELP fetcher_last_progress_timestamp_seconds t\n# TYPE fetcher_last_progress_timestamp_seconds gauge\n"
        "fetcher_last_progress_timestamp_seconds 100.0\n"
        "# HELP fetcher_start_time_seconds t\n# TYPE fetcher_start_time_seconds gauge\n"
        "fetcher_start_time_seconds 50.0\n"
        '# HELP fetcher_shard_info s\n# TYPE fetcher_shard_info gauge\nfetcher_shard_info{shard="1",shards="6"} 1.0\n'
    )
    two = (
        one.replace(" 3.0\n", " 5.0\n")
        .replace("100.0", "120.0")
        .replace("50.0", "40.0")
        .replace('shard="1"', 'shard="4"')
    )
    merged = merge_expositions([one, two], (1, 3))
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(merged)
        for s in fam.samples
    }
    assert got[("fetcher_rows_total", (("status", "success"),))] == 8
    assert got[("fetcher_rows_total", (("status", "failed_to_download"),))] == 2
    assert got[("fetcher_fetch_duration_seconds_bucket", (("le", "+Inf"),))] == 8
    assert got[("fetcher_fetch_duration_seconds_sum", ())] == 1.0
    assert got[("fetcher_last_progress_timestamp_seconds", ())] == 120
    assert got[("fetcher_start_time_seconds", ())] == 40
    shard = [k for k in got if k[0] == "fetcher_shard_info"]
    assert shard == [("fetcher_shard_info", (("shard", "1"), ("shards", "3")))]


def _slow_urls(farm: Farm, n: int, ms: int, tag: str) -> list[str]:
    return [farm.url(f"/slow/{ms}/small.jpg?tag={tag}&i={i}", i % 8) for i in range(n)]


def _engines(parent: int) -> list[int]:
    """PIDs of the box's engine processes (spawned children running multiprocessing's spawn_main)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in cmd:
            out.append(int(pid))
    return out


def _start(inp: Path, out: Path, *flags: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "fetcher", "--input", str(inp), "--output", str(out), "--allow-private-networks"]
    return subprocess.Popen([*cmd, *flags], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def _check_exactly_once(out: Path, urls: list[str], per_tar: int) -> None:
    rows = results_table(out).to_pylist()
    by_index = Counter(int(r["key"][:5]) * per_tar + int(r["key"][5:]) for r in rows)
    assert sorted(by_index) == list(range(len(urls))) and set(by_index.values()) == {1}
    for r in rows:
        assert r["url"] == urls[int(r["key"][:5]) * per_tar + int(r["key"][5:])]
        assert r["status"] == "success", r


def test_three_engines_one_metrics_endpoint_every_row_once(farm: Farm, tmp_path: Path) -> None:
    urls = _slow_urls(farm, 120, 150, "box3")
    inp = write_urls(tmp_path / "in.parquet", urls)
    port = free_port()
    proc = _start(inp, tmp_path / "out", "--processes", "3", "--samples-per-tar", "20", "--per-host-concurrency",
                  "2", "--metrics-address", f"127.0.0.1:{port}")  # fmt: skip
    with reaped(proc):

        def merged() -> dict[str, float] | None:
            _status, body = http_get(f"http://127.0.0.1:{port}/metrics")
            got = samples(body.decode())
            flat = {name: v for (name, _labels), v in got.items()}
            if flat.get("fetcher_engine_processes") == 3 and flat.get("fetcher_shard_rows_planned", 0) >= 100:
                return flat
            return None

        flat = wait_for(merged, 60, "the box's /metrics to show 3 engines")
        # The engines take tars from one queue as they go; the box's endpoint says the whole shard's plan.
        assert flat["fetcher_shard_rows_planned"] == 120
        err = finish(proc, 120)
    assert proc.returncode == 0, err
    assert err.count("fetcher summary") == 1 and "rows        120 of 120" in err, err
    _check_exactly_once(tmp_path / "out", urls, 20)
    assert len(list((tmp_path / "out").glob("*_stats.json"))) == 6


def _two_engines_input(tmp: Path, urls: list[str], per_host: int) -> tuple[Path, Path, tuple[str, ...]]:
    """The input, output and flags of a 2-engine run writing 20-row tars."""
    flags = ("--processes", "2", "--samples-per-tar", "20", "--per-host-concurrency", str(per_host),
             "--metrics-address", "")  # fmt: skip
    return write_urls(tmp / "in.parquet", urls), tmp / "out", flags


def _wait_engines(proc: subprocess.Popen[str]) -> list[int]:
    """The PIDs of a running box's two engine processes, once both are up."""
    found: list[int] = wait_for(lambda: len(_engines(proc.pid)) == 2 and _engines(proc.pid), 30, "two engines")
    return found


def test_sigterm_stops_every_engine_and_a_rerun_finishes_exactly_once(farm: Farm, tmp_path: Path) -> None:
    urls = _slow_urls(farm, 160, 400, "boxterm")
    inp, out, flags = _two_engines_input(tmp_path, urls, per_host=1)
    proc = _start(inp, out, *flags)
    with reaped(proc):
        engines = _wait_engines(proc)
        wait_for(lambda: list(out.glob("*_stats.json")), 60, "a first finished tar")
        proc.send_signal(signal.SIGTERM)
        err = finish(proc, 60)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err, err
    time.sleep(0.5)
    assert not [p for p in engines if Path(f"/proc/{p}").exists()], "engine processes outlived the box"
    run_fetcher("--input", str(inp), "--output", str(out), "--allow-private-networks", *flags)
    _check_exactly_once(out, urls, 20)


def test_an_engine_killed_midway_exits_75_and_a_rerun_finishes(farm: Farm, tmp_path: Path) -> None:
    urls = _slow_urls(farm, 120, 1000, "boxkill")  # each engine busy ~4 s: the kill lands mid-run
    inp, out, flags = _two_engines_input(tmp_path, urls, per_host=2)
    proc = _start(inp, out, *flags)
    with reaped(proc):
        engines = _wait_engines(proc)
        time.sleep(1.0)
        os.kill(engines[0], signal.SIGKILL)
        err = finish(proc, 120)
    assert proc.returncode == 75, err
    assert "died" in err and "rerun the same command" in err, err
    run_fetcher("--input", str(inp), "--output", str(out), "--allow-private-networks", *flags)
    _check_exactly_once(out, urls, 20)


def test_a_resumed_shard_keeps_every_engine_busy(farm: Farm, tmp_path: Path) -> None:
    # The even tars are done already: a fixed split by tar index would hand every tar left to one engine.
    urls = _slow_urls(farm, 80, 800, "boxresume")
    inp = write_urls(tmp_path / "in.parquet", urls)
    out = tmp_path / "out"
    flags = ("--samples-per-tar", "10", "--per-host-concurrency", "10", "--metrics-address", "")
    run_fetcher("--input", str(inp), "--output", str(out), "--allow-private-networks", "--shard", "0/2", *flags)
    assert sorted(int(p.name[:5]) for p in out.glob("*_stats.json")) == [0, 2, 4, 6]
    done = run_fetcher("--input", str(inp), "--output", str(out), "--allow-private-networks", "--processes", "2",
                       *flags)  # fmt: skip
    line = next(ln for ln in done.stderr.splitlines() if "box: 2 engine processes" in ln)
    written = [int(n) for n in line.split("tars written: ")[1].split(")")[0].split("/")]
    assert sum(written) == 4 and min(written) >= 1, line
    _check_exactly_once(out, urls, 10)


def test_imaging_in_engine_threads_gives_the_same_tars(farm: Farm, tmp_path: Path) -> None:
    urls = [farm.url(f"/gen/{320 + i % 3 * 40}x240.jpg?seed={i}", i % 8) for i in range(40)]
    inp = write_urls(tmp_path / "in.parquet", urls)
    outs = {}
    for pool in ("threads", "processes"):
        outs[pool] = out = tmp_path / pool
        run_fetcher("--input", str(inp), "--output", str(out), "--allow-private-networks", "--samples-per-tar", "20",
                    "--image-size", "64", "--imaging-pool", pool, "--imaging-workers", "2")  # fmt: skip
        _check_exactly_once(out, urls, 20)

    def images(out: Path) -> dict[str, bytes]:
        got = {}
        for tar in sorted(out.glob("*.tar")):
            with tarfile.open(tar) as tf:
                for m in tf:
                    if m.name.endswith(".jpg"):
                        f = tf.extractfile(m)
                        assert f is not None
                        got[m.name] = f.read()
        return got

    # Same pixels whichever pool resized them: the work is the same pure function.
    a, b = images(outs["threads"]), images(outs["processes"])
    assert len(a) == 40 and a == b
