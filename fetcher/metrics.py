"""Prometheus metrics, recorded in the parent process only (imaging workers return timings).

Events (a row finished, a fetch or an image completed, a tar closed) are counted as they happen;
levels (queues, bytes in flight, busy workers, disk free, ...) are read from the live pipeline at
scrape time by :class:`_LiveCollector`, so the hot path pays nothing for them. Labels are bounded on
purpose: status, reason (the fixed :class:`~fetcher.records.Reason` list), HTTP status class, stage.
Never a host or a URL.
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fetcher import __version__
from fetcher.dns import DnsFailure
from fetcher.options import ConfigError, opt
from fetcher.records import FetchOutcome, ImageOutcome, Reason, SampleResult, Status

# Fetches of images take tens of ms on a LAN and up to the hard deadline (30 s default) on the web.
FETCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
# Imaging CPU time: ~5 ms for a thumbnail, ~150-700 ms for a 20-MP JPEG, seconds for a huge PNG.
IMAGING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Name lookups: ~1 ms from a local cache, 50-200 ms recursive, up to --dns-timeout (5 s default).
DNS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10)
DNS_OUTCOMES: tuple[str, ...] = ("ok", *(f.value for f in DnsFailure))
HTTP_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")
REASON_LABELS: tuple[str, ...] = tuple(r.value for r in Reason)
STATUS_LABELS: tuple[str, ...] = tuple(s.value for s in Status)
# *_created series double the exposition and no dashboard or alert here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
PROGRESS_MODES = ("auto", "bar", "log", "off")


@dataclass(frozen=True)
class MonitorOptions:
    """Options of the metrics endpoint and the human progress view."""

    metrics_address: str = opt(
        "--metrics-address",
        "127.0.0.1:9108",
        "HOST:PORT serving /metrics, /healthz, /readyz ('' = off, port 0 = any free port)",
        metavar="HOST:PORT",
    )
    stall_seconds: float = opt("--stall-seconds", 300.0, "/healthz turns unhealthy after this long without progress")
    log_interval: float = opt("--log-interval", 30.0, "seconds between progress log lines when stderr is not a TTY")
    log_format: str = opt("--log-format", "text", "progress log line format", choices=("text", "json"))
    progress: str = opt(
        "--progress", "auto", "progress bar on a TTY, log lines otherwise (auto), or force", choices=PROGRESS_MODES
    )

    @property
    def metrics_endpoint(self) -> tuple[str, int] | None:
        """(host, port) to serve on, or None when disabled."""
        return parse_address(self.metrics_address)

    def validate(self) -> None:
        try:
            parse_address(self.metrics_address)
        except ValueError as exc:
            raise ConfigError(f"--metrics-address: {exc}") from None
        if self.stall_seconds <= 0:
            raise ConfigError("--stall-seconds must be > 0")
        if self.log_interval <= 0:
            raise ConfigError("--log-interval must be > 0")


def parse_address(text: str) -> tuple[str, int] | None:
    """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6); empty or ``off`` disables. Raises ValueError."""
    text = text.strip()
    if text.lower() in ("", "off", "none"):
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9108, got {text!r}")
    return host.strip("[]"), int(port_text)


def status_class(code: int | None) -> str:
    """HTTP status class label (``none`` when no response came back)."""
    if code is None or not 100 <= code < 600:
        return "none"
    return f"{code // 100}xx"


def reason_label(reason: Reason) -> str:
    """The metric label value for a failure reason: the parquet's ``error_message`` itself."""
    return reason.value


@dataclass
class LiveSources:
    """Callables that read pipeline levels at scrape time (set by the pipeline, 0 until then)."""

    pending_rows: Callable[[], int] = lambda: 0
    inflight_requests: Callable[[], int] = lambda: 0
    imaging_queue: Callable[[], int] = lambda: 0
    bytes_in_flight: Callable[[], int] = lambda: 0
    busy_workers: Callable[[], int] = lambda: 0
    workers: Callable[[], int] = lambda: 0
    delayed_hosts: Callable[[], int] = lambda: 0
    retries: Callable[[], int] = lambda: 0
    throttled: Callable[[], int] = lambda: 0
    breaker_openings: Callable[[], int] = lambda: 0
    disk_paused: Callable[[], int] = lambda: 0
    store_up: Callable[[], int] = lambda: 1  # --politeness-store answering (1 without one)
    store_errors: Callable[[], int] = lambda: 0
    outstanding_rows: Callable[[], int] = lambda: 0
    oldest_row_age: Callable[[], float] = lambda: 0.0
    hosts_given_up: Callable[[], int] = lambda: 0
    output_dir: str = "."


class Metrics:
    """Every fetcher metric, in its own registry (no process-global state, several per test process)."""

    def __init__(self, shard: tuple[int, int] = (0, 1), sources: LiveSources | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sources = sources or LiveSources()
        r = self.registry
        self.started = time.time()
        self.last_progress = self.started
        self.event_loop_lag = 0.0
        self.planned_rows = 0
        self.done_rows = 0
        Info("fetcher_build", "fetcher version and runtime", registry=r).info(
            {"version": __version__, "python": platform.python_version(), "pillow": _pillow_version()}
        )
        shard_info = Gauge("fetcher_shard_info", "this process's shard (i of N)", ["shard", "shards"], registry=r)
        shard_info.labels(str(shard[0]), str(shard[1])).set(1)
        self.rows_read = Counter("fetcher_rows_read_total", "input rows read from parquet", registry=r)
        self.rows_scheduled = Counter("fetcher_rows_scheduled_total", "rows handed to the scheduler", registry=r)
        self.rows = Counter("fetcher_rows_total", "rows finished, by outcome", ["status"], registry=r)
        self.failures = Counter("fetcher_row_failures_total", "rows failed, by named reason", ["reason"], registry=r)
        self.responses = Counter(
            "fetcher_http_responses_total", "HTTP fetch attempts by status class", ["code_class"], registry=r
        )
        self.bytes_downloaded = Counter("fetcher_downloaded_bytes_total", "image bytes downloaded", registry=r)
        self.bytes_written = Counter("fetcher_written_bytes_total", "image bytes written to tars", registry=r)
        self.fetch_seconds = Histogram(
            "fetcher_fetch_duration_seconds", "time of one HTTP fetch attempt", buckets=FETCH_BUCKETS, registry=r
        )
        self.imaging_seconds = Histogram(
            "fetcher_imaging_duration_seconds", "worker CPU time per image", buckets=IMAGING_BUCKETS, registry=r
        )
        self.tars = Counter("fetcher_tars_completed_total", "tars finalized (marker written)", registry=r)
        self.dns_seconds = Histogram(
            "fetcher_dns_lookup_duration_seconds",
            "time of one name lookup sent to the resolver (cache misses)",
            buckets=DNS_BUCKETS,
            registry=r,
        )
        self.dns_lookups = Counter(
            "fetcher_dns_lookups_total", "name lookups sent to the resolver, by outcome", ["outcome"], registry=r
        )
        self.dns_resolutions = Counter(
            "fetcher_dns_resolutions_total",
            "names resolved for connections, by cache result (hit: cache or a shared lookup)",
            ["cache"],
            registry=r,
        )
        self.dns_failures = Counter(
            "fetcher_dns_failures_total",
            "name resolutions that gave no usable address, by kind (policy: refused by the address policy)",
            ["kind"],
            registry=r,
        )
        # Every label value exists from the start, so rate() and absent-series alerts work from scrape one.
        for s in STATUS_LABELS:
            self.rows.labels(s)
        for reason in REASON_LABELS:
            self.failures.labels(reason)
        for c in HTTP_CLASSES:
            self.responses.labels(c)
        for o in DNS_OUTCOMES:
            self.dns_lookups.labels(o)
        for kind in DnsFailure:
            self.dns_failures.labels(kind.value)
        for cache in ("hit", "miss"):
            self.dns_resolutions.labels(cache)
        r.register(_LiveCollector(self))

    # -- events (called by the pipeline's observer) ---------------------------------------------
    def fetched(self, outcome: FetchOutcome) -> None:
        """One HTTP attempt ended (final or about to be retried)."""
        self.responses.labels(status_class(outcome.http_status)).inc()
        self.fetch_seconds.observe(outcome.fetch_ms / 1000)
        if outcome.body is not None:
            self.bytes_downloaded.inc(len(outcome.body))

    def dns_lookup(self, seconds: float, failure: DnsFailure | None) -> None:
        """One lookup sent to the resolver ended (DnsObserver)."""
        self.dns_seconds.observe(seconds)
        self.dns_lookups.labels("ok" if failure is None else failure.value).inc()

    def dns_resolved(self, cache_hit: bool, failure: DnsFailure | None) -> None:
        """A connection's name resolution ended (DnsObserver)."""
        self.dns_resolutions.labels("hit" if cache_hit else "miss").inc()
        if failure is not None:
            self.dns_failures.labels(failure.value).inc()

    def imaged(self, image: ImageOutcome) -> None:
        """A worker returned one image."""
        self.imaging_seconds.observe(image.cpu_ms / 1000)

    def row_done(self, res: SampleResult) -> None:
        """A row reached its final result."""
        self.rows.labels(res.status.value).inc()
        if res.reason is not None:
            self.failures.labels(reason_label(res.reason)).inc()
        self.bytes_written.inc(res.bytes_written)
        self.done_rows += 1
        self.last_progress = time.time()

    def stalled_for(self, now: float | None = None) -> float:
        """Seconds since the last row finished (or since start)."""
        return (time.time() if now is None else now) - self.last_progress

    def exposition(self) -> bytes:
        """The text exposition format of the whole registry."""
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Levels read from the pipeline at scrape time."""

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: names are not known to clash (tested via promtool)

    def collect(self) -> Iterator[Metric]:
        m, src = self.m, self.m.sources
        for name, doc, value in (
            ("fetcher_retries", "fetch attempts re-queued for a retry", src.retries()),
            ("fetcher_throttled_responses", "429/503 answers that raised a host's delay", src.throttled()),
            ("fetcher_breaker_openings", "times a host's circuit breaker opened", src.breaker_openings()),
            ("fetcher_politeness_store_errors", "failed calls to --politeness-store", src.store_errors()),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        queue = GaugeMetricFamily("fetcher_queue_depth", "items waiting, by stage", labels=["stage"])
        queue.add_metric(["read_ahead"], src.pending_rows())
        queue.add_metric(["imaging"], src.imaging_queue())
        yield queue
        free = _disk_free(src.output_dir)
        gauges: tuple[tuple[str, str, float], ...] = (
            ("fetcher_inflight_requests", "HTTP requests in flight", src.inflight_requests()),
            ("fetcher_in_flight_bytes", "downloaded bytes not yet through imaging", src.bytes_in_flight()),
            ("fetcher_imaging_workers_busy", "imaging workers working", src.busy_workers()),
            ("fetcher_imaging_workers", "imaging worker processes", src.workers()),
            ("fetcher_delayed_hosts", "hosts currently waiting out a delay or breaker", src.delayed_hosts()),
            ("fetcher_shard_rows_planned", "rows this run has to finish", m.planned_rows),
            ("fetcher_shard_rows_done", "rows this run has finished", m.done_rows),
            ("fetcher_last_progress_timestamp_seconds", "unix time a row last finished", m.last_progress),
            ("fetcher_start_time_seconds", "unix time the run started", m.started),
            ("fetcher_event_loop_lag_seconds", "lateness of a periodic event-loop timer", m.event_loop_lag),
            ("fetcher_disk_free_bytes", "free bytes on the output filesystem", free),
            ("fetcher_disk_paused", "1 while work is paused below --min-free-disk", src.disk_paused()),
            ("fetcher_politeness_store_up", "0 while --politeness-store does not answer", src.store_up()),
            ("fetcher_outstanding_rows", "rows read and not yet final", src.outstanding_rows()),
            (
                "fetcher_oldest_outstanding_row_age_seconds",
                "seconds since the oldest outstanding row was read",
                src.oldest_row_age(),
            ),
            ("fetcher_hosts_given_up", "hosts whose circuit breaker is open or dead", src.hosts_given_up()),
        )
        for gname, gdoc, gvalue in gauges:
            yield GaugeMetricFamily(gname, gdoc, value=gvalue)


def _disk_free(path: str) -> float:
    try:
        return float(shutil.disk_usage(path).free)
    except OSError:
        return float("nan")


def _pillow_version() -> str:
    try:
        import PIL

        return str(PIL.__version__)
    except ImportError:
        return "none"
