"""Shared test fixtures: the loopback image farm and helpers to run fetcher for real."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fetcher.farm import Farm, FarmThread
from tests.sentinel import Sentinel
from tests.skipguard import (  # noqa: F401 (pytest finds these hooks by name here)
    pytest_configure,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

FARM_ADDRESSES = tuple(f"127.0.0.{i}" for i in range(2, 10))
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def farm() -> Iterator[Farm]:
    """The multi-host image farm on 127.0.0.2-9, shared by the whole session."""
    with FarmThread(FARM_ADDRESSES) as f:
        yield f


@pytest.fixture(scope="session")
def sentinel(farm: Farm) -> Iterator[Sentinel]:
    """Counting listeners on refused loopback addresses (127.0.0.1, 127.0.0.10, ::1) at the farm's port.

    A refused address must have something listening behind it, or a leak would only fail to connect.
    """
    with Sentinel(["127.0.0.1", "127.0.0.10", "::1"], farm.port) as s:
        yield s


def write_urls(path: Path, urls: Sequence[Any], captions: Sequence[Any] | None = None, **cols: Sequence[Any]) -> Path:
    """Write a URL parquet (``url``, ``caption`` and any extra columns)."""
    data: dict[str, Any] = {"url": list(urls)}
    data["caption"] = list(captions) if captions is not None else [f"caption {i}" for i in range(len(urls))]
    data.update({k: list(v) for k, v in cols.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(data), path, row_group_size=max(1, min(len(urls), 64)))
    return path


def run_fetcher(*args: str, timeout: float = 240, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fetcher`` as a real subprocess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fetcher", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
        )
    except subprocess.TimeoutExpired as exc:  # say what it was doing: its last log lines
        tail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise AssertionError(f"fetcher still running after {timeout:g}s; its stderr ended:\n{tail[-3000:]}") from None
    if check and proc.returncode != 0:
        raise AssertionError(f"fetcher exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def results_table(out: Path) -> pa.Table:
    """All per-tar results parquet files of an output folder, concatenated."""
    files = sorted(out.glob("*.parquet"))
    assert files, f"no results parquet in {out}"
    return pa.concat_tables([pq.read_table(f) for f in files])
