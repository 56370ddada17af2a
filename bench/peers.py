"""fetcher side by side with its peers on one local farm, plus the imaging limit (issue 8).

``python -m bench peers [--quick] [--workloads=a,b] [--runners=a,b] [--rows-scale=F] [--profile]``

Each workload's URL parquet is run in turn by
  fetcher        ``python -m fetcher`` with default settings + ``--allow-private-networks``
  img2dataset    its own venv; webdataset output, same size / keep_ratio / jpg q95, processes =
                 cores, 64 threads
  baseline       bench/baseline_download.py (ThreadPoolExecutor + requests + stock-PIL full decode)
  imaging-limit  fetcher's process_image alone on the same images held in memory, process pool
and each run is measured as a process tree (bench/procstat.py): wall time, user+sys CPU, peak RSS.
The farm runs in its own process on the same 2 cores, so it is not charged to anyone but competes
with everyone. ``--profile`` runs the fetcher parent under py-spy instead (numbers then not
comparable) and writes bench/out/peers-profile-<workload>.txt (collapsed stacks).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import chart, common
from bench.common import OUT, Table
from bench.farmsets import LAION_SIZES, PHOTO_SIZES, ROOT, SMALL_SIZES, Workload, farm_process, warm
from bench.peerenv import img2dataset_bin
from bench.procstat import Measurement, measure
from bench.stockenv import stock_python

CORES = os.cpu_count() or 1
RUNNERS = ("fetcher", "img2dataset", "baseline", "imaging-limit")
RSS_RUNNERS = ("fetcher", "img2dataset")  # the 50k-row memory run
# Targets from issue 8: fetcher / img2dataset images/s.
PEER_TARGETS = {"laion-1024": 4.0, "photos-1024": 2.0, "photos-512": 3.0}
LIMIT_TARGET = 0.85
RSS_TARGET = 2**30


def workloads(quick: bool, scale: float) -> list[Workload]:
    """The full set; ``quick`` is a smoke run of the same shapes with few rows."""

    def n(full: int, small: int) -> int:
        return max(8, round((small if quick else full) * scale))

    return [
        Workload("laion-256", LAION_SIZES, 256, n(2000, 200), variants=6, fault_every=40),
        Workload("laion-1024", LAION_SIZES, 1024, n(800, 120), variants=6, fault_every=40),
        Workload("photos-1024", PHOTO_SIZES, 1024, n(120, 16), variants=3),
        Workload("photos-512", PHOTO_SIZES, 512, n(120, 16), variants=3),
        Workload("rss-50k", SMALL_SIZES, 128, n(50_000, 3000), variants=8, fault_every=100),
    ]


@dataclass
class Flags:
    quick: bool = False
    workloads: list[str] = field(default_factory=list)
    runners: list[str] = field(default_factory=lambda: list(RUNNERS))
    scale: float = 1.0
    profile: bool = False


def parse_flags(flags: list[str]) -> Flags:
    """Our flags; flags meant for other sections are ignored."""
    return common.parse_flags(flags, Flags, {"--rows-scale": "scale"})


@dataclass
class Result:
    """One tool on one workload."""

    workload: str
    runner: str
    rows: int
    ok: int
    wall: float
    cpu: float
    parent_cpu: float
    peak_rss: int
    peak_pss: int
    out_bytes: int
    returncode: int
    timeline: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    log: str = ""  # the end of its stderr (fetcher's summary)

    @property
    def rate(self) -> float:
        return self.ok / self.wall if self.wall > 0 else 0.0

    @property
    def cpu_ms(self) -> float | None:
        return 1000 * self.cpu / self.ok if self.ok else None

    @property
    def parent_cpu_ms(self) -> float | None:
        return 1000 * self.parent_cpu / self.ok if self.ok else None


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _tar_images(path: Path) -> int:
    n = 0
    for tar in sorted(path.glob("*.tar")):
        with tarfile.open(tar) as tf:
            n += sum(1 for m in tf if m.name.endswith(".jpg"))
    return n


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), NO_ALBUMENTATIONS_UPDATE="1")


def _from_measurement(wl: Workload, runner: str, m: Measurement, ok: int, out_bytes: int) -> Result:
    return Result(
        workload=wl.name,
        runner=runner,
        rows=wl.rows,
        ok=ok,
        wall=m.wall,
        cpu=m.cpu,
        parent_cpu=m.root_cpu,
        peak_rss=m.peak_rss,
        peak_pss=m.peak_pss,
        out_bytes=out_bytes,
        returncode=m.returncode,
        timeline=m.timeline(),
        error=m.stderr_tail[-600:] if m.returncode else "",
        log=m.stderr_tail[-3000:],
    )


def run_fetcher(
    wl: Workload,
    urls: Path,
    out: Path,
    profile: Path | None = None,
    processes: int = 0,
    user_flags: bool = False,
    extra: list[str] | None = None,
) -> Result:
    """``python -m fetcher`` on the workload; ``user_flags``: seed 003's --resize-only-if-bigger --skip-reencode."""
    cmd = [sys.executable, "-m", "fetcher", "--input", str(urls), "--output", str(out)]
    cmd += ["--allow-private-networks", "--image-size", str(wl.image_size)]
    if processes:
        # Several tars per engine, as img2dataset gets several shards per process below.
        cmd += ["--processes", str(processes), "--samples-per-tar", str(max(1, -(-wl.rows // (4 * processes))))]
    if user_flags:
        cmd += ["--resize-only-if-bigger", "--skip-reencode"]
    cmd += extra or []
    if profile is not None:
        spy = Path(sys.executable).parent / "py-spy"
        if not spy.exists():
            raise SystemExit(f"peers --profile: {spy} is missing; run make install (py-spy is in the dev extra)")
        cmd = [str(spy), "record", "--format", "raw", "--rate", "100", "--gil", "-o", str(profile), "--", *cmd]
    m = measure(cmd, env=_env(), cwd=str(ROOT))
    return _from_measurement(wl, "fetcher", m, _tar_images(out), _dir_bytes(out))


def run_img2dataset(
    wl: Workload,
    urls: Path,
    out: Path,
    processes: int = 0,
    user_flags: bool = False,
    wrap: Callable[[list[str], Path], list[str]] | None = None,
) -> Result:
    """img2dataset on the workload, ``processes`` (default: cores) x 64 threads, same flags as fetcher;
    ``wrap`` rewrites the command (e.g. to run it against the farm's resolver)."""
    procs = processes or CORES
    # Several shards per process, so one slow shard does not leave a core idle at the end.
    per_shard = max(1, -(-wl.rows // (4 * procs)))
    cmd = [
        img2dataset_bin(), "--url_list", str(urls), "--input_format", "parquet",
        "--url_col", "url", "--caption_col", "caption", "--output_format", "webdataset",
        "--output_folder", str(out), "--image_size", str(wl.image_size), "--resize_mode", "keep_ratio",
        "--encode_format", "jpg", "--encode_quality", "95", "--processes_count", str(procs),
        "--thread_count", "64", "--number_sample_per_shard", str(per_shard),
        "--distributor", "multiprocessing", "--enable_wandb", "False",
    ]  # fmt: skip
    if user_flags:
        cmd += ["--resize_only_if_bigger", "True", "--skip_reencode", "True"]
    if wrap is not None:
        cmd = wrap(cmd, out.parent)
    m = measure(cmd, env=_env(), cwd=str(out.parent))
    return _from_measurement(wl, "img2dataset", m, _tar_images(out), _dir_bytes(out))


def run_baseline(wl: Workload, urls: Path, out: Path) -> Result:
    script = Path(__file__).resolve().parent / "baseline_download.py"
    cmd = [stock_python(), str(script), "--input", str(urls), "--output", str(out)]
    cmd += ["--image-size", str(wl.image_size)]
    m = measure(cmd, env=_env(), cwd=str(out.parent))
    ok = sum(1 for p in out.glob("*.jpg")) if out.exists() else 0
    return _from_measurement(wl, "baseline", m, ok, _dir_bytes(out) if out.exists() else 0)


def run_imaging_limit(wl: Workload, urls: Path, out: Path) -> Result:
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "result.json"
    cmd = [sys.executable, "-m", "bench.imaging_limit", "--input", str(urls)]
    cmd += ["--image-size", str(wl.image_size), "--processes", str(CORES), "--result", str(res_path)]
    m = measure(cmd, env=_env(), cwd=str(ROOT))
    r = _from_measurement(wl, "imaging-limit", m, 0, 0)
    if m.returncode == 0:
        # Its own timed window: the untimed download of the bytes into memory is left out.
        got = json.loads(res_path.read_text())
        r.ok, r.wall, r.cpu, r.out_bytes = got["ok"], got["wall"], got["cpu"], got["out_bytes"]
        r.parent_cpu = got["parent_cpu"]
    return r


RUN: dict[str, Callable[[Workload, Path, Path], Result]] = {
    "fetcher": run_fetcher,
    "img2dataset": run_img2dataset,
    "baseline": run_baseline,
    "imaging-limit": run_imaging_limit,
}


def _ratio(a: Result | None, b: Result | None) -> float | None:
    if a is None or b is None or not b.rate:
        return None
    return a.rate / b.rate


def _mb(n: int) -> float:
    return n / 2**20


def tables(results: list[Result], quick: bool) -> list[Table]:
    """The main table, the ratio/target table and the 50k-row RSS timeline."""
    load = os.getloadavg()
    main = Table(
        "peers: fetcher vs img2dataset vs seed-style baseline vs imaging limit (local farm, loopback)",
        ["workload", "tool", "rows", "ok", "wall s", "images/s", "CPU ms/img", "parent ms/img", "peak RSS MB",
         "peak PSS MB",
         "out MB", "fetcher/this"],
    )  # fmt: skip
    by = {(r.workload, r.runner): r for r in results}
    for r in results:
        f = by.get((r.workload, "fetcher"))
        rel = _ratio(f, r) if r.runner != "fetcher" else None
        main.add(
            r.workload, r.runner, r.rows, r.ok, r.wall, r.rate, r.cpu_ms, r.parent_cpu_ms, _mb(r.peak_rss),
            _mb(r.peak_pss),
            _mb(r.out_bytes), "" if rel is None else f"{rel:.2f}x",
        )  # fmt: skip
    main.notes += [
        f"{CORES} cores; the farm runs in its own process on the same cores (not charged, but competing).",
        "CPU = user+sys of the whole process tree; RSS summed over the tree (forked workers' shared pages"
        " count once per process; PSS counts them once). parent = the command's own process alone"
        " (fetcher: the asyncio loop that fetches and writes; imaging-limit: its pool's parent).",
        "imaging-limit: process_image alone on a pool of one worker per core, bytes already in memory;"
        " wall and CPU of the timed pool run only, RSS of the whole helper (it holds all the images).",
        "images/s = images in the output / wall time of the whole command (start-up included).",
        f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}" + (" (quick mode)" if quick else ""),
    ]
    for r in results:
        if r.returncode:
            main.notes.append(f"{r.workload}/{r.runner} exited {r.returncode}: {r.error.strip()[-300:]}")
    targets = Table("peers: targets (issue 8)", ["workload", "measure", "value", "target", "met"])
    for wl, want in PEER_TARGETS.items():
        got = _ratio(by.get((wl, "fetcher")), by.get((wl, "img2dataset")))
        if got is not None:
            targets.add(wl, "fetcher / img2dataset images/s", f"{got:.2f}x", f">= {want:g}x", got >= want)
    for wl in sorted({r.workload for r in results}):
        got = _ratio(by.get((wl, "fetcher")), by.get((wl, "imaging-limit")))
        if got is not None:
            targets.add(wl, "fetcher / imaging-limit images/s", f"{100 * got:.0f} %", ">= 85 %", got >= LIMIT_TARGET)
    rss = [r for r in results if r.workload == "rss-50k"]
    for r in rss:
        met: bool | str = r.peak_rss <= RSS_TARGET if r.runner == "fetcher" else "(reference)"
        targets.add(r.workload, f"{r.runner} peak RSS", f"{_mb(r.peak_rss):.0f} MB", "<= 1024 MB", met)
    out = [main, targets]
    if rss:
        out.append(_rss_table(rss))
    return out


def _rss_table(rss: list[Result]) -> Table:
    t = Table(
        "peers: RSS of the process tree over the 50k-row run (MB)", ["tool", *[f"{p}%" for p in range(0, 101, 10)]]
    )
    for r in rss:
        tl = r.timeline
        if not tl:
            continue
        end = tl[-1]["t"] or 1.0
        row: list[Any] = []
        for p in range(0, 101, 10):
            at = [s for s in tl if s["t"] <= end * p / 100] or tl[:1]
            row.append(at[-1]["rss_mb"])
        t.add(r.runner, *row)
    t.notes.append("columns: share of the run's wall time elapsed; full timelines in bench/out/peers-runs.json")
    return t


def run(argv: list[str]) -> list[Table]:
    """Run every selected workload with every selected runner, in turn, against one farm process."""
    flags = parse_flags(argv)
    selected = [w for w in workloads(flags.quick, flags.scale) if not flags.workloads or w.name in flags.workloads]
    if flags.profile:
        flags.runners = ["fetcher"]
        if not flags.workloads:
            selected = [w for w in selected if w.name.startswith("laion")]
    results: list[Result] = []
    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    try:
        with farm_process() as port:
            for wl in selected:
                urls = work / f"{wl.name}.parquet"
                warmed = warm(wl.write(urls, port))
                print(f"peers: {wl.name}: {wl.rows} rows, farm warmed in {warmed:.0f} s", file=sys.stderr, flush=True)
                runners = RSS_RUNNERS if wl.name == "rss-50k" else RUNNERS
                for runner in [r for r in runners if r in flags.runners]:
                    out = work / f"{wl.name}-{runner}"
                    if flags.profile:
                        res = run_fetcher(wl, urls, out, OUT / f"peers-profile-{wl.name}.txt")
                    else:
                        res = RUN[runner](wl, urls, out)
                    results.append(res)
                    shutil.rmtree(out, ignore_errors=True)
                    print(
                        f"peers: {wl.name}/{runner}: {res.ok}/{wl.rows} ok in {res.wall:.1f} s"
                        f" = {res.rate:.1f} images/s, {res.cpu_ms or 0:.1f} CPU ms/img"
                        f" (parent {res.parent_cpu_ms or 0:.2f}), peak RSS {_mb(res.peak_rss):.0f} MB"
                        + (f" (exit {res.returncode})" if res.returncode else ""),
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out_tables = tables(results, flags.quick)
    _save_runs(results)
    if results and not flags.profile:
        path = chart.draw(results, OUT / "peers.png")
        out_tables[0].notes.append(f"chart: {path}")
    return out_tables


def _save_runs(results: list[Result]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "peers-runs.json"
    runs = [dict(vars(r), rate=r.rate, cpu_ms=r.cpu_ms, parent_cpu_ms=r.parent_cpu_ms) for r in results]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(runs, indent=1, default=str))
    os.replace(tmp, path)
