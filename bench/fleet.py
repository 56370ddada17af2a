"""What fleet-global politeness costs (issue 16): the same list with and without ``--politeness-store``.

``python -m bench fleet [--quick]``

A redis-server on loopback; one fetcher box on the thumbnail mix (many small images over 8 hosts, so
the store's round trips are as large a share of the work as they get), run without the store and with
it; plus the store's own cost per request: one try_start + finish pair timed in a loop.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import Table
from bench.farmsets import Workload, farm_process, free_port, warm
from bench.peers import Result, run_fetcher
from bench.scaling import THUMB_SIZES
from fetcher.fleet import RedisSlots
from fetcher.hostlimits import SlotLimits


def store_round_trip_ms(url: str, n: int) -> float:
    """Milliseconds for one request's store work (start + finish), in this process."""
    slots = RedisSlots(url, "bench-rt", lease_ttl=60)
    lim = SlotLimits(concurrency=10**6)
    start = time.perf_counter()
    for i in range(n):
        key = f"host{i % 100}"
        slots.try_start(key, lim, time.monotonic())
        slots.finish(key, 0.0, 0.0, 0.0, 0)
    per = (time.perf_counter() - start) * 1000 / n
    slots.close()
    return per


def run(argv: list[str]) -> list[Table]:
    """Start redis-server and the farm; run the list without and with the store."""
    quick = "--quick" in argv
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("bench fleet: redis-server is missing (make install installs it)")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    redis_proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
    )
    wl = Workload("thumbs", THUMB_SIZES, 256, 1000 if quick else 4000, variants=8)
    results: list[tuple[str, Result]] = []
    try:
        time.sleep(0.5)
        per_request = store_round_trip_ms(url, 500 if quick else 5000)
        with farm_process() as farm_port:
            urls = work / "thumbs.parquet"
            warm(wl.write(urls, farm_port))
            for label, extra in (("no store", []), ("redis store", ["--politeness-store", url])):
                out = work / label.replace(" ", "-")
                res = run_fetcher(wl, urls, out, processes=1, user_flags=True, extra=extra)
                results.append((label, res))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    t = Table(
        "fleet: one box with and without --politeness-store (redis-server on loopback)",
        ["run", "rows", "ok", "wall s", "images/s", "CPU ms/img"],
    )
    for label, r in results:
        t.add(label, r.rows, r.ok, r.wall, r.rate, r.cpu_ms)
    base = results[0][1].rate if results else 0.0
    if len(results) == 2 and base:
        t.notes.append(f"images/s with the store / without: {results[1][1].rate / base:.2f}")
    t.notes.append(
        f"store work per request (one try_start + finish, each one Lua script round trip): {per_request:.3f} ms"
    )
    t.notes.append("thumbnail mix over 8 farm hosts, 1 engine process; the farm and redis share the same 2 cores")
    return [t]
