"""Politeness: one hanging host must not slow the others.

A mixed-host URL list on the loopback farm (good images on 7 hosts) is fetched twice by a real
``python -m fetcher`` subprocess: alone, and with 5 % extra rows on an 8th host that accepts the
connection and never answers. images/s counts successful images over the run's wall time, so the
hanging host's tail (timeouts, breaker cool-down, probe) is included. Target: ratio >= 0.9.

Flags: ``--politeness-rows=N`` good rows (default 6000), ``--politeness-hang-share=F`` (default 0.05).
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

ROOT = Path(__file__).resolve().parent.parent
ADDRESSES = tuple(f"127.0.0.{i}" for i in range(2, 10))
# Short deadlines so the hanging host's tail (2 x timeout + cool-down) fits a bench-sized run;
# on real multi-hour runs the defaults (30 s, 60 s) are equally negligible.
FLAGS = ["--timeout", "3", "--read-timeout", "3", "--breaker-cooldown", "5", "--image-size", "256"]


def _flag(flags: list[str], name: str, default: float) -> float:
    for f in flags:
        if f.startswith(f"--{name}="):
            return float(f.split("=", 1)[1])
    return default


def _urls(base: list[str], n_good: int, hang_share: float) -> list[str]:
    good_hosts = base[:-1]
    urls = []
    every = round(1 / hang_share) if hang_share > 0 else 0
    i = 0
    while sum(1 for u in urls if "/hang" not in u) < n_good:
        if every and i % every == every // 2:
            urls.append(f"{base[-1]}/hang?i={i}")
        else:
            w, h = [(320, 240), (512, 384), (640, 480)][i % 3]
            urls.append(f"{good_hosts[i % len(good_hosts)]}/gen/{w}x{h}.jpg?seed={i}&variants=16")
        i += 1
    return urls


def _run(urls: list[str], tmp: Path) -> tuple[float, int, dict[str, int]]:
    inp = tmp / "urls.parquet"
    pq.write_table(pa.table({"url": urls, "caption": [""] * len(urls)}), inp)
    out = tmp / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "fetcher", "--input", str(inp), "--output", str(out)]
    cmd += ["--allow-private-networks", "--samples-per-tar", "1000", *FLAGS]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"fetcher failed: {proc.stderr[-2000:]}")
    table = pa.concat_tables([pq.read_table(f) for f in sorted(out.glob("*.parquet"))])
    reasons: dict[str, int] = {}
    for status, err in zip(table["status"].to_pylist(), table["error_message"].to_pylist(), strict=True):
        key = status if err is None else err
        reasons[key] = reasons.get(key, 0) + 1
    return wall, reasons.get("success", 0), reasons


def run(flags: list[str]) -> list[Table]:
    """Images/s of a mixed-host list alone and with one hanging host added."""
    n_good = int(_flag(flags, "politeness-rows", 6000))
    share = _flag(flags, "politeness-hang-share", 0.05)
    table = Table(
        f"politeness: {n_good} good rows on 7 hosts, with/without {share:.0%} rows on a hanging host",
        ["run", "rows", "wall s", "images", "images/s", "outcomes"],
    )
    with FarmThread(ADDRESSES) as farm:
        base = [farm.base(i) for i in range(len(ADDRESSES))]
        results = {}
        for name, hs in (("without hanging host", 0.0), ("with hanging host", share)):
            urls = _urls(base, n_good, hs)
            with tempfile.TemporaryDirectory(prefix="bench-politeness-") as tmp:
                wall, ok, reasons = _run(urls, Path(tmp))
            results[name] = ok / wall
            outcomes = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
            table.add(name, len(urls), wall, ok, ok / wall, outcomes)
    ratio = results["with hanging host"] / results["without hanging host"]
    table.add("ratio (with / without)", "", "", "", ratio, "target >= 0.9")
    table.notes.append(f"fetcher flags: {' '.join(FLAGS)} (defaults otherwise: concurrency 128, 8 per host)")
    table.notes.append("loopback farm in the bench process; wall time includes start-up and the hanging host's tail")
    return [table]
