"""Dataset-level files rebuilt from the per-tar files of completed tars: the wids shard index and the
``files`` format's ``metadata.parquet`` (SimpleTuner, and HF imagefolder through its ``file_name``
column) and ``data.json`` (a JSON array of image/caption/width/height, the caption-dataset shape).

Several workers share one output folder and each rebuilds after its own tars, so a rebuild can race
with another worker's. Each rebuild lists the completed tars, writes the file atomically, then lists
again and repeats if a tar completed meanwhile: whoever renames last has seen every marker that
existed before its rename, so the final file is never missing a completed tar.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from storage.backend import Backend
from storage.sinks import METADATA_SCHEMA

WIDS_INDEX = "wids-index.json"
METADATA = "metadata.parquet"
DATA_JSON = "data.json"
MANIFESTS = (DATA_JSON,)
_MARKER = re.compile(r"^(\d{5,})_stats\.json$")


def completed(backend: Backend) -> list[int]:
    """Indices of the tars whose stats marker exists."""
    return sorted(int(m.group(1)) for name in backend.listdir() if (m := _MARKER.match(name)))


def converge(backend: Backend, name: str, build: Callable[[list[int]], bytes], rounds: int = 8) -> list[int]:
    """Write ``name`` = ``build(completed tars)`` until the set of completed tars stops moving."""
    done = completed(backend)
    for _ in range(rounds):
        backend.write_bytes(name, build(done))
        again = completed(backend)
        if again == done:
            break
        done = again
    return done


class WidsIndex:
    """``wids-index.json``: the completed tars and their sample counts, as wids' ShardListDataset reads it."""

    def __init__(self, backend: Backend, name: str) -> None:
        self.backend = backend
        self.name = name
        self._counts: dict[int, int] = {}  # markers never change once written: read each once

    def build(self, done: list[int]) -> bytes:
        shards = []
        for k in done:
            if k not in self._counts:
                stats = json.loads(self.backend.read_bytes(f"{k:05d}_stats.json"))
                self._counts[k] = int(stats.get("successes", 0))
            if self._counts[k]:  # a tar with no sample has nothing for wids to index
                shards.append({"url": f"{k:05d}.tar", "nsamples": self._counts[k]})
        index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": self.name, "shardlist": shards}
        return json.dumps(index, indent=1).encode()

    def update(self) -> list[int]:
        """Rewrite the index from the completed tars."""
        return converge(self.backend, WIDS_INDEX, self.build)


def build_metadata(backend: Backend, done: list[int]) -> bytes:
    """Concatenate the metadata pieces of the completed tars, piece by piece (memory: one piece)."""
    sink = io.BytesIO()
    writer: pq.ParquetWriter | None = None
    for k in done:
        name = f"{k:05d}_metadata.parquet"
        if not backend.exists(name):
            continue  # a tar completed in another --output-format
        table = pq.read_table(io.BytesIO(backend.read_bytes(name)))
        if writer is None:
            writer = pq.ParquetWriter(sink, table.schema, compression="zstd")
        elif table.schema != writer.schema:
            table = _conform(table, writer.schema)
        writer.write_table(table)
    if writer is None:
        writer = pq.ParquetWriter(sink, METADATA_SCHEMA, compression="zstd")
    writer.close()
    return sink.getvalue()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Saved columns can infer different types per tar (e.g. all-null in one): cast, else stringify."""
    arrays = []
    for f in schema:
        if f.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        try:
            arrays.append(col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            arrays.append(pa.array([None if v is None else str(v) for v in col.to_pylist()], type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def update_metadata(backend: Backend) -> list[int]:
    """Rebuild ``metadata.parquet`` from the completed tars' pieces; returns the tars included."""
    return converge(backend, METADATA, lambda done: build_metadata(backend, done))


def build_data_json(backend: Backend, done: list[int]) -> bytes:
    """``data.json``: ``[{"image", "caption", "width", "height", ...saved columns}]`` over the completed
    tars, paths relative to the output root (memory: the manifest itself, as the trainers load it)."""
    entries: list[dict[str, object]] = []
    for k in done:
        name = f"{k:05d}_metadata.parquet"
        if not backend.exists(name):
            continue
        for row in pq.read_table(io.BytesIO(backend.read_bytes(name))).to_pylist():
            entry: dict[str, object] = {
                "image": row.pop("filename"),
                "caption": row.pop("caption") or "",
                "width": row.pop("width"),
                "height": row.pop("height"),
            }
            row.pop("file_name", None)
            entry.update(row)
            entries.append(entry)
    return json.dumps(entries, indent=1, ensure_ascii=False, default=str).encode("utf-8")


def update_manifests(backend: Backend) -> list[int]:
    """Rebuild ``data.json`` from the completed tars' metadata pieces; returns the tars included."""
    return converge(backend, DATA_JSON, lambda done: build_data_json(backend, done))


def simpletuner_config(output: str, dataset_id: str = "") -> dict[str, object]:
    """A SimpleTuner dataloader entry for a ``--output-format files`` folder and its metadata.parquet."""
    root = os.path.abspath(output)
    return {
        "id": dataset_id or os.path.basename(root) or "fetcher",
        "type": "local",
        "instance_data_dir": root,
        "caption_strategy": "parquet",
        "metadata_backend": "parquet",
        "parquet": {
            "path": os.path.join(root, METADATA),
            "filename_column": "filename",
            "caption_column": "caption",
            "width_column": "width",
            "height_column": "height",
            "identifier_includes_extension": True,
        },
        "resolution": 1.0,
        "resolution_type": "area",
        "cache_dir_vae": os.path.join(root, "cache", "vae"),
    }
