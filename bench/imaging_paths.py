"""The timed image paths, runnable under any Pillow: ``python -m bench.imaging_paths JOBS.json OUT.json``.

The imaging bench runs this module in the main venv (Pillow-SIMD) and in bench/.venv-stock (stock
Pillow) so both libraries time exactly the same code. Only Pillow and the standard library here.
"""

from __future__ import annotations

import io
import json
import sys
import time
from typing import Any

from PIL import Image


def naive(data: bytes, size: tuple[int, int], quality: int = 95) -> tuple[bytes, Image.Image]:
    """What photo-concept-bucket's download.py does with a resize: full decode, Lanczos, encode."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img = img.resize(size, resample=Image.LANCZOS)  # type: ignore[attr-defined]
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue(), img


def fetcher(data: bytes, short: int) -> tuple[bytes, Image.Image | None]:
    """fetcher's imaging stage (keep_ratio, jpg q95, no hash: the naive path hashes nothing either)."""
    from fetcher.imaging import ImageOptions, process_image

    out = process_image(data, ImageOptions(image_size=short, hash="none"))
    assert out.ok and out.data is not None, out
    return out.data, None


def cpu_ms(fn: Any, reps: int) -> tuple[float, Any]:
    """Best process-CPU time of ``reps`` calls, in ms (best-of: the machine is shared)."""
    best, result = float("inf"), None
    for _ in range(reps):
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best * 1000, result


def run_job(job: dict[str, Any]) -> float:
    """Time one job; optionally save the naive path's resized pixels (PNG) for PSNR."""
    with open(job["path"], "rb") as fh:
        data = fh.read()
    size = (job["size"][0], job["size"][1])
    if job["kind"] == "naive":
        ms, (_, img) = cpu_ms(lambda: naive(data, size), job["reps"])
        if job.get("save"):
            img.save(job["save"], "PNG", compress_level=1)
    else:
        ms, _ = cpu_ms(lambda: fetcher(data, job["short"]), job["reps"])
    return ms


def main(argv: list[str]) -> int:
    with open(argv[0]) as fh:
        jobs = json.load(fh)
    results = [run_job(job) for job in jobs]
    with open(argv[1], "w") as fh:
        json.dump({"pillow": Image.__version__, "ms": results}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
