"""DNS: the same LAION-like rows by IP literal and by ~2,000 names behind a slow resolver (issue 11).

``python -m bench dns [--quick] [--dns-rows=N] [--dns-names=N] [--dns-latency-ms=MS] [--dns-runners=a,b]``

The farm runs in its own process on 127.0.0.20-27 with its DNS server on 127.0.0.35:53, answering
every question after 100 ms (a cache-missing recursive lookup on the Internet). Each list is run by
  fetcher      ``python -m fetcher`` (``--dns-server 127.0.0.35:53`` for the named list)
  img2dataset  its venv (bench/.venv-img2dataset); for the named list it runs in a private mount
               namespace (``unshare -m``) whose /etc/resolv.conf names the farm's DNS server, so its
               getaddrinfo asks the same slow resolver (glibc reads no port: hence port 53)
with the settings users run: image size 256, keep_ratio, ``--resize_only_if_bigger``,
``--skip_reencode``. Sites are skewed like LAION: a quarter of the rows on 16 big hosts, the rest on
~2,000 small ones; one row in 40 is a fault (404, 500, not an image, truncated). Targets: fetcher's
named list >= 90 % of its IP-literal images/s and >= 1.2x img2dataset's on the named list.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from bench.common import Table
from bench.farmsets import FAULT_PATHS, IMAGE_HOSTS, LAION_SIZES, ROOT, free_port, serving, warm, write_urls
from bench.peerenv import img2dataset_bin
from bench.procstat import measure

CORES = os.cpu_count() or 1
DNS_HOST = "127.0.0.35"  # port 53, so a resolv.conf can name it
ZONE = "farm.test"
BIG_SITES = 16
USER_FLAGS = ["--image-size", "256", "--resize-mode", "keep_ratio", "--resize-only-if-bigger", "--skip-reencode"]
# The IP list has 8 hosts, the named one 2,000: with the default 8 per host, the IP list could have only
# 64 requests in flight against 128. 16 per host lets both fill --concurrency 128, so the ratio of the
# two runs measures DNS and nothing else.
FETCHER_FLAGS = ["--per-host-concurrency", "16"]
RUNS = ("fetcher/ip", "fetcher/dns", "img2dataset/dns", "img2dataset/ip")
TARGET_SELF = 0.9
TARGET_PEER = 1.2


@dataclass
class Flags:
    quick: bool = False
    rows: int = 4000
    names: int = 2000
    latency_ms: float = 100.0
    runs: tuple[str, ...] = RUNS
    repeat: int = 2


def parse_flags(argv: list[str]) -> Flags:
    """Our flags; flags meant for other sections are ignored."""
    f = Flags()
    for a in argv:
        key, _, value = a.partition("=")
        if key == "--quick":
            f.quick, f.rows, f.names, f.repeat = True, 400, 200, 1
        elif key == "--dns-rows":
            f.rows = int(value)
        elif key == "--dns-names":
            f.names = int(value)
        elif key == "--dns-latency-ms":
            f.latency_ms = float(value)
        elif key == "--dns-repeat":
            f.repeat = max(1, int(value))
        elif key == "--dns-runners":
            f.runs = tuple(r for r in RUNS if r.split("/")[0] in value.split(",") or r in value.split(","))
    return f


def site_of(i: int, names: int) -> int:
    """The site (name number) of row ``i``: a quarter of rows on BIG_SITES hosts, the rest spread thin."""
    if i % 4 == 0:
        return (i // 4) % BIG_SITES
    k = i - i // 4 - 1  # 0, 1, 2, ... over the other rows
    return BIG_SITES + (k * 7919) % max(1, names - BIG_SITES)  # 7919 is prime: every small site is used


def url_lists(rows: int, names: int, port: int) -> tuple[list[str], list[str]]:
    """(IP-literal URLs, named URLs): row for row the same path on the same address.

    Name ``hN`` resolves to IMAGE_HOSTS[N % 8] (fetcher/farm/names.py), so each named URL reaches
    exactly the server its IP twin does.
    """
    wheel = [s for s, w in LAION_SIZES for _ in range(w)]
    ip, named = [], []
    for i in range(rows):
        site = site_of(i, names)
        if i % 40 == 39:
            path = FAULT_PATHS[(i // 40) % len(FAULT_PATHS)]
        else:
            path = f"/gen/{wheel[(i * 7) % len(wheel)]}.jpg?seed={i}&variants=6"
        ip.append(f"http://{IMAGE_HOSTS[site % len(IMAGE_HOSTS)]}:{port}{path}")
        named.append(f"http://h{site}.{ZONE}:{port}{path}")
    return ip, named


@dataclass(frozen=True)
class NamedFarm:
    """The farm's port, and the pids of its server and DNS server (whose CPU a bench may report)."""

    port: int
    pids: tuple[int, ...]


@contextmanager
def named_farm(latency_ms: float) -> Iterator[NamedFarm]:
    """The farm on IMAGE_HOSTS and its DNS server on DNS_HOST:53, each in a child process.

    Apart, as on the Internet: image traffic on the farm's event loop never delays a DNS answer.
    """
    port = free_port(IMAGE_HOSTS[0])
    addresses = [x for a in IMAGE_HOSTS for x in ("--address", a)]
    farm = [sys.executable, "-m", "fetcher.farm", "serve", "--port", str(port), *addresses]
    dns = [sys.executable, "-m", "fetcher.farm", "dns", "--dns-address", DNS_HOST, "--dns-port", "53"]
    dns += ["--latency", str(latency_ms), *addresses]
    with serving(farm) as farm_proc, serving(dns) as dns_proc:
        yield NamedFarm(port, (farm_proc.pid, dns_proc.pid))


@dataclass
class Run:
    """One tool on one list."""

    name: str
    rows: int
    ok: int
    wall: float
    cpu: float
    peak_rss: int
    returncode: int
    note: str = ""

    @property
    def rate(self) -> float:
        return self.ok / self.wall if self.wall > 0 else 0.0


def _images(out: Path) -> int:
    """Successful rows from the tools' own per-shard parquet (both write a ``status`` column)."""
    n = 0
    for p in out.glob("*.parquet"):
        status = pq.read_table(p, columns=["status"]).column("status").to_pylist()
        n += sum(1 for s in status if s == "success")
    return n


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), NO_ALBUMENTATIONS_UPDATE="1")


def run_fetcher(name: str, urls: Path, out: Path, rows: int, named: bool) -> Run:
    cmd = [sys.executable, "-m", "fetcher", "--input", str(urls), "--output", str(out)]
    cmd += ["--allow-private-networks", "--metrics-address", "127.0.0.1:0", *USER_FLAGS, *FETCHER_FLAGS]
    if named:
        cmd += ["--dns-server", f"{DNS_HOST}:53"]
    log = out.parent / f"{out.name}.stdout"
    m = measure(cmd, env=_env(), cwd=str(ROOT), stdout_path=str(log))
    text = log.read_text(errors="replace") + m.stderr_tail
    dns_line = next((ln.strip() for ln in text.splitlines() if ln.strip().startswith("dns ")), "")
    note = re.sub(r"\s+", " ", dns_line)
    if m.returncode:
        note = f"exit {m.returncode}: {m.stderr_tail.strip()[-300:]}"
    return Run(name, rows, _images(out), m.wall, m.cpu, m.peak_rss, m.returncode, note)


def run_img2dataset(name: str, urls: Path, out: Path, rows: int, named: bool) -> Run:
    per_shard = max(1, -(-rows // (4 * CORES)))  # as bench/peers.py: several shards per process
    cmd = [
        img2dataset_bin(), "--url_list", str(urls), "--input_format", "parquet",
        "--url_col", "url", "--caption_col", "caption", "--output_format", "webdataset",
        "--output_folder", str(out), "--image_size", "256", "--resize_mode", "keep_ratio",
        "--resize_only_if_bigger", "True", "--skip_reencode", "True",
        "--encode_format", "jpg", "--encode_quality", "95", "--processes_count", str(CORES),
        "--thread_count", "64", "--number_sample_per_shard", str(per_shard),
        "--distributor", "multiprocessing", "--enable_wandb", "False",
    ]  # fmt: skip
    if named:
        cmd = asking_farm_dns(cmd, out.parent)
    m = measure(cmd, env=_env(), cwd=str(out.parent))
    note = f"exit {m.returncode}: {m.stderr_tail.strip()[-300:]}" if m.returncode else ""
    return Run(name, rows, _images(out), m.wall, m.cpu, m.peak_rss, m.returncode, note)


def asking_farm_dns(cmd: list[str], work: Path) -> list[str]:
    """``cmd`` run in a private mount namespace whose /etc/resolv.conf names the farm's DNS server, so
    glibc's getaddrinfo (img2dataset's resolver) asks the same slow resolver fetcher does."""
    conf = work / "resolv.conf"
    conf.write_text(f"nameserver {DNS_HOST}\noptions timeout:5 attempts:2\n")
    script = f'mount --bind "{conf}" /etc/resolv.conf && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, "img2dataset", *cmd]


def check_unshare() -> str | None:
    """None when a private mount namespace can be made here, else why not."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else (probe.stderr.strip() or "unshare -m failed")


def run(argv: list[str]) -> list[Table]:
    """IP-literal and named lists through fetcher and img2dataset, against one farm process."""
    f = parse_flags(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-dns-"))
    results: dict[str, list[Run]] = {}
    skipped: list[str] = []
    try:
        with named_farm(f.latency_ms) as farm:
            ip, named = url_lists(f.rows, f.names, farm.port)
            lists = {
                "ip": write_urls(work / "ip.parquet", ip, "dns bench"),
                "dns": write_urls(work / "dns.parquet", named, "dns bench"),
            }
            warmed = warm(ip)
            distinct = len({u.split("/")[2] for u in named})
            print(f"dns: {f.rows} rows, {distinct} names, farm warmed in {warmed:.0f} s", file=sys.stderr, flush=True)
            for name in [n for _ in range(f.repeat) for n in f.runs]:  # interleaved: drift hits all alike
                tool, kind = name.split("/")
                if tool == "img2dataset" and kind == "dns" and (why := check_unshare()):
                    skipped.append(f"{name}: skipped, no private mount namespace ({why})")
                    continue
                out = work / name.replace("/", "-")
                runner = run_fetcher if tool == "fetcher" else run_img2dataset
                r = runner(name, lists[kind], out, f.rows, kind == "dns")
                results.setdefault(name, []).append(r)
                shutil.rmtree(out, ignore_errors=True)
                print(
                    f"dns: {name}: {r.ok}/{r.rows} ok in {r.wall:.1f} s = {r.rate:.1f} images/s {r.note}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [_table(f, results, distinct, sorted(set(skipped)))]


def _table(f: Flags, runs: dict[str, list[Run]], distinct: int, skipped: list[str]) -> Table:
    t = Table(
        f"dns: {f.rows} LAION-like rows by IP literal and by {distinct} names, resolver answering in"
        f" {f.latency_ms:g} ms (best of {f.repeat})",
        ["list/tool", "rows", "ok", "wall s", "images/s", "all images/s", "CPU ms/img", "peak RSS MB", "target",
         "met"],
    )  # fmt: skip
    results = {name: max(rs, key=lambda r: r.rate) for name, rs in runs.items()}
    fip, fdns, idns = (results.get(k) for k in ("fetcher/ip", "fetcher/dns", "img2dataset/dns"))
    targets: dict[str, tuple[str, bool]] = {}
    if fip and fdns and fip.rate:
        ratio = fdns.rate / fip.rate
        targets["fetcher/dns"] = (f"{100 * ratio:.0f} % of fetcher/ip (>= 90 %)", ratio >= TARGET_SELF)
    if fdns and idns and idns.rate:
        ratio = fdns.rate / idns.rate
        targets["img2dataset/dns"] = (f"fetcher/dns {ratio:.2f}x this (>= 1.2x)", ratio >= TARGET_PEER)
    for name, r in results.items():
        cpu_ms = 1000 * r.cpu / r.ok if r.ok else None
        target, met = targets.get(name, ("", ""))
        every = " ".join(f"{x.rate:.1f}" for x in runs[name])
        t.add(name, r.rows, r.ok, r.wall, r.rate, every, cpu_ms, r.peak_rss / 2**20, target, met)
    load = os.getloadavg()
    t.notes += [
        f"{CORES} cores; farm and DNS server in their own processes (not charged, competing for the cores).",
        "settings: --image-size 256, keep_ratio, --resize-only-if-bigger, --skip-reencode; img2dataset:"
        f" {CORES} processes x 64 threads; fetcher: defaults but --per-host-concurrency 16 (so its 8-host IP"
        " list, too, can fill --concurrency 128). CPU = user+sys of the whole process tree.",
        "img2dataset/dns resolves with glibc getaddrinfo against the same server (private /etc/resolv.conf).",
        f"each list/tool ran {f.repeat}x, interleaved; the row shows its fastest run (the machine is shared).",
        f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}" + (" (quick mode)" if f.quick else ""),
    ]
    t.notes += [f"{name}: {r.note}" for name, rs in runs.items() for r in rs if r.note]
    t.notes += skipped
    return t
