"""SIGTERM/SIGINT, the shutdown deadline, a second signal, and the shard watchdog, on real processes."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

from fetcher.farm import Farm
from tests.conftest import results_table, run_fetcher, write_urls
from tests.output_checks import check_output, check_stopped_output, kill_tree, start_fetcher


def wait_arrivals(farm: Farm, tag: str, n: int = 1, limit: float = 30) -> None:
    """Block until the farm has seen ``n`` requests carrying ``tag`` (the fetcher is really working)."""
    end = time.monotonic() + limit
    while sum(1 for a in farm.state.arrivals if tag in a.path) < n:
        assert time.monotonic() < end, f"no traffic tagged {tag}"
        time.sleep(0.02)


def finish(proc: subprocess.Popen[str], limit: float) -> tuple[int, str, float]:
    """Wait for the process; returns exit code, stderr and seconds waited."""
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=limit)
    finally:
        kill_tree(proc)
    return proc.returncode, err, time.monotonic() - start


def hang_input(farm: Farm, tmp_path: Path, tag: str, rows: int = 5) -> Path:
    return write_urls(tmp_path / "urls.parquet", [farm.url(f"/hang?{tag}={i}", i % 8) for i in range(rows)])


def test_sigterm_stops_cleanly_then_resume_completes(farm: Farm, tmp_path: Path) -> None:
    tag = f"term{uuid.uuid4().hex[:8]}"
    urls = [farm.url(f"/slow/150/small.jpg?{tag}={i}", i % 8) for i in range(240)]
    inp = write_urls(tmp_path / "urls.parquet", urls)
    out = tmp_path / "out"
    args = ["--input", str(inp), "--output", str(out), "--samples-per-tar", "20", "--allow-private-networks",
            "--processes", "1", "--per-host-concurrency", "1", "--image-size", "32",
            "--shutdown-timeout", "1"]  # fmt: skip
    proc = start_fetcher(args, start_new_session=True)
    wait_arrivals(farm, tag, 60)
    proc.send_signal(signal.SIGTERM)
    code, err, waited = finish(proc, 15)
    assert code == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("fetcher: stopped by SIGTERM:") and "open tars checkpointed" in last, err
    assert waited < 1 + 3
    partial = check_stopped_output(out)  # nothing half-done under a final name, only checkpoints
    assert len(partial) < len(urls)

    run_fetcher(*args)
    rows = check_output(out, final=True)
    assert sorted(r["url"] for r in rows.values()) == sorted(urls)
    assert all(r["status"] == "success" for r in rows.values())


def test_shutdown_timeout_abandons_hung_requests(farm: Farm, tmp_path: Path) -> None:
    tag = f"abandon{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    proc = start_fetcher(["--input", str(hang_input(farm, tmp_path, tag)), "--output", str(out),
                          "--allow-private-networks", "--timeout", "120", "--shutdown-timeout", "1",
                          "--shard-watchdog", "0"], start_new_session=True)  # fmt: skip
    wait_arrivals(farm, tag, 5)
    proc.send_signal(signal.SIGINT)
    code, err, waited = finish(proc, 20)
    assert code == 130, err
    assert waited < 1 + 3, waited
    assert "1 open tars checkpointed with 0 rows kept" in err.strip().splitlines()[-1], err
    # nothing was finished: no checkpoint, no lease, no temp tar left; only the run record
    assert [p.name for p in out.iterdir()] == ["_fetcher_run.json"]


def test_second_signal_exits_at_once(farm: Farm, tmp_path: Path) -> None:
    tag = f"twice{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    proc = start_fetcher(["--input", str(hang_input(farm, tmp_path, tag)), "--output", str(out),
                          "--allow-private-networks", "--timeout", "120", "--shutdown-timeout", "60"],
                         start_new_session=True)  # fmt: skip
    wait_arrivals(farm, tag, 5)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None, "the first signal must wait for in-flight work"
    proc.send_signal(signal.SIGINT)
    code, err, waited = finish(proc, 20)
    assert code == 130, err
    assert waited < 3, waited
    assert "second SIGINT" in err
    assert not list(out.glob("*.tar")) and not list(out.glob("*_stats.json"))


def test_watchdog_ends_a_stuck_tar(farm: Farm, tmp_path: Path) -> None:
    tag = f"dog{uuid.uuid4().hex[:8]}"
    urls = [farm.url(f"/img/small.jpg?{tag}={i}", i % 8) for i in range(9)] + [farm.url(f"/hang?{tag}=h")]
    inp = write_urls(tmp_path / "urls.parquet", urls)
    out = tmp_path / "out"
    start = time.monotonic()
    run_fetcher("--input", str(inp), "--output", str(out), "--allow-private-networks", "--timeout", "120",
                "--shard-watchdog", "3", "--processes", "1")  # fmt: skip
    assert time.monotonic() - start < 20
    rows = {r["url"]: r for r in results_table(out).to_pylist()}
    stuck = rows[urls[-1]]
    assert stuck["error_message"] == "timeout" and "watchdog" in stuck["error_detail"]
    assert sum(r["status"] == "success" for r in rows.values()) == 9
    check_output(out, final=True)
