"""Fleet-global politeness: three fetcher processes, each its own box, share per-host limits through a
real redis-server on loopback; one box killed mid-run leaves leases that lapse; a store that is down
costs the fleet limit (with a warning), never the run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fetcher.farm import Farm
from tests.conftest import ROOT, results_table, write_urls
from tests.monitoring import free_port, wait_for
from tests.output_checks import finish
from tests.test_politeness import max_in_window

BOXES = 3


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server on 127.0.0.1 (no persistence); yields its URL."""
    server = shutil.which("redis-server")
    assert server, "redis-server is missing: make install installs it (Debian package redis-server)"
    port = free_port()
    work = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        wait_for(lambda: client.ping(), 10, "redis-server to answer")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def _box(tmp: Path, urls: list[str], *flags: str) -> subprocess.Popen[str]:
    inp = write_urls(tmp / "in.parquet", urls)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "fetcher", "--input", str(inp), "--output", str(tmp / "out"),
           "--allow-private-networks", "--processes", "1", "--metrics-address", "", *flags]  # fmt: skip
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def _all_ok(out: Path, n: int) -> None:
    rows = results_table(out).to_pylist()
    assert len(rows) == n and all(r["status"] == "success" for r in rows), [r["error_message"] for r in rows]


def test_three_boxes_hold_one_fleet_rate(farm: Farm, tmp_path: Path, store: str) -> None:
    rate, burst, per_box = 8, 2, 16
    flags = ("--politeness-store", store, "--politeness-prefix", "fleet-rate", "--per-host-rate", str(rate),
             "--per-host-burst", str(burst))  # fmt: skip
    boxes = [
        _box(
            tmp_path / f"box{b}",
            [farm.url(f"/img/tiny.png?tag=fleet-rate&b={b}&i={i}", 6) for i in range(per_box)],
            *flags,
        )
        for b in range(BOXES)
    ]
    errs = [finish(p) for p in boxes]
    for p, err in zip(boxes, errs, strict=True):
        assert p.returncode == 0, err
    for b in range(BOXES):
        _all_ok(tmp_path / f"box{b}" / "out", per_box)
    times = [a.t for a in list(farm.state.arrivals) if "tag=fleet-rate&" in a.path]
    assert len(times) == BOXES * per_box
    # One limit for the fleet, not one per box (three boxes alone would send 3 x 8/s).
    assert max_in_window(times, 1.0) <= rate + burst, max_in_window(times, 1.0)
    # ... and the fleet runs at that rate, not below it.
    assert max(times) - sorted(times)[1] <= (len(times) - burst) / rate + 3.0


def test_a_killed_box_leases_lapse_and_the_othersfinish(farm: Farm, tmp_path: Path, store: str) -> None:
    per_box, timeout = 6, 3
    prefix = "fleet-kill"
    flags = ("--politeness-store", store, "--politeness-prefix", prefix, "--per-host-concurrency", "2",
             "--timeout", str(timeout), "--read-timeout", str(timeout), "--retries", "3")  # fmt: skip
    victim = _box(tmp_path / "victim", [farm.url(f"/slow/2000/small.jpg?tag=fk-v&i={i}", 7) for i in range(per_box)],
                  *flags)  # fmt: skip
    client = redis.Redis.from_url(store)
    leases = f"{prefix}:{{{farm.addresses[7]}}}:leases"
    try:
        wait_for(lambda: client.zcard(leases) == 2, 30, "the victim to hold both fleet leases of the host")
        leased = time.monotonic()  # the leases were taken at most this long ago ... now
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        others = [
            _box(
                tmp_path / f"box{b}",
                [farm.url(f"/slow/200/small.jpg?tag=fk-{b}&i={i}", 7) for i in range(per_box)],
                *flags,
            )
            for b in range(2)
        ]
        errs = [finish(p) for p in others]
        for p, err in zip(others, errs, strict=True):
            assert p.returncode == 0, err
        for b in range(2):
            _all_ok(tmp_path / f"box{b}" / "out", per_box)
        first = min(a.t for a in list(farm.state.arrivals) if "tag=fk-0" in a.path or "tag=fk-1" in a.path)
        # The dead box's leases held the host for their lifetime (--timeout + 10 s from when they were
        # taken, just before ``leased``), then lapsed: the others went on, nobody gave the host up.
        lifetime = timeout + 10
        assert leased + lifetime - 3 <= first <= leased + lifetime + 15, first - leased
        assert client.zcard(leases) == 0
    finally:
        client.close()
        if victim.poll() is None:
            victim.kill()


def test_store_down_means_per_box_limits_and_a_warning(farm: Farm, tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    n = 12
    p = _box(tmp_path, [farm.url(f"/img/tiny.png?tag=fleet-down&i={i}", 5) for i in range(n)],
             "--politeness-store", dead, "--per-host-rate", "20")  # fmt: skip
    err = finish(p)
    assert p.returncode == 0, err
    _all_ok(tmp_path / "out", n)
    assert "politeness store" in err and "unavailable" in err and "per-box limits" in err, err
