"""On the farm: a bounded tail, a stopped tar continued (not redone), and two processes on one output."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import webdataset as wds
from PIL import Image

from fetcher.farm import Farm
from fetcher.retry_failed import RETRY_FAILED_REASONS
from storage.journal import Journal
from tests.conftest import results_table, run_fetcher, write_urls
from tests.output_checks import check_output, kill_tree, start_fetcher
from tests.test_interop import torchless_wids  # noqa: F401 - fixture

TAIL = 4.0  # --tail-timeout of the tail test, seconds
TIMEOUT = 2.0  # --timeout: a never-answering host is known to be failing only once a request times out


def rows_requested(farm: Farm, tag: str, since: int = 0) -> list[int]:
    """Row numbers (the ``tag`` query value) of the requests the farm saw, from arrival ``since`` on."""
    out = []
    for a in farm.state.arrivals[since:]:
        values = parse_qs(urlsplit(a.path).query).get(tag)
        if values:
            out.append(int(values[0]))
    return out


def wait_requests(farm: Farm, tag: str, n: int, proc: subprocess.Popen[str], limit: float = 60) -> None:
    end = time.monotonic() + limit
    while len(rows_requested(farm, tag)) < n:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < end, f"fewer than {n} requests tagged {tag}"
        time.sleep(0.01)


def timed_run(*args: str) -> float:
    start = time.monotonic()
    run_fetcher(*args)
    return time.monotonic() - start


def test_tail_of_a_tar_is_bounded_by_tail_timeout(farm: Farm, tmp_path: Path) -> None:
    """1,000 rows in one tar, 1 % on a never-answering host, 1 % on an always-503 host."""
    tag = f"tail{uuid.uuid4().hex[:8]}"
    good, all_urls = [], []
    for i in range(1000):
        if i % 100 == 17:
            url = farm.url(f"/hang?{tag}={i}", 6)
        elif i % 100 == 59:
            url = farm.url(f"/status/503?{tag}={i}", 7)
        else:
            url = farm.url(f"/gen/24x24.jpg?seed={i}&variants=8&{tag}={i}", i % 6)
            good.append(url)
        all_urls.append(url)
    common = ["--samples-per-tar", "1000", "--allow-private-networks", "--processes", "1", "--image-size", "16",
              "--timeout", str(TIMEOUT), "--connect-timeout", "1", "--read-timeout", "2", "--retries", "1",
              "--backoff-base", "0.2", "--tail-timeout", str(TAIL), "--min-free-disk", "0"]  # fmt: skip
    base_in = write_urls(tmp_path / "good.parquet", good)
    fault_in = write_urls(tmp_path / "all.parquet", all_urls)
    base = timed_run("--input", str(base_in), "--output", str(tmp_path / "base"), *common)
    faulty = timed_run("--input", str(fault_in), "--output", str(tmp_path / "fault"), *common)
    print(f"tail: {len(good)} good rows {base:.1f}s; with 1 % hanging + 1 % 503 rows {faulty:.1f}s (bound {TAIL}s)")
    # The bound: one --timeout to learn the host is failing, --tail-timeout, and the guard's 0.5 s tick.
    assert faulty <= 2 * base + TIMEOUT + TAIL + 1, (base, faulty)

    rows = {r["url"]: r for r in results_table(tmp_path / "fault").to_pylist()}
    check_output(tmp_path / "fault", final=True)
    assert sorted(rows) == sorted(all_urls)
    assert all(rows[u]["status"] == "success" for u in good)
    bad = [rows[u] for u in all_urls if u not in set(good)]
    reasons = {r["error_message"] for r in bad}
    assert reasons <= {r.value for r in RETRY_FAILED_REASONS}, reasons  # --retry-failed picks them all up
    # Given up at the tail: at once for hosts whose breaker is open, after --tail-timeout for slowed ones.
    assert reasons & {"tail_timeout", "host_unavailable"}, reasons


def _single_tar_run(farm: Farm, tmp_path: Path, tag: str) -> tuple[list[str], list[str]]:
    urls = [farm.url(f"/slow/40/small.jpg?{tag}={i}", i % 8) for i in range(1000)]
    inp = write_urls(tmp_path / "urls.parquet", urls)
    args = ["--input", str(inp), "--output", str(tmp_path / "out"), "--samples-per-tar", "1000",
            "--allow-private-networks", "--processes", "1", "--per-host-concurrency", "1", "--image-size", "16",
            "--checkpoint-rows", "64", "--checkpoint-interval", "0.2", "--shutdown-timeout", "10",
            "--min-free-disk", "0"]  # fmt: skip
    return urls, args


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stop_at_half_a_tar_then_rerun_fetches_only_unfinished_rows(
    farm: Farm, tmp_path: Path, sig: signal.Signals, request: pytest.FixtureRequest
) -> None:
    tag = f"half{uuid.uuid4().hex[:8]}"
    urls, args = _single_tar_run(farm, tmp_path, tag)
    out = tmp_path / "out"
    mark = len(farm.state.arrivals)
    proc = start_fetcher(args, start_new_session=True)
    wait_requests(farm, tag, 500, proc)
    proc.send_signal(sig)
    try:
        proc.wait(30)
    finally:
        kill_tree(proc)  # SIGKILL leaves the imaging workers behind, as an init system would reap them
    _, err = proc.communicate(timeout=30)
    first = set(rows_requested(farm, tag, mark))
    journal = Journal.load(str(out / "00000.journal"))
    assert journal is not None and not (out / "00000.tar").exists()
    kept = {e.row for e in journal.entries}
    assert 400 <= len(kept) < 1000, len(kept)
    if sig is signal.SIGTERM:
        assert proc.returncode == 143, err
        assert f"with {len(kept)} rows kept" in err.strip().splitlines()[-1], err

    mark = len(farm.state.arrivals)
    run_fetcher(*args)
    second = rows_requested(farm, tag, mark)
    assert not kept & set(second), "rows finished before the stop were fetched again"
    assert first | set(second) == set(range(1000))
    redone = first & set(second)
    # SIGTERM: requests in flight finish and are checkpointed. SIGKILL: those in flight (8 requests, plus
    # bodies waiting for imaging on a loaded box) and those finished since the last checkpoint (every
    # 64 rows or 0.2 s) are done again, nothing more.
    assert len(redone) <= (0 if sig is signal.SIGTERM else 8 + 64 + 64), sorted(redone)
    print(f"{sig.name} at {len(first)} requests: {len(kept)} rows kept, {len(second)} fetched by the rerun, "
          f"{len(redone)} of them again")  # fmt: skip

    rows = check_output(out, final=True)
    assert sorted(r["url"] for r in rows.values()) == sorted(urls)
    assert all(r["status"] == "success" for r in rows.values())
    assert not list(out.glob("*.journal")) and not list(out.glob("*.lease"))
    seen = [s["__key__"] for s in wds.WebDataset(str(out / "00000.tar"), shardshuffle=False)]
    assert sorted(seen) == sorted(rows) and len(seen) == len(set(seen))
    wids = request.getfixturevalue("torchless_wids")  # after webdataset: its stand-in torch would confuse it
    ds = wids.ShardListDataset(str(out / "wids-index.json"), cache_dir=str(tmp_path / "wids-cache"))
    assert len(ds) == 1000
    for j in (0, 499, 999):
        s = ds[j]
        image = s[".jpg"] if isinstance(s[".jpg"], Image.Image) else Image.open(io.BytesIO(s[".jpg"].read()))
        meta = s[".json"] if isinstance(s[".json"], dict) else json.loads(s[".json"].read())
        assert meta["key"] == s["__key__"] and image.size[0] > 0


def test_two_processes_on_one_output_share_the_tars(farm: Farm, tmp_path: Path) -> None:
    """Two pods for one index: each tar is written by one of them, and no row is fetched twice."""
    tag = f"dup{uuid.uuid4().hex[:8]}"
    urls = [farm.url(f"/slow/150/small.jpg?{tag}={i}", i % 8) for i in range(300)]
    inp = write_urls(tmp_path / "urls.parquet", urls)
    args = ["--input", str(inp), "--output", str(tmp_path / "out"), "--samples-per-tar", "50", "--read-ahead", "10",
            "--allow-private-networks", "--processes", "1", "--per-host-concurrency", "1", "--image-size", "16",
            "--min-free-disk", "0", "--metrics-address", ""]  # fmt: skip
    mark = len(farm.state.arrivals)
    first = start_fetcher(args, start_new_session=True)
    wait_requests(farm, tag, 1, first)
    second = start_fetcher(args, start_new_session=True)
    try:
        errs = [p.communicate(timeout=120)[1] for p in (first, second)]
    finally:
        kill_tree(first)
        kill_tree(second)
    assert (first.returncode, second.returncode) == (0, 0), errs
    rows = check_output(tmp_path / "out", final=True)
    assert sorted(r["url"] for r in rows.values()) == sorted(urls)
    requested = rows_requested(farm, tag, mark)
    assert sorted(requested) == list(range(300)), "a row was fetched by both processes (or not at all)"
    assert any("skipping tar" in e for e in errs), errs
