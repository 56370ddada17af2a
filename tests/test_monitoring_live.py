"""A real fetcher run watched the way operators watch it: /metrics, /healthz, /readyz, a real Prometheus
server scraping it (Debian ``prometheus`` package), the Grafana dashboard's queries evaluated there, and the
progress output on a TTY and off it.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from fetcher.farm import Farm
from fetcher.records import Reason
from tests.conftest import ROOT, results_table, run_fetcher, write_urls
from tests.monitoring import (
    DEPLOY,
    dashboard_queries,
    free_port,
    grafana_to_promql,
    http_get,
    load_json,
    metric_names,
    running_fetcher,
    samples,
    tool,
    total,
    wait_for,
)

ROWS = 120
FAULTS = {"/status/404": "http_404", "/notimage": "not_an_image", "/status/500": "http_5xx"}
NO_PROMETHEUS = "the prometheus server binary is not installed (Debian package 'prometheus'; .ci/run installs it)"
NO_PROMTOOL = "promtool is not installed (Debian package 'prometheus'; .ci/run installs it)"


@dataclass
class Live:
    """What one watched run produced."""

    out: Path
    expositions: list[str]
    healthz: tuple[int, Any]
    readyz: int
    exit_code: int
    stderr: str
    prom_values: list[float] = field(default_factory=list)
    prom_targets: list[dict[str, Any]] = field(default_factory=list)
    prom_rules: list[str] = field(default_factory=list)
    dashboard_results: dict[str, dict[str, Any]] = field(default_factory=dict)


class Prometheus:
    """A real Prometheus server on loopback, configured from deploy/prometheus/prometheus.yml."""

    def __init__(self, tmp: Path, target_port: int) -> None:
        cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
        cfg["rule_files"] = [str(DEPLOY / "prometheus" / name) for name in cfg["rule_files"]]
        (job,) = cfg["scrape_configs"]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{target_port}"]}]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.port = free_port()
        self.log = (tmp / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: http_get(f"http://127.0.0.1:{self.port}/-/ready")[0] == 200, 30, "prometheus /-/ready")

    def api(self, path: str, **params: Any) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, body = http_get(url)
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "success", (params, doc)
        return doc["data"]

    def scalar(self, query: str, at: float | None = None) -> float | None:
        params = {"query": query} | ({"time": f"{at:.3f}"} if at else {})
        result = self.api("query", **params)["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def live(farm: Farm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live")
    urls = []
    faults = list(FAULTS)
    for i in range(ROWS):
        path = faults[i // 10 % 3] if i % 10 == 9 else f"/slow/250/small.jpg?i={i}"
        urls.append(farm.url(path, i % 8))
    inp = write_urls(tmp / "in" / "urls.parquet", urls)
    out = tmp / "out"
    port = free_port()
    prom = Prometheus(tmp, port) if tool("prometheus") else None
    try:
        with running_fetcher(
            tmp, "--input", str(inp), "--output", str(out), "--samples-per-tar", "50",
            "--allow-private-networks", "--retries", "0", "--processes", "1", "--imaging-workers", "1",
            "--concurrency", "4", "--per-host-concurrency", "4",
            "--progress", "log", "--log-format", "json", "--log-interval", "0.5",
            port=port,
        ) as f:  # fmt: skip
            exp = wait_for(lambda: (e := f.metrics()) and total(samples(e), "fetcher_rows_total") and e, 20, "a row")
            expositions = [exp]
            time.sleep(1.0)
            expositions.append(f.metrics())
            hz_status, hz_body = f.get("/healthz")
            ready = f.get("/readyz")[0]
            live = Live(out, expositions, (hz_status, json.loads(hz_body)), ready, -1, "")
            if prom is not None:
                first = wait_for(lambda: prom.scalar("sum(fetcher_rows_total)"), 20, "a first scrape with rows")
                live.prom_values.append(first)
                second = wait_for(
                    lambda: (v := prom.scalar("sum(fetcher_rows_total)")) is not None and v > first and v, 20, "more"
                )
                live.prom_values.append(second)
                mid = time.time()
                live.prom_targets = prom.api("targets")["activeTargets"]
            live.exit_code = f.wait(60)
        live.stderr = f.stderr
        if prom is not None:
            for expr in dashboard_queries(load_json(DEPLOY / "grafana" / "fetcher-dashboard.json")):
                promql = grafana_to_promql(expr)
                if promql.startswith("label_values("):
                    continue  # a Grafana function, not PromQL: its metric is checked by name below
                live.dashboard_results[expr] = prom.api("query", query=promql, time=f"{mid:.3f}")
            live.prom_rules = [r["name"] for g in prom.api("rules")["groups"] for r in g["rules"]]
        yield live
    finally:
        if prom is not None:
            prom.stop()


def test_live_metrics_endpoint(live: Live) -> None:
    first, second = (samples(e) for e in live.expositions)
    assert 0 < total(first, "fetcher_rows_total") < total(second, "fetcher_rows_total") <= ROWS
    assert total(second, "fetcher_rows_total") == total(second, "fetcher_shard_rows_done")
    assert total(second, "fetcher_shard_rows_planned") == ROWS
    assert total(second, "fetcher_rows_read_total") >= total(second, "fetcher_rows_total")
    assert total(second, "fetcher_imaging_workers") == 1
    assert total(second, "fetcher_inflight_requests") <= 4
    assert total(second, "fetcher_fetch_duration_seconds_count") > 0
    assert second[("fetcher_shard_info", (("shard", "0"), ("shards", "1")))] == 1
    build = [lbl for (n, lbl) in second if n == "fetcher_build_info"]
    assert build and dict(build[0])["version"]
    names = {n for n, _ in second}
    assert all(n.startswith("fetcher_") for n in names), names
    label_names = {k for _, lbl in second for k, _ in lbl}  # outcome/cache/kind: the fetcher_dns_* series
    assert label_names <= {"status", "reason", "code_class", "stage", "le", "shard", "shards", "version", "python",
                           "pillow", "outcome", "cache", "kind"}  # fmt: skip
    assert live.healthz[0] == 200 and live.healthz[1]["status"] == "ok"
    assert live.readyz == 200
    assert live.exit_code == 0, live.stderr


def test_final_counts_match_results_parquet_and_json_progress(live: Live) -> None:
    table = results_table(live.out).to_pylist()
    assert len(table) == ROWS
    lines = [json.loads(line) for line in live.stderr.splitlines() if line.startswith("{")]
    progress = [d for d in lines if d["event"] == "progress"]
    (summary,) = [d for d in lines if d["event"] == "summary"]
    assert len(progress) >= 2 and progress[0]["rows_done"] <= progress[-1]["rows_done"]
    assert summary["rows_done"] == ROWS and summary["ok"] == sum(r["status"] == "success" for r in table)
    expected = {reason: 4 for reason in FAULTS.values()}
    assert summary["failed_by_reason"] == expected
    assert {r["error_message"] for r in table if r["status"] != "success"} == set(expected)
    # --log-format json: the summary is that one JSON object, not also the text table (nor any text line)
    assert not [line for line in live.stderr.splitlines() if line.startswith("fetcher")], live.stderr
    assert summary["bytes_written"] > 0 and summary["bytes_downloaded"] > 0


@pytest.mark.skipif(tool("promtool") is None, reason=NO_PROMTOOL)
def test_live_exposition_passes_promtool(live: Live) -> None:
    proc = subprocess.run(["promtool", "check", "metrics"], input=live.expositions[-1], text=True, capture_output=True)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc


@pytest.mark.skipif(tool("prometheus") is None, reason=NO_PROMETHEUS)
def test_real_prometheus_sees_rows_total_increase(live: Live) -> None:
    first, second = live.prom_values
    assert 0 < first < second <= ROWS
    assert [t["health"] for t in live.prom_targets] == ["up"]
    assert set(live.prom_rules) >= {"FetcherShardStalled", "FetcherHighErrorRatio", "FetcherDiskNearlyFull",
                                    "FetcherInstanceDown"}  # fmt: skip


@pytest.mark.skipif(tool("prometheus") is None, reason=NO_PROMETHEUS)
def test_every_dashboard_query_returns_data_in_prometheus(live: Live) -> None:
    assert len(live.dashboard_results) >= 20
    empty = [expr for expr, data in live.dashboard_results.items() if not data["result"]]
    assert not empty, f"dashboard queries with no data on a live fetcher: {empty}"


def test_dashboard_uses_only_exported_metric_names(live: Live) -> None:
    exported = {n for n, _ in samples(live.expositions[-1])}
    dash = load_json(DEPLOY / "grafana" / "fetcher-dashboard.json")
    queries = dashboard_queries(dash)
    used = set().union(*(metric_names(q) for q in queries))
    assert used and used <= exported, f"dashboard uses metrics fetcher does not export: {used - exported}"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"instance", "shard"} <= variables
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert all(p.get("targets") for p in panels)
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alert_names = set().union(*(metric_names(r["expr"]) for g in rules["groups"] for r in g["rules"]))
    assert alert_names - {"up"} <= exported, alert_names - exported


def test_healthz_turns_unhealthy_when_nothing_progresses(farm: Farm, tmp_path: Path) -> None:
    inp = write_urls(tmp_path / "urls.parquet", [farm.url("/hang", i) for i in range(4)])
    with running_fetcher(
        tmp_path, "--input", str(inp), "--output", str(tmp_path / "out"), "--allow-private-networks",
        "--processes", "1", "--timeout", "60", "--read-timeout", "60", "--stall-seconds", "1.5",
    ) as f:  # fmt: skip
        status, body = f.get("/healthz")
        assert status == 200, body
        wait_for(lambda: f.get("/healthz")[0] == 503, 10, "/healthz to report the stall")
        doc = json.loads(f.get("/healthz")[1])
        assert doc["status"] == "stalled" and doc["seconds_since_progress"] >= 1.5 and doc["rows_done"] == 0
        assert f.get("/readyz")[0] == 200  # stalled is not unready: restarting is the liveness probe's call
        assert total(samples(f.metrics()), "fetcher_inflight_requests") == 4


def test_progress_bar_on_a_tty(farm: Farm, tmp_path: Path) -> None:
    rows = 30
    inp = write_urls(tmp_path / "urls.parquet", [farm.url(f"/slow/150/small.jpg?t={i}", i % 8) for i in range(rows)])
    master, slave = pty.openpty()
    # A 120-column terminal: every field fits (narrower ones drop fields: tests/test_cli_human.py).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fetcher", "--input", str(inp), "--output", str(tmp_path / "out"),
         "--allow-private-networks", "--processes", "1", "--concurrency", "2", "--metrics-address", ""],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=30) == 0, screen.decode(errors="replace")
    text = screen.decode()
    draws = [d for d in text.split("\r") if d.startswith("[")]
    assert len(draws) >= 3, text
    assert f"{rows}/{rows} rows 100.0 %" in draws[-1]
    for part in ("img/s", "ok ", "MB/s", "ETA"):
        assert part in draws[-1]
    assert "fetcher progress" not in text  # a TTY gets the bar, not log lines
    assert "fetcher summary" in text
    assert Reason.HTTP_404.value not in text


def test_busy_metrics_port_warns_and_the_run_still_completes(farm: Farm, tmp_path: Path) -> None:
    inp = write_urls(tmp_path / "urls.parquet", [farm.url("/img/small.jpg?b=1", 0), farm.url("/status/404", 1)])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_fetcher(
            "--input", str(inp), "--output", str(tmp_path / "out"), "--allow-private-networks",
            "--processes", "1", "--metrics-address", f"127.0.0.1:{port}",
        )  # fmt: skip
    assert f"fetcher: warning: no metrics endpoint, cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert len(results_table(tmp_path / "out")) == 2
