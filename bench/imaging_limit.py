"""The imaging limit: fetcher's ``process_image`` alone on the workload's images, held in memory.

``python -m bench.imaging_limit --input urls.parquet --image-size N --processes P --result out.json``
downloads every row's bytes first (untimed; the farm serves each distinct image, rows share them),
then runs ``process_image`` over all rows on a process pool of P workers, the way the pipeline
does, with no network, scheduler or writer in the way: the rate the pipeline can approach.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pyarrow.parquet as pq

from bench.farmsets import fetch
from bench.procstat import TreeSampler
from fetcher.imaging import ImageOptions, process_image
from fetcher.records import ImageOutcome


def _job(data: bytes, opts: ImageOptions) -> tuple[bool, int]:
    out: ImageOutcome = process_image(data, opts)
    return out.ok, len(out.data or b"")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--processes", type=int, required=True)
    p.add_argument("--result", required=True)
    args = p.parse_args()
    urls = pq.read_table(args.input, columns=["url"]).column("url").to_pylist()
    distinct = sorted(set(urls))
    with ThreadPoolExecutor(8) as ex:
        by_url = dict(zip(distinct, ex.map(fetch, distinct), strict=True))
    datas = [d for d in (by_url[u] for u in urls) if d is not None]
    opts = ImageOptions(image_size=args.image_size)
    ctx = multiprocessing.get_context("forkserver")
    pool = ProcessPoolExecutor(args.processes, mp_context=ctx)
    list(pool.map(_job, datas[: args.processes], [opts] * args.processes))  # start the workers untimed
    # The workers are forkserver grandchildren (no rusage reaches us): read the tree's CPU from /proc.
    tree = TreeSampler(os.getpid())
    me = os.getpid()
    first = tree.sample()
    cpu0, parent0, start = first.cpu, tree.cpu_by_pid[me], time.monotonic()
    ok = out_bytes = 0
    for good, n in pool.map(_job, datas, [opts] * len(datas), chunksize=4):
        ok += good
        out_bytes += n
    wall = time.monotonic() - start
    cpu = tree.sample().cpu - cpu0
    parent_cpu = tree.cpu_by_pid[me] - parent0
    pool.shutdown()
    result = {
        "rows": len(urls),
        "images": len(datas),
        "ok": ok,
        "wall": wall,
        "cpu": cpu,
        "parent_cpu": parent_cpu,
        "out_bytes": out_bytes,
    }
    with open(args.result, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
