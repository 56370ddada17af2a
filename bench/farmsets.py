"""Bench workloads on the local farm: URL tables, and the farm in its own process.

The farm runs as a separate process (``python -m fetcher.farm serve``) so its CPU is not charged
to the measured tool; it still shares the machine's cores with it, which every table says.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
# Away from the tests' 127.0.0.2-9 so a bench and a test session on one machine do not meet.
IMAGE_HOSTS = tuple(f"127.0.0.{i}" for i in range(20, 28))
FAULT_HOSTS = ("127.0.0.28", "127.0.0.29")

# LAION-like: mostly 0.2-2 MP in the usual aspect ratios, one in ten larger (3-6 MP).
LAION_SIZES = [
    ("512x384", 10), ("640x480", 14), ("600x800", 8), ("800x600", 12), ("1024x768", 14), ("768x1024", 6),
    ("1280x720", 8), ("1200x900", 8), ("1600x1200", 10), ("2048x1536", 6), ("3000x2000", 4),
]  # fmt: skip
# Pexels originals: ~20 MP, landscape and portrait.
PHOTO_SIZES = [("5472x3648", 5), ("3648x5472", 3), ("5184x3888", 2)]
SMALL_SIZES = [("320x240", 1), ("240x320", 1)]
FAULT_PATHS = ["/status/404", "/status/500", "/notimage", "/truncated/medium.jpg"]


@dataclass(frozen=True)
class Workload:
    """One input: ``rows`` URLs drawn from ``sizes`` (weighted), resized to ``image_size``."""

    name: str
    sizes: list[tuple[str, int]]
    image_size: int
    rows: int
    variants: int  # distinct images per size (the farm generates each once)
    fault_every: int = 0  # every n-th row goes to a fault host (0: none)

    def urls(self, port: int) -> list[str]:
        """The URL column: sizes in a fixed weighted rotation, hosts round-robin, faults spread evenly."""
        wheel = [s for s, w in self.sizes for _ in range(w)]
        # Interleave the wheel so consecutive rows differ in size (a fair mix at any prefix).
        wheel = [wheel[(i * 7) % len(wheel)] for i in range(len(wheel))] if len(wheel) % 7 else wheel
        out = []
        for i in range(self.rows):
            if self.fault_every and i % self.fault_every == self.fault_every - 1:
                host = FAULT_HOSTS[(i // self.fault_every) % len(FAULT_HOSTS)]
                path = FAULT_PATHS[(i // self.fault_every) % len(FAULT_PATHS)]
            else:
                host = IMAGE_HOSTS[i % len(IMAGE_HOSTS)]
                path = f"/gen/{wheel[i % len(wheel)]}.jpg?seed={i}&variants={self.variants}"
            out.append(f"http://{host}:{port}{path}")
        return out

    def write(self, path: Path, port: int) -> list[str]:
        """Write the URL parquet (``url``, ``caption``); returns the URLs."""
        urls = self.urls(port)
        write_urls(path, urls, self.name)
        return urls


def write_urls(path: Path, urls: list[str], name: str) -> Path:
    """A URL parquet (``url``, ``caption`` = "<name> image <i>") as the bench runners read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"url": urls, "caption": [f"{name} image {i}" for i in range(len(urls))]})
    pq.write_table(table, path, row_group_size=4096)
    return path


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on ``address`` (loopback) right now."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(cmd: list[str]) -> Iterator[subprocess.Popen[str]]:
    """Run a farm server command (``python -m fetcher.farm ...``) in a child process until the block ends."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "serving" not in line:
            raise RuntimeError(f"{' '.join(cmd[2:5])} did not start: {line.strip()}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def farm_process() -> Iterator[int]:
    """Serve the farm on IMAGE_HOSTS + FAULT_HOSTS in a child process; yields the port."""
    port = free_port(IMAGE_HOSTS[0])
    cmd = [sys.executable, "-m", "fetcher.farm", "serve", "--port", str(port)]
    for a in IMAGE_HOSTS + FAULT_HOSTS:
        cmd += ["--address", a]
    with serving(cmd):
        yield port


def fetch(url: str, timeout: float = 120) -> bytes | None:
    """GET one farm URL (loopback only; faults give None)."""
    host = url.split("/")[2].split(":")[0]
    if not host.startswith("127."):
        raise ValueError(f"bench fetches only loopback URLs, not {url}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data: bytes = resp.read()
            return data
    except Exception:
        return None


def warm(urls: list[str], threads: int = 4) -> float:
    """Request every distinct image once so the farm has generated it before anything is timed."""
    start = time.monotonic()
    seen: dict[str, str] = {}
    for u in urls:
        if "/gen/" in u:
            size = u.split("/gen/")[1].split(".")[0]
            seed, variants = (int(x.split("=")[1]) for x in u.split("?")[1].split("&"))
            seen.setdefault(f"{size}/{seed % variants}", u)
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        list(ex.map(fetch, seen.values()))
    return time.monotonic() - start
