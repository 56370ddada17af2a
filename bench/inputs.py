"""Input reading: rows/s and peak memory per input format, with and without ``--filter``.

Each measurement runs in a fresh child process so its peak RSS is its own. Rows are LAION-like
(URL, TEXT, three scores). ``--quick`` uses 100k rows instead of 1M.
"""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import Table

CHILD = r"""
import json, sys, time
from fetcher.reader import InputOptions, iter_rows, open_inputs, plan_tars
path, which = sys.argv[1], sys.argv[3]
opts = InputOptions(**json.loads(sys.argv[2]))
def hwm_mb():
    # VmHWM starts afresh at exec; ru_maxrss would carry the parent's peak over fork+exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
base = hwm_mb()
t0 = time.perf_counter()
files = open_inputs(path, opts)
t_open = time.perf_counter() - t0
total = sum(f.num_rows for f in files)
tars = plan_tars(total, 10000, (0, 1))
if which == "last":
    tars = tars[-1:]
t1 = time.perf_counter()
n = kept = 0
for t in tars:
    for row in iter_rows(files, t, opts, 10000):
        n += 1
        kept += row.skip_reason is None
t_read = time.perf_counter() - t1
print(json.dumps({"open_s": t_open, "read_s": t_read, "rows": n, "kept": kept, "rss_mb": hwm_mb(),
                  "rss_base_mb": base}))
"""


def _write(tmp: Path, n: int) -> dict[str, Path]:
    urls = [f"https://img{i % 97}.example.com/photos/{i}/large.jpg" for i in range(n)]
    table = pa.table(
        {
            "URL": urls,
            "TEXT": [f"a photo of thing number {i} on a table, {i % 13} items" for i in range(n)],
            "punsafe": [(i * 7 % 100) / 100 for i in range(n)],
            "pwatermark": [(i * 13 % 100) / 100 for i in range(n)],
            "similarity": [0.2 + (i * 17 % 30) / 100 for i in range(n)],
        }
    )
    paths = {
        "parquet": tmp / "in.parquet",
        "jsonl.gz": tmp / "in.jsonl.gz",
        "csv": tmp / "in.csv",
        "txt": tmp / "in.txt",
    }
    pq.write_table(table, paths["parquet"], row_group_size=50_000)
    rows = table.to_pylist()
    with gzip.open(paths["jsonl.gz"], "wt", compresslevel=1) as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    paths["txt"].write_text("".join(u + "\n" for u in urls))
    return paths


def _child(path: Path, opts: dict[str, str], which: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), json.dumps(opts), which], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout))


def run(flags: list[str]) -> list[Table]:
    n = 100_000 if "--quick" in flags else 1_000_000
    flt = "punsafe < 0.5 and pwatermark < 0.8 and similarity > 0.3"
    table = Table(
        f"input reading, {n:,} rows, tars of 10,000 (one child process per line)",
        ["format", "filter", "open s", "read s", "rows/s", "kept", "RSS after imports MB", "peak RSS MB", "last tar s"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = _write(Path(tmp), n)
        for fmt, path in paths.items():
            # a URL list has no caption or score columns: read it plain only
            variants = [""] if fmt == "txt" else ["", flt]
            for f in variants:
                opts = {"url_col": "URL", "caption_col": ""} if fmt == "txt" else {
                    "url_col": "URL", "caption_col": "TEXT", "filter": f, "save_columns": "similarity"}  # fmt: skip
                r = _child(path, opts, "all")
                last = _child(path, opts, "last")
                table.add(
                    fmt, "yes" if f else "no", r["open_s"], r["read_s"], r["rows"] / r["read_s"],
                    r["kept"], r["rss_base_mb"], r["rss_mb"], last["read_s"],
                )  # fmt: skip
    table.notes.append("open s: schema + row count (parquet metadata; one streaming pass for text formats)")
    table.notes.append("last tar s: reading only the last tar (parquet skips row groups; text formats skip lines)")
    return [table]
