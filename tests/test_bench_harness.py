"""The peers benchmark's own parts: process-tree accounting, workloads, chart."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from PIL import Image

from bench import chart
from bench.farmsets import FAULT_HOSTS, IMAGE_HOSTS, LAION_SIZES, Workload
from bench.peers import Result, parse_flags
from bench.procstat import measure

# A parent that holds ~200 MB and a child that burns ~0.6 s of CPU.
_BURN = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.6: pass"
_TREE = f"""
import subprocess, sys, time
ballast = bytearray(200 * 2**20)
for i in range(0, len(ballast), 4096): ballast[i] = 1
subprocess.run([sys.executable, "-c", "{_BURN}"])
time.sleep(0.3)
"""


def test_measure_counts_the_whole_tree() -> None:
    m = measure([sys.executable, "-c", _TREE], interval=0.05)
    assert m.returncode == 0
    assert m.cpu >= 0.55, m.cpu  # the grandchild's CPU is charged to the tree
    assert m.root_cpu < m.cpu - 0.4
    assert m.peak_rss >= 200 * 2**20
    assert max(s.procs for s in m.samples) >= 2


def test_measure_reports_failure_and_stderr() -> None:
    m = measure([sys.executable, "-c", "import sys; sys.exit('boom')"])
    assert m.returncode == 1 and "boom" in m.stderr_tail


def test_workload_urls_are_loopback_mixed_and_faulty() -> None:
    wl = Workload("w", LAION_SIZES, 256, rows=1000, variants=4, fault_every=40)
    urls = wl.urls(8000)
    hosts = Counter(u.split("/")[2].split(":")[0] for u in urls)
    assert set(hosts) <= set(IMAGE_HOSTS + FAULT_HOSTS)
    assert sum(hosts[h] for h in FAULT_HOSTS) == 25
    sizes = Counter(u.split("/gen/")[1].split(".")[0] for u in urls if "/gen/" in u)
    assert sizes["1024x768"] > sizes["3000x2000"] > 0  # weighted as declared
    assert urls == wl.urls(8000)  # deterministic


def test_flags_ignore_other_sections() -> None:
    f = parse_flags(["--quick", "--workloads=laion-256", "--runners=fetcher", "--something-else=1"])
    assert f.quick and f.workloads == ["laion-256"] and f.runners == ["fetcher"]


def test_chart_draws_a_panel_per_workload(tmp_path: Path) -> None:
    def res(wl: str, runner: str, ok: int) -> Result:
        tl = [{"t": t, "rss_mb": 100.0 + t} for t in range(5)]
        return Result(wl, runner, 100, ok, 10.0, 5.0, 1.0, 2**28, 2**27, 10**6, 0, tl)

    results = [res(w, r, ok) for w in ("a", "b", "rss-50k") for r, ok in (("fetcher", 90), ("img2dataset", 30))]
    path = chart.draw(results, tmp_path / "c.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 600 and img.height > 500
        assert len(img.convert("RGB").getcolors(2**16) or []) > 10  # bars and text, not a blank page
