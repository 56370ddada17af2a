"""A killed imaging worker costs at most the image that was killed twice, never the run."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from fetcher.farm import Farm
from fetcher.farm.images import make_image
from fetcher.imaging import ImageOptions
from fetcher.records import Reason
from fetcher.workers import ImagingPool
from tests.conftest import ROOT, write_urls


def _slow_image() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buf, "PNG")  # small file, half a second or more of decoding
    return buf.getvalue()


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def _kill_worker(pool: ImagingPool, *, busy: bool, not_in: ProcessPoolExecutor | None = None) -> None:
    """SIGKILL the worker of the pool's current executor once it exists (and, if ``busy``, is working)."""
    base: dict[int, int] = {}
    for _ in range(1000):
        executor = pool._pool
        procs = list(executor._processes or {}) if executor is not not_in else []  # type: ignore[attr-defined]
        for pid in procs:
            with contextlib.suppress(FileNotFoundError):
                ticks = _cpu_ticks(pid)
                if not busy or ticks - base.setdefault(pid, ticks) >= 3:
                    os.kill(pid, signal.SIGKILL)
                    return
        await asyncio.sleep(0.01)
    raise AssertionError("never saw a worker to kill")


async def test_killed_worker_is_retried_once_then_named() -> None:
    slow = _slow_image()
    async with ImagingPool(1, ImageOptions(image_size=32, max_image_pixels=100_000_000)) as pool:
        assert (await pool.run(make_image(64, 48, "jpeg"))).ok  # the worker is up and idle

        killer = asyncio.create_task(_kill_worker(pool, busy=True))
        survived = await pool.run(slow)
        await killer
        assert survived.ok, survived  # its second try ran on a fresh pool

        async def kill_twice() -> None:
            first = pool._pool
            await _kill_worker(pool, busy=True)
            await _kill_worker(pool, busy=False, not_in=first)  # the retry's fresh worker

        killer = asyncio.create_task(kill_twice())
        dead = await pool.run(slow)
        await killer
        assert dead.reason is Reason.INTERNAL_ERROR and "died twice" in dead.detail
        assert (await pool.run(make_image(64, 48, "jpeg"))).ok  # and the pool still works


# -- helpers die with a killed fetcher (issue 14.10) ------------------------------------------------


def _proc_states() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) of every live process."""
    out: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                out[int(name)] = (int(fields[1]), fields[0])
    return out


def _descendants(root: int) -> set[int]:
    procs = _proc_states()
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier and pid not in found}
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    procs = _proc_states()
    return {p for p in pids if p in procs and procs[p][1] != "Z"}  # a zombie holds nothing but its pid


def test_sigkilled_fetcher_leaves_no_helper_processes(farm: Farm, tmp_path: Path) -> None:
    # A few quick images start the imaging workers; slow ones keep the run going while it is killed.
    urls = [farm.url(f"/img/small.jpg?orphans={i}") for i in range(4)]
    urls += [farm.url(f"/slow/20000/small.jpg?orphans={i}") for i in range(8)]
    inp = write_urls(tmp_path / "urls.parquet", urls)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "fetcher", "--input", str(inp), "--output", str(tmp_path / "out"),
           "--allow-private-networks", "--processes", "2", "--min-free-disk", "0",
           "--imaging-pool", "processes"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        helpers: set[int] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(helpers) < 4:  # forkserver, 2 workers, resource tracker
            helpers |= _descendants(proc.pid)
            time.sleep(0.2)
        assert len(helpers) >= 4, f"helpers never all started: {helpers}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(helpers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(helpers), f"helpers outlived their SIGKILLed parent: {_alive(helpers)}"
    finally:
        for pid in _alive(_descendants(proc.pid) | helpers) if proc.poll() is None else _alive(helpers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
