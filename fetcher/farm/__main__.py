"""``python -m fetcher.farm demo|serve``: the bundled sample image host.

``serve --dns 127.0.0.35:53 --dns-latency 100`` also serves the test zone ``farm.test`` by name
(fetcher/farm/names.py) from a DNS server answering after 100 ms.

``demo`` is what ``make run`` does: start the farm on loopback, write a sample URL parquet, run
``python -m fetcher`` on it end to end (tars land in ./out) and print its summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

from fetcher.farm.dns import DnsServer
from fetcher.farm.internet import InternetThread
from fetcher.farm.names import NameZone
from fetcher.farm.server import Farm, FarmThread

DEMO_ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


def sample_rows(farm: Farm, rows: int, zone: NameZone | None = None) -> pa.Table:
    """A LAION-like URL table against ``farm``: mostly good images over several hosts, some faults.

    With ``zone`` the hosts are names (``hN.farm.test``, 50 of them, plus an NXDOMAIN name now and then).
    """
    sizes = ["640x480", "1024x768", "800x1200", "1600x1200", "320x240", "2048x1536"]
    faults = ["/status/404", "/notimage", "/truncated/medium.jpg", "/status/500"]
    urls, captions = [], []
    for i in range(rows):
        host = i % len(farm.addresses)
        if i % 25 == 24:
            path = faults[(i // 25) % len(faults)]
        elif i % 10 == 3:
            path = "/img/" + ["alpha.png", "exif6.jpg", "cmyk.jpg", "photo.webp", "palette.png"][i % 5]
        else:
            path = f"/gen/{sizes[i % len(sizes)]}.jpg?seed={i}"
        if zone is None:
            urls.append(farm.url(path, host))
        else:
            name = zone.name(i % 50) if i % 50 != 7 else zone.name(i, "nx")
            urls.append(f"http://{name}:{farm.port}{path}")
        captions.append(f"sample image {i}")
    return pa.table({"url": urls, "caption": captions})


def demo(args: argparse.Namespace) -> int:
    os.makedirs(os.path.dirname(args.input) or ".", exist_ok=True)
    with InternetThread(DEMO_ADDRESSES, latency=args.dns_latency / 1000) as net:
        farm = net.farm
        pq.write_table(sample_rows(farm, args.rows, net.zone), args.input)
        print(f"farm: serving on {', '.join(farm.base(i) for i in range(len(farm.addresses)))}", file=sys.stderr)
        print(f"farm: names *.{net.zone.zone} from DNS {net.dns.server} ({args.dns_latency:g} ms)", file=sys.stderr)
        print(f"farm: wrote {args.rows} sample URLs to {args.input}", file=sys.stderr)
        cmd = [
            sys.executable, "-m", "fetcher",
            "--input", args.input, "--output", args.output,
            "--samples-per-tar", str(args.samples_per_tar),
            "--allow-private-networks", "--dns-server", net.dns.server, *args.extra,
        ]  # fmt: skip
        print("running:", " ".join(cmd), file=sys.stderr)
        return subprocess.call(cmd)


def serve(args: argparse.Namespace) -> int:
    if args.dns:
        return serve_named(args)
    with FarmThread(args.address, port=args.port) as farm:
        print(f"farm: serving on {', '.join(farm.base(i) for i in range(len(farm.addresses)))}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


def serve_named(args: argparse.Namespace) -> int:
    host, _, port = args.dns.rpartition(":")
    if not host or not port.isdigit():
        print(f"farm: error: --dns wants HOST:PORT, got {args.dns!r}", file=sys.stderr)
        return 2
    with InternetThread(
        args.address, port=args.port, dns_address=host, dns_port=int(port), latency=args.dns_latency / 1000
    ) as net:
        farm = net.farm
        print(
            f"farm: serving on {', '.join(farm.base(i) for i in range(len(farm.addresses)))};"
            f" names *.{net.zone.zone} from DNS {net.dns.server} ({args.dns_latency:g} ms)",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


def serve_dns(args: argparse.Namespace) -> int:
    """Only the DNS server (names pointing at a farm served by another process)."""

    async def run() -> None:
        zone = NameZone(addresses=tuple(args.address))
        server = await DnsServer(zone, args.dns_address, args.dns_port, args.latency / 1000).start()
        print(f"farm: DNS for *.{zone.zone} serving on {server.server} ({args.latency:g} ms)", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m fetcher.farm")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="farm + sample parquet + one fetcher run")
    d.add_argument("--input", default="sample/urls.parquet")
    d.add_argument("--output", default="out")
    d.add_argument("--rows", type=int, default=500)
    d.add_argument("--samples-per-tar", type=int, default=200)
    d.add_argument("--dns-latency", type=float, default=50.0, metavar="MS", help="DNS answer delay")
    d.add_argument("extra", nargs="*", help="more fetcher flags (after --)")
    s = sub.add_parser("serve", help="serve the farm until Ctrl-C")
    s.add_argument("--address", action="append", default=None)
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--dns", default="", metavar="HOST:PORT", help="also serve the farm.test zone from this address")
    s.add_argument("--dns-latency", type=float, default=100.0, metavar="MS", help="DNS answer delay")
    n = sub.add_parser("dns", help="only the DNS server for the farm.test zone, until Ctrl-C")
    n.add_argument("--address", action="append", default=None, help="farm address the names point at")
    n.add_argument("--dns-address", default="127.0.0.35")
    n.add_argument("--dns-port", type=int, default=53)
    n.add_argument("--latency", type=float, default=100.0, metavar="MS", help="answer delay")
    args = parser.parse_args()
    if args.cmd in ("serve", "dns") and not args.address:
        args.address = list(DEMO_ADDRESSES)
    return {"demo": demo, "serve": serve, "dns": serve_dns}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
