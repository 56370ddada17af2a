"""Imaging bench: CPU ms per image, fetcher vs the naive path, and the quality (PSNR) of both.

Per source size (0.25-20 MP, baseline and progressive JPEG, photo-like content at q90) and target
short side (256/512/1024): process-CPU time of

- naive (stock Pillow, bench/.venv-stock): full decode + Lanczos + JPEG encode, as photo-concept-bucket's
  download.py would do with a resize; the same code under Pillow-SIMD shows what SIMD alone gains;
- fetcher's process_image (keep_ratio, jpg q95) under Pillow-SIMD and, for comparison, stock Pillow.

PSNR is measured on the resized pixels before encoding, against a full-decode float (mode F) Lanczos
reference. A second table times the decode/resize variants considered for a 20-MP JPEG, which is
how the path in fetcher/imaging.py was chosen. Times are best-of-N CPU time (the machine is shared).
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import Table
from bench.stockenv import stock_python
from fetcher.farm.images import make_image
from fetcher.imaging import DRAFT_MARGIN, REDUCING_GAP, ImageOptions, hash_bytes, render, target_size

ROOT = Path(__file__).resolve().parent.parent
MEGAPIXELS = (0.25, 1, 3, 12, 20)
TARGETS = (256, 512, 1024)
# Targets for a 20-MP baseline JPEG: fetcher's CPU time as a fraction of the naive path's.
GOALS = {1024: 0.35, 512: 0.25, 256: 0.20}


def _reps(mp: float) -> int:
    return 7 if mp < 1 else 5 if mp < 12 else 4  # best-of needs a few tries even for 20 MP


def _dims(mp: float) -> tuple[int, int]:
    w = round(math.sqrt(mp * 1e6 * 1.5))
    return w, round(w / 1.5)


def reference(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """Full decode, then a float Lanczos per channel: the quality yardstick."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    chans = [c.convert("F").resize(size, Image.Resampling.LANCZOS, reducing_gap=None) for c in img.split()]
    return np.clip(np.rint(np.stack([np.asarray(c) for c in chans], -1)), 0, 255)


def psnr(ref: np.ndarray, img: Image.Image) -> float:
    mse = float(np.mean((ref - np.asarray(img.convert("RGB"), np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


def _run_paths(python: str, jobs: list[dict[str, Any]], tmp: Path, tag: str) -> list[float]:
    job_file, out_file = tmp / f"jobs-{tag}.json", tmp / f"out-{tag}.json"
    job_file.write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([python, "-m", "bench.imaging_paths", str(job_file), str(out_file)], check=True, env=env, cwd=ROOT)
    ms: list[float] = json.loads(out_file.read_text())["ms"]
    return ms


def main_table(tmp: Path, sizes: tuple[float, ...]) -> Table:
    table = Table(
        "imaging: CPU ms per image (best of N), keep_ratio -> jpg q95, photo-like JPEG q90 sources",
        [
            "source", "jpeg", "target", "naive stock", "naive SIMD", "fetcher stock", "fetcher",
            "fetcher/naive", "goal", "PSNR fetcher", "PSNR naive",
        ],
    )  # fmt: skip
    cases: list[dict[str, Any]] = []
    for mp in sizes:
        w, h = _dims(mp)
        for progressive in (False, True):
            data = make_image(w, h, "jpeg", texture="photo", quality=90, progressive=progressive)
            path = tmp / f"{mp}-{int(progressive)}.jpg"
            path.write_bytes(data)
            for short in TARGETS:
                size = target_size(w, h, ImageOptions(image_size=short))
                cases.append(dict(mp=mp, w=w, h=h, progressive=progressive, path=str(path), short=short, size=size))
    naive_jobs = [
        dict(kind="naive", path=c["path"], size=c["size"], short=c["short"], reps=_reps(c["mp"]), save=f"{i}.png")
        for i, c in enumerate(cases)
    ]
    for job in naive_jobs:
        job["save"] = str(tmp / job["save"])
    fetcher_jobs = [dict(job, kind="fetcher", save="") for job in naive_jobs]
    stock = stock_python()
    naive_stock = _run_paths(stock, naive_jobs, tmp, "naive-stock")
    naive_simd = _run_paths(sys.executable, [dict(j, save="") for j in naive_jobs], tmp, "naive-simd")
    fetcher_stock = _run_paths(stock, fetcher_jobs, tmp, "fetcher-stock")
    fetcher_simd = _run_paths(sys.executable, fetcher_jobs, tmp, "fetcher-simd")
    for i, c in enumerate(cases):
        data = Path(c["path"]).read_bytes()
        ref = reference(data, c["size"])
        ours = psnr(ref, render(data, ImageOptions(image_size=c["short"])))
        theirs = psnr(ref, Image.open(naive_jobs[i]["save"]))
        ratio = fetcher_simd[i] / naive_stock[i]
        goal = GOALS[c["short"]] if c["mp"] == 20 and not c["progressive"] else None
        table.add(
            f"{c['mp']} MP {c['w']}x{c['h']}",
            "progressive" if c["progressive"] else "baseline",
            c["short"],
            naive_stock[i],
            naive_simd[i],
            fetcher_stock[i],
            fetcher_simd[i],
            f"{ratio:.0%}",
            "" if goal is None else f"<={goal:.0%} {'ok' if ratio <= goal else 'MISSED'}",
            ours,
            theirs,
        )
    simd_gain = [s / d for s, d in zip(naive_stock, naive_simd, strict=True)]
    draft_gain = [s / d for s, d in zip(fetcher_stock, fetcher_simd, strict=True)]
    table.notes += [
        f"Pillow-SIMD vs stock Pillow on the naive path: {min(simd_gain):.2f}-{max(simd_gain):.2f}x faster "
        f"(median {float(np.median(simd_gain)):.2f}x); on fetcher's path: {min(draft_gain):.2f}-{max(draft_gain):.2f}x "
        f"(median {float(np.median(draft_gain)):.2f}x)",
        "fetcher/naive = fetcher (Pillow-SIMD) / naive (stock Pillow); goal applies to 20-MP baseline JPEGs",
        "PSNR of the resized pixels before encoding vs full-decode float Lanczos (99 = identical)",
    ]
    return table


def _variant_fns(data: bytes, size: tuple[int, int]) -> dict[str, Callable[[], Image.Image]]:
    def drafted(margin: float, gap: float | None) -> Callable[[], Image.Image]:
        def fn() -> Image.Image:
            img = Image.open(io.BytesIO(data))
            img.draft("RGB", (math.ceil(size[0] * margin), math.ceil(size[1] * margin)))
            return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=gap)

        return fn

    def full(gap: float | None) -> Callable[[], Image.Image]:
        return lambda: Image.open(io.BytesIO(data)).resize(size, Image.Resampling.LANCZOS, reducing_gap=gap)

    fns = {
        "draft >= 1.5x target, reducing_gap=2 (fetcher)": drafted(DRAFT_MARGIN, REDUCING_GAP),
        "draft >= 1.5x target, Lanczos": drafted(DRAFT_MARGIN, None),
        "draft >= target (Pillow's rule), Lanczos": drafted(1, None),
        "draft >= 2x target, Lanczos": drafted(2, None),
        "full decode, Lanczos": full(None),
        "full decode, reducing_gap=2 (fetcher, non-JPEG)": full(REDUCING_GAP),
        "full decode, reducing_gap=3": full(3.0),
    }
    try:
        import simplejpeg  # type: ignore[import-not-found]
    except ImportError:
        return fns

    def sj() -> Image.Image:
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=size[0], min_height=size[1])
        return Image.fromarray(arr).resize(size, Image.Resampling.LANCZOS, reducing_gap=None)

    fns["simplejpeg DCT-scaled, Lanczos"] = sj
    return fns


def variants_table() -> Table:
    from bench.imaging_paths import cpu_ms

    w, h = _dims(20)
    data = make_image(w, h, "jpeg", texture="photo", quality=90)
    table = Table(
        f"imaging variants: decode + resize of a 20-MP baseline JPEG ({len(data) / 1e6:.1f} MB), CPU ms (best of 3)",
        ["variant", *[f"{t} ms" for t in TARGETS], *[f"{t} PSNR" for t in TARGETS]],
    )
    cols: dict[str, list[float]] = {}
    for short in TARGETS:
        size = target_size(w, h, ImageOptions(image_size=short))
        ref = reference(data, size)
        for name, fn in _variant_fns(data, size).items():
            ms, img = cpu_ms(fn, 3)
            cols.setdefault(name, []).extend([ms, psnr(ref, img)])
    for name, vals in cols.items():
        table.add(name, *vals[0::2], *vals[1::2])
    if not any(name.startswith("simplejpeg") for name in cols):
        table.notes.append("simplejpeg not installed: its row is missing (pip install simplejpeg to compare)")
    costs = {a: hash_cost(data, a) for a in ("sha256", "md5", "xxh3")}
    table.notes.append(
        "hash of the original bytes (--hash), same image: " + ", ".join(f"{a} {ms:.1f} ms" for a, ms in costs.items())
    )
    return table


def hash_cost(data: bytes, algorithm: str) -> float:
    from bench.imaging_paths import cpu_ms

    ms, _ = cpu_ms(lambda: hash_bytes(data, algorithm), 5)
    return ms


def run(flags: list[str]) -> list[Table]:
    """``--quick`` stops at 3 MP (for a smoke run)."""
    sizes = tuple(mp for mp in MEGAPIXELS if mp <= 3) if "--quick" in flags else MEGAPIXELS
    with tempfile.TemporaryDirectory(prefix="bench-imaging-") as tmp:
        tables = [main_table(Path(tmp), sizes)]
    if "--quick" not in flags:
        tables.append(variants_table())
    return tables
