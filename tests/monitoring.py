"""Helpers for the monitoring tests: a fetcher subprocess with its metrics endpoint, and PromQL parsing."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """GET ``url`` (loopback only); returns (status, body) also for 4xx/5xx."""
    assert url.startswith("http://127.0.0.1:"), url
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(cond: Any, timeout: float, what: str, step: float = 0.1) -> Any:
    """Poll ``cond()`` until it returns a truthy value; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = cond()
        except (OSError, urllib.error.URLError):
            value = None
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse an exposition into {(sample name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(exposition):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    """Sum of every sample called ``name``."""
    return sum(v for (n, _), v in parsed.items() if n == name)


@dataclass
class FetcherProc:
    """A running ``python -m fetcher`` with its metrics endpoint on ``port``."""

    proc: subprocess.Popen[str]
    port: int
    stderr_path: Path
    exit_code: int | None = None
    stderr: str = field(default="")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.url(path))

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200, status
        return body.decode()

    def wait(self, timeout: float = 60) -> int:
        self.exit_code = self.proc.wait(timeout=timeout)
        self.stderr = self.stderr_path.read_text()
        return self.exit_code


@contextmanager
def running_fetcher(tmp: Path, *args: str, port: int | None = None) -> Iterator[FetcherProc]:
    """Start fetcher (metrics on a free loopback port); SIGTERM it on exit if it is still running."""
    port = port or free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    err_path = tmp / f"fetcher-{port}.stderr"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fetcher", *args, "--metrics-address", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
            env=env,
            cwd=ROOT,
        )
    fp = FetcherProc(proc, port, err_path)
    try:
        wait_for(lambda: proc.poll() is not None or fp.get("/readyz")[0] == 200, 30, "fetcher /readyz")
        yield fp
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        fp.stderr = err_path.read_text()


def tool(name: str) -> str | None:
    """Path of a command-line tool, or None."""
    return shutil.which(name)


# -- PromQL: which metric names does an expression use? -------------------------------------------
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (or a Grafana ``label_values(...)`` query)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", expr, re.S)
    if m:
        expr = m.group(1)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    expr = _LABEL_LISTS.sub(" ", expr)
    expr = re.sub(r"\b[a-zA-Z_][a-zA-Z0-9_]*\s*\(", "(", expr)  # function calls
    expr = re.sub(r"\b\d[\w.]*", " ", expr)  # numbers, 6h, 20e9
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w not in _KEYWORDS}


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of every panel (nested rows included) and every template variable query."""
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dashboard["panels"])
    for var in dashboard.get("templating", {}).get("list", []):
        q = var.get("query")
        if var.get("type") == "query":
            exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables by values that select everything (for evaluating panel queries)."""
    expr = expr.replace("$__rate_interval", "5s")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())
