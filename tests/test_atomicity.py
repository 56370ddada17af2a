"""Atomic publishing, proven by outcome and by the order of the syscalls that do it.

1. SIGKILL real ``python -m fetcher`` runs (the whole process group, like a pod kill) at spread
   instants while small tars are being published (two rows per tar: publishes happen all the time),
   and check every file under a *final* name: each ``NNNNN.tar`` is a complete archive (every
   member's bytes, end-of-archive blocks) holding all its tar's samples, each parquet reads, each json
   parses, and a stats marker exists only beside a complete tar and results parquet whose counts agree
   with it. The same for ``--output-format files`` (``NNNNN/`` folders) and ``parquet``. Temp files
   (and any checkpoint journal beside them) are not looked at: they may be partial, final names not.
2. Trace a short run with strace and check that nothing is ever opened for writing under a final
   name; that every file renamed into a final name was fsync'd after its last write and before the
   rename; and that a tar's marker is renamed only after its tar and parquet were renamed and the
   directory fsync'd (and the directory fsync'd again after the marker).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from fetcher.farm import Farm
from tests.conftest import ROOT, run_fetcher, write_urls
from tests.monitoring import tool

BLOCK = 512
SAMPLES_PER_TAR = 2
TAR = re.compile(r"^(\d{5,})\.tar$")
PARQUET = re.compile(r"^(\d{5,})\.parquet$")
STATS = re.compile(r"^(\d{5,})_stats\.json$")
FOLDER = re.compile(r"^(\d{5,})$")  # --output-format files
PIECE = re.compile(r"^(\d{5,})_metadata\.parquet$")  # --output-format files
IMAGES = re.compile(r"^(\d{5,})_images\.parquet$")  # --output-format parquet
FINAL = (TAR, PARQUET, STATS, FOLDER, PIECE, IMAGES, re.compile(r"^wids-index\.json$"),
         re.compile(r"^metadata\.parquet$"))  # fmt: skip
# Kill instants, seconds after the first marker appeared: spread over the busy publishing phase.
KILL_DELAYS = (0.0, 0.05, 0.15, 0.35, 0.7)


def _fails(i: int) -> bool:
    return i % 7 == 3


def _urls(farm: Farm, rows: int, tag: str) -> list[str]:
    # Mostly small images on two hosts, plus some 404s so a marker's counts differ from its successes.
    paths = [f"/status/404?{tag}={i}" if _fails(i) else f"/img/small.jpg?{tag}={i}" for i in range(rows)]
    return [farm.url(p, i % 2) for i, p in enumerate(paths)]


def expected_samples(rows: int) -> dict[int, set[str]]:
    """The sample keys each tar must hold once published: every row but the 404s (loopback never fails)."""
    out: dict[int, set[str]] = {}
    for i in range(rows):
        k, j = divmod(i, SAMPLES_PER_TAR)
        out.setdefault(k, set())
        if not _fails(i):
            out[k].add(f"{k:05d}{j:04d}")
    return out


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """Parse a tar strictly: every header valid, every member's bytes present, end-of-archive blocks.

    ``tarfile`` itself reads an archive cut at a block boundary without complaint, so it cannot tell
    a half-written tar from a whole one.
    """
    data = path.read_bytes()
    assert data, f"{path.name}: empty file under a final name"
    assert len(data) % BLOCK == 0, f"{path.name}: {len(data)} bytes, not whole 512-byte blocks"
    samples: dict[str, dict[str, bytes]] = {}
    pos = 0
    while True:
        assert pos + 2 * BLOCK <= len(data), f"{path.name}: ends at byte {pos} without end-of-archive blocks"
        header = data[pos : pos + BLOCK]
        if header == bytes(BLOCK):
            assert not data[pos:].strip(b"\0"), f"{path.name}: data after the end-of-archive blocks"
            break
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")  # checks the header checksum
        start = pos + BLOCK
        assert start + info.size <= len(data), f"{path.name}: member {info.name} cut short"
        key, _, ext = info.name.partition(".")
        samples.setdefault(key, {})[ext] = data[start : start + info.size]
        pos = start + -(-info.size // BLOCK) * BLOCK
    _sample_members(samples, path.name)
    return samples


def _sample_members(samples: dict[str, dict[str, bytes]], where: str) -> None:
    for key, members in samples.items():
        assert set(members) == {"jpg", "txt", "json"}, f"{where}: sample {key} has {sorted(members)}"
        assert json.loads(members["json"])["key"] == key, where
        Image.open(io.BytesIO(members["jpg"])).verify()


def folder_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """``--output-format files``: a published per-tar folder, every sample with all its files, each whole."""
    samples: dict[str, dict[str, bytes]] = {}
    for f in path.iterdir():
        key, _, ext = f.name.partition(".")
        samples.setdefault(key, {})[ext] = f.read_bytes()
    _sample_members(samples, path.name)
    return samples


def images_parquet_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """``--output-format parquet``: the image bytes per key, read back whole."""
    return {
        str(r["key"]): {"jpg": r["image"], "txt": str(r["caption"]).encode(), "json": str(r["json"]).encode()}
        for r in pq.read_table(path).to_pylist()
    }


def check_final_names(out: Path, expected: dict[int, set[str]]) -> dict[str, int]:
    """Assert every final-named file in ``out`` is whole and every marker consistent; count them.

    Any output format: the samples of tar ``k`` are its ``NNNNN.tar`` (webdataset), ``NNNNN/`` folder
    plus ``NNNNN_metadata.parquet`` (files) or ``NNNNN_images.parquet`` (parquet).
    """
    names = sorted(os.listdir(out)) if out.exists() else []
    counts = {"samples": 0, "parquet": 0, "marker": 0}
    samples: dict[int, dict[str, dict[str, bytes]]] = {}
    tables: dict[int, list[dict[str, object]]] = {}
    pieces: dict[int, list[dict[str, object]]] = {}
    for name in names:
        path = out / name
        if m := TAR.match(name):
            samples[int(m.group(1))] = tar_samples(path)
        elif (m := FOLDER.match(name)) and path.is_dir():
            samples[int(m.group(1))] = folder_samples(path)
        elif m := IMAGES.match(name):
            samples[int(m.group(1))] = images_parquet_samples(path)
            _sample_members(samples[int(m.group(1))], name)
        elif m := PARQUET.match(name):
            tables[int(m.group(1))] = pq.read_table(path).to_pylist()
            counts["parquet"] += 1
        elif m := PIECE.match(name):
            pieces[int(m.group(1))] = pq.read_table(path).to_pylist()
        elif name == "metadata.parquet":
            pq.read_table(path)
    counts["samples"] = len(samples)
    for k, got in samples.items():
        # With or without its marker, a published tar (folder, images parquet) holds all its samples.
        assert set(got) == expected[k], f"tar {k} published with samples {sorted(got)}, not {sorted(expected[k])}"
    for name in names:
        if not (m := STATS.match(name)):
            continue
        k = int(m.group(1))
        stats = json.loads((out / name).read_text())
        counts["marker"] += 1
        assert k in samples and k in tables, f"marker {name} without its samples and results parquet: {names}"
        rows = tables[k]
        ok_keys = {str(r["key"]) for r in rows if r["status"] == "success"}
        assert stats["count"] == len(rows) == SAMPLES_PER_TAR, (name, stats, len(rows))
        assert stats["successes"] == len(ok_keys) == len(samples[k]), (name, stats, sorted(samples[k]))
        assert set(samples[k]) == ok_keys, name
        assert stats["failed_to_download"] == len(rows) - len(ok_keys)
        if FOLDER.match(f"{k:05d}") and (out / f"{k:05d}").is_dir():
            assert k in pieces, f"marker {name} without {k:05d}_metadata.parquet"
            assert {str(r["key"]) for r in pieces[k]} == ok_keys, name
    if "wids-index.json" in names:
        index = json.loads((out / "wids-index.json").read_text())
        for entry in index["shardlist"]:
            k = int(str(entry["url"]).removesuffix(".tar"))
            assert f"{k:05d}_stats.json" in names, f"wids-index.json lists {entry} before its marker"
            assert entry["nsamples"] == len(samples[k])
    return counts


def _kill_during_publishing(inp: Path, out: Path, delay: float, fmt: str) -> bool:
    """Start fetcher, wait for its first marker, SIGKILL its process group ``delay`` s later."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ["--input", str(inp), "--output", str(out), "--samples-per-tar", str(SAMPLES_PER_TAR),
            "--allow-private-networks", "--processes", "1", "--retries", "0", "--metrics-address", "",
            "--progress", "off", "--output-format", fmt]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "fetcher", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
        start_new_session=True,  # its own group: the kill takes the imaging workers too
    )
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and any(STATS.match(n) for n in os.listdir(out)):
                break
            time.sleep(0.01)
        time.sleep(delay)
        alive = proc.poll() is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    return alive


@pytest.mark.parametrize(
    ("fmt", "delays"),
    [("webdataset", KILL_DELAYS), ("files", (0.05, 0.4)), ("parquet", (0.05, 0.4))],
)
def test_sigkill_at_any_instant_leaves_no_partial_file_under_a_final_name(
    farm: Farm, tmp_path: Path, fmt: str, delays: tuple[float, ...]
) -> None:
    rows = 600
    inp = write_urls(tmp_path / "urls.parquet", _urls(farm, rows, f"atomic-{fmt}"))
    landed = []
    markers = []
    for i, delay in enumerate(delays):
        out = tmp_path / f"out{i}"
        landed.append(_kill_during_publishing(inp, out, delay, fmt))
        markers.append(check_final_names(out, expected_samples(rows))["marker"])
    # The kills must have hit runs in the middle of publishing, or the checks above proved nothing.
    assert sum(landed) >= len(delays) - 1, (landed, markers)
    assert all(n > 0 for n in markers) and min(markers) < 300, markers


# -- syscall order ------------------------------------------------------------------------------------
@dataclass
class Call:
    """One traced syscall: its order in the trace, thread id, name, and the file(s) it names."""

    seq: int
    tid: int
    name: str
    path: str
    target: str = ""
    writes: bool = False  # openat for writing


_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)$")
_FD_PATH = re.compile(r"^-?\d+<(.*?)>")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_AT_DIR = re.compile(r"(?:AT_FDCWD|\d+)<(.*?)>")


def parse_trace(text: str) -> list[Call]:
    """The calls of an ``strace -f -y`` log (``<... resumed>`` halves are skipped: start order counts)."""
    calls: list[Call] = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m or "resumed>" in line:
            continue
        tid, name, rest = int(m.group(1)), m.group(2), m.group(3)
        if name in ("fsync", "fdatasync", "write", "pwrite64", "writev"):
            fd = _FD_PATH.match(rest)
            if fd:
                calls.append(Call(len(calls), tid, name, fd.group(1)))
        elif name == "openat":
            strings = _STRING.findall(rest)
            dirs = _AT_DIR.findall(rest)
            if not strings:
                continue
            path = strings[0] if strings[0].startswith("/") else os.path.join(dirs[0] if dirs else "", strings[0])
            writes = bool(re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", rest))
            calls.append(Call(len(calls), tid, name, os.path.normpath(path), writes=writes))
        elif name in ("rename", "renameat", "renameat2"):
            strings = _STRING.findall(rest)
            dirs = _AT_DIR.findall(rest)
            if len(strings) < 2:
                continue
            if name != "rename" and len(dirs) >= 2:
                strings = [s if s.startswith("/") else os.path.join(d, s) for s, d in zip(strings, dirs, strict=False)]
            calls.append(Call(len(calls), tid, "rename", os.path.normpath(strings[0]), os.path.normpath(strings[1])))
    return calls


def check_publish_order(calls: list[Call], out: str) -> dict[str, int]:
    """Assert durable, atomic publishing of every final-named file in ``out``; returns counts checked."""
    final = [c for c in calls if c.name == "rename" and os.path.dirname(c.target) == out]
    is_final = [lambda p, rx=rx: os.path.dirname(p) == out and bool(rx.match(os.path.basename(p))) for rx in FINAL]
    opened_final = [c for c in calls if c.name == "openat" and c.writes and any(f(c.path) for f in is_final)]
    assert not opened_final, f"opened for writing under a final name: {[c.path for c in opened_final]}"
    syncs = [c for c in calls if c.name in ("fsync", "fdatasync")]
    dir_syncs = [c.seq for c in syncs if c.path == out]
    renamed: dict[str, int] = {}  # the first rename to each name: a marker appears once, never early
    last: dict[str, int] = {}
    for r in final:
        writes = [c.seq for c in calls if c.seq < r.seq and c.path == r.path and c.name in ("write", "pwrite64",
                                                                                                "writev")]  # fmt: skip
        last_write = max(writes, default=-1)
        synced = [c.seq for c in syncs if last_write < c.seq < r.seq and c.path == r.path]
        assert synced, f"{r.path} renamed to {os.path.basename(r.target)} without an fsync after its last write"
        renamed.setdefault(os.path.basename(r.target), r.seq)
        last[os.path.basename(r.target)] = r.seq
    checked = 0
    for name, marker_seq in renamed.items():
        if not (m := STATS.match(name)):
            continue
        stem = m.group(1)
        tar_seq, parquet_seq = renamed.get(f"{stem}.tar"), renamed.get(f"{stem}.parquet")
        assert tar_seq is not None and parquet_seq is not None, f"marker {name} published without tar/parquet"
        assert tar_seq < parquet_seq < marker_seq, f"{stem}: tar {tar_seq}, parquet {parquet_seq}, marker {marker_seq}"
        assert any(tar_seq < s < parquet_seq for s in dir_syncs), f"{stem}.tar rename not made durable before parquet"
        assert any(parquet_seq < s < marker_seq for s in dir_syncs), f"{stem}.parquet rename not durable before marker"
        assert any(s > marker_seq for s in dir_syncs), f"{name} rename never made durable"
        checked += 1
    if "wids-index.json" in last:
        assert last["wids-index.json"] > max(v for k, v in renamed.items() if STATS.match(k))
    return {"markers": checked, "renames": len(final)}


@pytest.mark.skipif(tool("strace") is None, reason="strace not installed (Debian package 'strace')")
def test_publish_order_is_write_fsync_rename_then_marker(farm: Farm, tmp_path: Path) -> None:
    inp = write_urls(tmp_path / "urls.parquet", _urls(farm, 6, "trace"))
    out = tmp_path / "out"
    trace = tmp_path / "trace.txt"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = ["strace", "-f", "--seccomp-bpf", "-y", "-s", "0", "-o", str(trace),
           "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,openat,write,pwrite64,writev",
           sys.executable, "-m", "fetcher", "--input", str(inp), "--output", str(out),
           "--samples-per-tar", str(SAMPLES_PER_TAR), "--allow-private-networks", "--processes", "1",
           "--metrics-address", "", "--progress", "off"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = check_publish_order(parse_trace(trace.read_text()), str(out))
    assert counts["markers"] == 3, counts
    assert check_final_names(out, expected_samples(6))["marker"] == 3


def test_checker_sees_a_cut_tar(farm: Farm, tmp_path: Path) -> None:
    # The strict reader is what the kill test relies on: a tar cut anywhere, even at a block
    # boundary where tarfile still reads it, must fail it.
    inp = write_urls(tmp_path / "urls.parquet", _urls(farm, 2, "cut"))
    out = tmp_path / "out"
    run_fetcher("--input", str(inp), "--output", str(out), "--allow-private-networks", "--processes", "1",
                "--samples-per-tar", str(SAMPLES_PER_TAR), "--metrics-address", "")  # fmt: skip
    tar = out / "00000.tar"
    assert len(tar_samples(tar)) == 2
    data = tar.read_bytes()
    end = len(data.rstrip(b"\0"))
    for cut in (0, BLOCK, -(-end // BLOCK) * BLOCK, len(data) // 2 // BLOCK * BLOCK, end - 100):
        tar.write_bytes(data[:cut])
        with pytest.raises(AssertionError):
            tar_samples(tar)
