"""How throughput grows with processes (issue 13): fetcher and img2dataset at the same process counts.

``python -m bench scaling [--quick] [--procs=1,2,4] [--workloads=thumbs,laion-256] [--runners=a,b]
[--names=N] [--dns-latency-ms=MS]``

Two workloads on the Internet-shaped farm (its own processes, same cores): rows on ``--names`` host
names (a quarter on 16 big sites, the rest spread thin, as bench dns) behind a resolver answering in
``--dns-latency-ms``, one row in 100 (thumbs) or 40 (laion-256) a fault (404, 500, not an image,
truncated) on two fault sites; ``--names=0`` runs the same rows by IP literal. Both run with the
settings users run (seed 003: ``--resize-only-if-bigger --skip-reencode``):
  thumbs      96-160 px JPEGs to a 256 target: almost no imaging work, so the per-image cost of the
              coordinating process (fetch bookkeeping, tar writing) is what limits a box
  laion-256   the LAION-like size mix (0.2-6 MP) to 256 px: decode/resize bound
For each: images/s, CPU ms per image of the whole process tree, the coordinator's own CPU ms per
image (the command's root process: for fetcher, the box parent), and the farm's CPU ms per image
(it shares the cores: what it takes bounds what the tools can get).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from bench import common
from bench.chart import COLOURS, _font
from bench.common import OUT, Table
from bench.dns import DNS_HOST, ZONE, asking_farm_dns, check_unshare, named_farm, site_of
from bench.farmsets import LAION_SIZES, Workload, warm, write_urls
from bench.peers import Result, run_fetcher, run_img2dataset
from bench.procstat import cpu_seconds

THUMB_SIZES = [("160x120", 3), ("120x160", 2), ("128x96", 2), ("96x128", 1), ("144x144", 1)]
# fetcher: imaging in the engine's own threads (the default); fetcher-processes: --imaging-pool processes
RUNNERS = ("fetcher", "fetcher-processes", "img2dataset")
# Issue 13's goals on the thumbnail workload.
COORDINATOR_TARGET_MS = 0.1
TWO_PROCESS_TARGET = 1.8


@dataclass
class Flags:
    quick: bool = False
    procs: list[int] = field(default_factory=lambda: [1, 2, 4])
    workloads: list[str] = field(default_factory=list)
    runners: list[str] = field(default_factory=lambda: list(RUNNERS))
    names: int = 2000  # 0: IP literals
    dns_latency_ms: float = 100.0


def parse_flags(argv: list[str]) -> Flags:
    """Our flags; flags meant for other sections are ignored."""
    return common.parse_flags(argv, Flags)


def workloads(quick: bool) -> list[Workload]:
    """Thumbnails (coordinator-bound) and the LAION-like mix (imaging-bound)."""
    return [
        # 30,000 rows: at ~2,000 images/s the engines' start-up (~1 s) is a few % of the run, as on a real list.
        Workload("thumbs", THUMB_SIZES, 256, 1500 if quick else 30_000, variants=8, fault_every=100),
        Workload("laion-256", LAION_SIZES, 256, 300 if quick else 2000, variants=6, fault_every=40),
    ]


def named_urls(wl: Workload, port: int, names: int) -> list[str]:
    """The workload's rows on host names: each image row on site ``site_of(i)``, each fault row on one of
    two fault sites (so their failures open those sites' breakers only, as with the IP hosts)."""
    out = []
    for i, url in enumerate(wl.urls(port)):
        path = url.split(f":{port}", 1)[1]
        fault = wl.fault_every and i % wl.fault_every == wl.fault_every - 1
        site = names + (i // wl.fault_every) % 2 if fault else site_of(i, names)
        out.append(f"http://h{site}.{ZONE}:{port}{path}")
    return out


def box_coordinator_ms(r: Result) -> float | None:
    """fetcher's own figure for its box parent's CPU per image, start-up left out (None: one engine)."""
    m = re.search(r"coordinator ([\d.]+) ms CPU/image", r.log)
    return float(m.group(1)) if m else None


def tables(
    results: list[tuple[int, Result]], farm_ms: dict[int, float] | None = None, flags: Flags | None = None
) -> list[Table]:
    """One row per (workload, tool, processes), speed-up against the same tool at the fewest processes."""
    main = Table(
        "scaling: images/s by processes (settings users run: --resize-only-if-bigger --skip-reencode)",
        ["workload", "tool", "processes", "ok", "wall s", "images/s", "speed-up", "CPU ms/img", "coord ms/img",
         "box coord ms/img", "farm ms/img", "peak RSS MB"],
    )  # fmt: skip
    base: dict[tuple[str, str], float] = {}
    for procs, r in sorted(results, key=lambda x: (x[1].workload, x[1].runner, x[0])):
        first = base.setdefault((r.workload, r.runner), r.rate)
        main.add(
            r.workload, r.runner, procs, r.ok, r.wall, r.rate, f"{r.rate / first:.2f}x" if first else "",
            r.cpu_ms, r.parent_cpu_ms, box_coordinator_ms(r) or "", (farm_ms or {}).get(id(r), ""),
            r.peak_rss / 2**20,
        )  # fmt: skip
    load = os.getloadavg()
    main.notes += [
        f"{os.cpu_count()} cores; the farm and its DNS server run in their own processes on the same cores (not"
        " charged, but competing: farm ms/img is their CPU per image).",
        (
            f"rows on {flags.names} names behind a resolver answering in {flags.dns_latency_ms:g} ms (fetcher:"
            " --dns-server; img2dataset: getaddrinfo against the same server)"
            if flags and flags.names
            else "rows by IP literal"
        ),
        "coord ms/img = CPU of the command's own process / images (fetcher: the asyncio parent that fetches"
        " and writes at 1 process, the box parent above; img2dataset: its main process, which distributes"
        " shards). Both include start-up (imports, planning).",
        "box coord ms/img = fetcher's box parent's CPU from the engines' start to their end, per image"
        " (its own summary line): the marginal cost of coordinating, start-up left out.",
        f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}",
    ]
    for _, r in results:
        if r.returncode:
            main.notes.append(f"{r.workload}/{r.runner} exited {r.returncode}: {r.error.strip()[-300:]}")
    goals = Table("scaling: goals (issue 13)", ["measure", "value", "target", "met"])
    by = {(r.workload, r.runner, p): r for p, r in results}
    one, two = by.get(("thumbs", "fetcher", 1)), by.get(("thumbs", "fetcher", 2))
    coord = box_coordinator_ms(two) if two is not None else None
    if coord is not None:
        goals.add(
            "thumbs: fetcher box coordinator CPU ms/img at 2 processes",
            f"{coord:.3f}",
            f"<= {COORDINATOR_TARGET_MS}",
            coord <= COORDINATOR_TARGET_MS,
        )
    if one is not None and two is not None and one.rate:
        ratio = two.rate / one.rate
        goals.add("thumbs: fetcher images/s, 2 vs 1 processes", f"{ratio:.2f}x", f">= {TWO_PROCESS_TARGET}x",
                  ratio >= TWO_PROCESS_TARGET)  # fmt: skip
        if two.cpu_ms and one.rate:
            # What this machine's cores allow: every core busy at the 2-process run's CPU per image
            # (fetcher's whole tree plus the farm's), against the 1-process rate.
            per_image = two.cpu_ms + (farm_ms or {}).get(id(two), 0.0)
            ceiling = min(2.0, (os.cpu_count() or 1) * 1000 / per_image / one.rate)
            goals.add("thumbs: the most 2 vs 1 processes can give on these cores", f"{ceiling:.2f}x", "", "")
    return [main, goals]


def draw(results: list[tuple[int, Result]], path: Path) -> Path:
    """images/s against processes, one panel per workload, one line per tool."""
    names = list(dict.fromkeys(r.workload for _, r in results))
    pw, ph = 380, 280
    img = Image.new("RGB", (pw * max(1, len(names)) + 20, ph + 40), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 6), "images/s by --processes (higher is better)", fill="black", font=_font(16))
    for i, wl in enumerate(names):
        x0, y0 = 10 + i * pw, 30
        runs = [(p, r) for p, r in results if r.workload == wl]
        procs = sorted({p for p, _ in runs})
        top = max((r.rate for _, r in runs), default=1.0) or 1.0
        left, base, width, height = x0 + 50, y0 + ph - 40, pw - 80, ph - 80
        d.text((x0 + 8, y0 + 4), wl, fill="black", font=_font(14))
        d.line((left, base, left + width, base), fill="black")
        d.line((left, base, left, base - height), fill="black")
        d.text((left - 4, base - height), f"{top:.0f}", fill="black", font=_font(11), anchor="rm")

        def xy(p: int, v: float, box: tuple[int, int, int, int, float] = (left, base, width, height, top),
               procs: list[int] = procs) -> tuple[float, float]:  # fmt: skip
            x, y, w, h, scale = box
            return x + w * procs.index(p) / max(1, len(procs) - 1), y - h * v / scale

        for p in procs:
            d.text((xy(p, 0)[0], base + 4), str(p), fill="black", font=_font(11), anchor="ma")
        for k, runner in enumerate(dict.fromkeys(r.runner for _, r in runs)):
            pts = [xy(p, r.rate) for p, r in sorted(runs, key=lambda x: x[0]) if r.runner == runner]
            colour = COLOURS.get(runner, (90, 90, 90))
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            for x, y in pts:
                d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
            d.text((left + 8, y0 + 24 + 14 * k), runner, fill=colour, font=_font(12))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    os.replace(tmp, path)
    return path


def run_one(wl: Workload, runner: str, procs: int, urls: Path, out: Path, names: bool) -> Result:
    """One tool at one process count; ``names``: the rows are host names (resolved by the farm's server)."""
    kw: dict[str, Any] = {"processes": procs, "user_flags": True}
    if runner == "img2dataset":
        return run_img2dataset(wl, urls, out, wrap=asking_farm_dns if names else None, **kw)
    extra = ["--imaging-pool", "processes"] if runner == "fetcher-processes" else []
    extra += ["--dns-server", f"{DNS_HOST}:53"] if names else []
    res = run_fetcher(wl, urls, out, extra=extra, **kw)
    res.runner = runner
    return res


def run(argv: list[str]) -> list[Table]:
    """Every selected workload x tool x process count, in turn, against one farm."""
    flags = parse_flags(argv)
    selected = [w for w in workloads(flags.quick) if not flags.workloads or w.name in flags.workloads]
    results: list[tuple[int, Result]] = []
    farm_ms: dict[int, float] = {}
    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    named = flags.names > 0
    runners = [r for r in RUNNERS if r in flags.runners]
    if "img2dataset" in runners and named and (why := check_unshare()):
        print(f"scaling: img2dataset skipped: no private mount namespace ({why})", file=sys.stderr)
        runners.remove("img2dataset")
    try:
        with named_farm(flags.dns_latency_ms) as farm:
            for wl in selected:
                ip = wl.urls(farm.port)
                rows = named_urls(wl, farm.port, flags.names) if named else ip
                urls = write_urls(work / f"{wl.name}.parquet", rows, wl.name)
                warm(ip)
                for runner, procs in [(r, p) for r in runners for p in flags.procs]:
                    out = work / f"{wl.name}-{runner}-{procs}"
                    farm_cpu = sum(cpu_seconds(p) for p in farm.pids)
                    res = run_one(wl, runner, procs, urls, out, named)
                    farm_ms[id(res)] = 1000 * (sum(cpu_seconds(p) for p in farm.pids) - farm_cpu) / max(1, res.ok)
                    results.append((procs, res))
                    shutil.rmtree(out, ignore_errors=True)
                    print(
                        f"scaling: {wl.name}/{runner} x{procs}: {res.ok}/{wl.rows} ok, {res.rate:.1f} images/s,"
                        f" {res.cpu_ms or 0:.2f} CPU ms/img, coordinator {res.parent_cpu_ms or 0:.3f} ms/img,"
                        f" farm {farm_ms[id(res)]:.2f} ms/img" + (f" (exit {res.returncode})" * bool(res.returncode)),
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tabs = tables(results, farm_ms, flags)
    if results:
        tabs[0].notes.append(f"chart: {draw(results, OUT / 'scaling.png')}")
    return tabs
