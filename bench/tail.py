"""The tail and the checkpoints: how long a tar waits on a few bad hosts, and what durability costs.

1. One tar of 2,000 rows (LAION-like small images on 6 hosts) is fetched by a real ``python -m
   fetcher``: the good rows alone, then with 1 % of rows on a host that never answers and 1 % on a host
   answering 503 forever (default politeness flags, short ``--timeout``). ``--tail-baseline=PATH`` also
   runs the list with another checkout (e.g. main before the tail bound) for comparison.
   Target: with the bad hosts <= 2 x without + ``--tail-timeout``.
2. The checkpoint cost per sample: ShardWriter with and without its journal (fdatasync of the temp
   tar and the journal every 64 or 256 rows), 5,000 samples of 20 kB, best of 3.

Flags: ``--tail-rows=N`` (default 2000), ``--tail-baseline=PATH``, ``--tail-limit=S`` (seconds a run may
take before it is killed, default 300).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import Table
from fetcher.farm import FarmThread
from fetcher.records import ImageOutcome, InputRow, SampleResult, Status
from storage.layout import ShardFiles
from storage.shard import open_writer

ROOT = Path(__file__).resolve().parent.parent
ADDRESSES = tuple(f"127.0.0.{i}" for i in range(2, 10))
FLAGS = ["--timeout", "3", "--connect-timeout", "2", "--read-timeout", "3", "--image-size", "64",
         "--allow-private-networks", "--min-free-disk", "0", "--metrics-address", ""]  # fmt: skip
TAIL_TIMEOUT = 6.0


def _flag(flags: list[str], name: str, default: str) -> str:
    for f in flags:
        if f.startswith(f"--{name}="):
            return f.split("=", 1)[1]
    return default


def _urls(farm_base: list[str], n: int, bad: bool) -> list[str]:
    urls = []
    for i in range(n):
        if bad and i % 100 == 17:
            urls.append(f"{farm_base[6]}/hang?i={i}")
        elif bad and i % 100 == 59:
            urls.append(f"{farm_base[7]}/status/503?i={i}")
        elif not bad and i % 100 in (17, 59):
            continue
        else:
            urls.append(f"{farm_base[i % 6]}/gen/320x240.jpg?seed={i}&variants=16")
    return urls


def _run(root: Path, urls: list[str], tmp: Path, extra: list[str], limit: float) -> tuple[str, int]:
    inp = tmp / "urls.parquet"
    pq.write_table(pa.table({"url": urls, "caption": [""] * len(urls)}), inp)
    out = tmp / "out"
    cmd = [sys.executable, "-m", "fetcher", "--input", str(inp), "--output", str(out),
           "--samples-per-tar", str(len(urls)), *FLAGS, *extra]  # fmt: skip
    start = time.monotonic()
    try:
        subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(root)), cwd=root, check=True, capture_output=True,
                       timeout=limit)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"> {limit:g} (killed, no tar)", 0
    wall = f"{time.monotonic() - start:.1f}"
    ok = sum(pq.read_table(p, columns=["status"]).column("status").to_pylist().count("success")
             for p in out.glob("*.parquet"))  # fmt: skip
    return wall, ok


def tail_table(flags: list[str]) -> Table:
    n = int(_flag(flags, "tail-rows", "2000"))
    baseline = _flag(flags, "tail-baseline", "")
    limit = float(_flag(flags, "tail-limit", "300"))
    t = Table(f"One tar of {n} rows: wall time with 1 % never-answering + 1 % always-503 rows",
              ["run", "rows", "ok", "wall s"])  # fmt: skip
    with FarmThread(ADDRESSES) as farm, tempfile.TemporaryDirectory() as d:
        base = [farm.base(i) for i in range(len(ADDRESSES))]
        good, bad = _urls(base, n, False), _urls(base, n, True)
        runs = [
            ("good rows only", ROOT, good, []),
            ("with bad hosts", ROOT, bad, ["--tail-timeout", str(TAIL_TIMEOUT)]),
        ]
        if baseline:
            runs.append((f"with bad hosts, {baseline}", Path(baseline), bad, []))
        for k, (name, root, urls, extra) in enumerate(runs):
            tmp = Path(d) / str(k)
            tmp.mkdir()
            wall, ok = _run(root, urls, tmp, extra, limit)
            t.add(name, len(urls), ok, wall)
    t.notes.append(f"flags: {' '.join(FLAGS)}; this checkout adds --tail-timeout {TAIL_TIMEOUT:g}")
    return t


def _result(i: int, data: bytes) -> SampleResult:
    row = InputRow(tar_index=0, row_in_tar=i, key=f"00000{i:04d}", url=f"http://h/{i}", caption="a caption")
    img = ImageOutcome(data=data, width=256, height=192, original_width=640, original_height=480, hash="ab" * 32)
    return SampleResult(row=row, status=Status.SUCCESS, image=img, http_status=200, bytes_downloaded=len(data))


def checkpoint_table() -> Table:
    n, data = 5000, os.urandom(20_000)
    t = Table("Checkpoint cost per sample (5,000 samples of 20 kB, best of 3)", ["writer", "us/sample"])
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=str(ROOT)) as d:
        for name, ckpt in (("no journal", None), ("journal every 64 rows", (64, 60.0)),
                           ("journal every 256 rows", (256, 60.0))):  # fmt: skip
            best = float("inf")
            for k in range(3):
                root = Path(d) / f"{len(times)}-{k}"
                root.mkdir()
                w = open_writer(ShardFiles(str(root), 0), n, [], checkpoint=ckpt)
                results = [_result(i, data) for i in range(n)]
                start = time.perf_counter()
                for r in results:
                    w.add(r)
                w.checkpoint()
                best = min(best, time.perf_counter() - start)
                w.abort()
            times[name] = best / n * 1e6
            t.add(name, times[name])
    for rows in (64, 256):
        t.add(f"checkpoint cost, {rows}-row batches", times[f"journal every {rows} rows"] - times["no journal"])
    t.notes.append(f"file system of {ROOT}")
    return t


def run(flags: list[str]) -> list[Table]:
    """The bench section entry point."""
    return [checkpoint_table(), tail_table(flags)]
