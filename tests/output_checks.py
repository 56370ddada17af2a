"""Reading an output folder back the way a user's loader would, and checking its invariants."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from tests.conftest import ROOT


def check_output(out: Path, *, final: bool) -> dict[str, dict[str, Any]]:
    """Validate every finished tar of ``out``; returns its results rows by key.

    At any instant (even right after a SIGKILL): a stats marker implies a tar that opens, whose
    members are complete and match the successes of its results parquet. ``final``: additionally no
    ``.tmp`` file and no tar or parquet without its marker.
    """
    rows: dict[str, dict[str, Any]] = {}
    for marker in sorted(out.glob("*_stats.json")):
        stem = marker.name[: -len("_stats.json")]
        stats = json.loads(marker.read_text())
        table = pq.read_table(out / f"{stem}.parquet").to_pylist()
        assert stats["count"] == len(table), marker
        ok_keys = set()
        for rec in table:
            assert rec["key"] not in rows, f"duplicate key {rec['key']}"
            assert rec["key"].startswith(stem)
            rows[rec["key"]] = rec
            if rec["status"] == "success":
                ok_keys.add(rec["key"])
        assert stats["successes"] == len(ok_keys)
        assert tar_samples(out / f"{stem}.tar") == ok_keys, f"{stem}.tar does not hold exactly its successes"
    if final:
        assert not list(out.glob("*.tmp")), list(out.glob("*.tmp"))
        stems = {p.name[: -len("_stats.json")] for p in out.glob("*_stats.json")}
        for p in [*out.glob("*.tar"), *out.glob("*.parquet")]:
            assert p.stem in stems, f"{p.name} has no completion marker"
    return rows


def tar_samples(path: Path) -> set[str]:
    """Keys of a tar, after reading every member in full and decoding every image."""
    members: dict[str, set[str]] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, _, ext = m.name.partition(".")
            fh = tf.extractfile(m)
            assert fh is not None
            data = fh.read()
            assert len(data) == m.size
            if ext == "jpg":
                Image.open(io.BytesIO(data)).load()
            elif ext == "json":
                assert json.loads(data)["key"] == key
            members.setdefault(key, set()).add(ext)
    for key, exts in members.items():
        assert exts == {"jpg", "txt", "json"}, (key, exts)
    return set(members)


def start_fetcher(args: Sequence[str], **kw: Any) -> subprocess.Popen[str]:
    """``python -m fetcher`` as a real child process that the test can signal."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "fetcher", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        **kw,
    )


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """The child is killed (and waited for) when the block ends with it still running: a failed test
    leaves no fetcher behind."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    """Wait for a fetcher child started with stderr piped; its stderr. Killed if the wait fails."""
    with reaped(proc):
        _, err = proc.communicate(timeout=timeout)
    return str(err)


def kill_tree(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    """Signal the fetcher and its worker processes (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def check_stopped_output(out: Path) -> dict[str, dict[str, Any]]:
    """``check_output(final=True)`` for an output a graceful stop (or a fatal error) left with open tars.

    Each open tar may remain only as its checkpoint: a journal and the one temp tar it names, which
    the next run continues. No other temp file, no lease, nothing unmarked under a final name.
    """
    rows = check_output(out, final=False)
    named = {json.loads(p.read_bytes().split(b"\n")[0])["tmp"] for p in out.glob("*.journal")}
    assert {p.name for p in out.glob("*.tmp")} <= named, (sorted(p.name for p in out.glob("*.tmp")), named)
    assert not list(out.glob("*.lease")), list(out.glob("*.lease"))
    stems = {p.name[: -len("_stats.json")] for p in out.glob("*_stats.json")}
    for p in [*out.glob("*.tar"), *out.glob("*.parquet")]:
        assert p.stem in stems, f"{p.name} has no completion marker"
    return rows
