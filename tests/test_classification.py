"""Failure classification pinned by an independent table, and proven end to end with farm faults.

The table below is written out by hand on purpose: expected values computed from the same enum and
sets the code uses would follow any mistake in them (swap two metric labels, move ``decode_error`` to
``failed_to_download``: such tests still pass). A new ``Reason`` without a row here fails
``test_table_covers_every_reason``, so the table stays complete.
"""

from __future__ import annotations

import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetcher.farm import Farm
from fetcher.metrics import reason_label
from fetcher.records import FetchOutcome, Reason
from fetcher.retry import HOST_DOWN, is_retryable
from fetcher.retry_failed import RETRY_FAILED_REASONS
from tests.conftest import results_table, write_urls
from tests.monitoring import running_fetcher, samples, total, wait_for

D, R, F = "failed_to_download", "failed_to_resize", "filtered"

# reason: (status column, metric label, retried within a run, re-fetched by --retry-failed, host-down signal)
TABLE: dict[str, tuple[str, str, bool, bool, bool]] = {
    "missing_url": (D, "missing_url", False, False, False),
    "missing_file": (D, "missing_file", False, False, False),
    "invalid_url": (D, "invalid_url", False, False, False),
    "unsupported_scheme": (D, "unsupported_scheme", False, False, False),
    "filtered": (F, "filtered", False, False, False),
    "bad_key": (D, "bad_key", False, False, False),
    "blocked_address": (D, "blocked_address", False, True, False),  # rerun after --allow-network
    "robots_disallowed": (D, "robots_disallowed", False, False, False),
    "dns_nxdomain": (D, "dns_nxdomain", False, False, False),
    "dns_no_address": (D, "dns_no_address", False, False, False),
    "dns_servfail": (D, "dns_servfail", True, True, True),
    "dns_timeout": (D, "dns_timeout", True, True, True),
    "dns_refused": (D, "dns_refused", True, True, False),
    "connect_error": (D, "connect_error", True, True, True),
    "connection_reset": (D, "connection_reset", True, True, True),
    "timeout": (D, "timeout", True, True, True),
    "tls_error": (D, "tls_error", False, False, False),
    "too_many_redirects": (D, "too_many_redirects", False, False, False),
    "redirect_loop": (D, "redirect_loop", False, False, False),
    "body_too_large": (D, "body_too_large", False, False, False),
    "truncated_body": (D, "truncated_body", True, True, False),
    "host_unavailable": (D, "host_unavailable", False, True, False),
    "http_403": (D, "http_403", False, False, False),
    "http_404": (D, "http_404", False, False, False),
    "http_408": (D, "http_408", True, True, False),
    "http_410": (D, "http_410", False, False, False),
    "http_429": (D, "http_429", True, True, False),
    "http_4xx": (D, "http_4xx", False, False, False),
    "http_5xx": (D, "http_5xx", True, True, False),
    "http_other": (D, "http_other", False, False, False),
    "http_protocol_error": (D, "http_protocol_error", False, False, False),
    "not_an_image": (R, "not_an_image", False, False, False),
    "unsupported_format": (R, "unsupported_format", False, False, False),
    "decode_error": (R, "decode_error", False, False, False),
    "truncated_image": (R, "truncated_image", False, False, False),
    "image_too_complex": (R, "image_too_complex", False, False, False),
    "decompression_bomb": (R, "decompression_bomb", False, False, False),
    "image_too_small": (R, "image_too_small", False, False, False),
    "image_too_large": (R, "image_too_large", False, False, False),
    "aspect_ratio": (R, "aspect_ratio", False, False, False),
    "hash_mismatch": (R, "hash_mismatch", False, False, False),
    "encode_error": (R, "encode_error", False, False, False),
    "shutdown": (D, "shutdown", False, True, False),
    "tail_timeout": (D, "tail_timeout", False, True, False),
    "internal_error": (D, "internal_error", False, False, False),
}


def test_table_covers_every_reason() -> None:
    missing = sorted(r.value for r in Reason if r.value not in TABLE)
    stale = sorted(set(TABLE) - {r.value for r in Reason})
    assert not missing, f"new Reason(s) without a row in this table: {missing} (add status, label, retry facts)"
    assert not stale, f"rows for reasons that no longer exist: {stale}"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_reason_facts_match_the_table(name: str) -> None:
    if name not in {r.value for r in Reason}:
        pytest.fail(f"{name} is not a Reason any more")
    reason = Reason(name)
    status, label, retryable, retry_failed, host_down = TABLE[name]
    assert reason.status.value == status
    assert reason_label(reason) == label
    assert is_retryable(FetchOutcome(reason=reason)) is retryable
    assert (reason in RETRY_FAILED_REASONS) is retry_failed
    assert (reason in HOST_DOWN) is host_down


def test_labels_are_distinct() -> None:
    labels = [row[1] for row in TABLE.values()]
    assert len(set(labels)) == len(labels)


# -- end to end: each farm fault gives exactly its reason, status and metric label ----------------------
MAX_BODY = 2**20


def _cases(farm: Farm, dead_port: int, tag: str) -> dict[str, tuple[object, str | None]]:
    """case -> (url cell, expected reason). Farm rows on 127.0.0.2; 429 on .5 (it slows its host down)."""
    f = farm.port
    base, throttled_host = f"http://127.0.0.2:{f}", f"http://127.0.0.5:{f}"
    q = f"?c={tag}"
    return {
        "ok": (f"{base}/img/small.jpg{q}", None),
        "http_403": (f"{base}/status/403{q}", "http_403"),
        "http_404": (f"{base}/status/404{q}", "http_404"),
        "http_408": (f"{base}/status/408{q}", "http_408"),
        "http_410": (f"{base}/status/410{q}", "http_410"),
        "http_418": (f"{base}/status/418{q}", "http_4xx"),
        "http_429": (f"{throttled_host}/status/429{q}", "http_429"),
        "http_500": (f"{base}/status/500{q}", "http_5xx"),
        "http_304": (f"{base}/status/304{q}", "http_other"),
        "not_image": (f"{base}/notimage{q}", "not_an_image"),
        "cut_file": (f"{base}/cut/medium.jpg{q}", "truncated_image"),
        "pixel_bomb": (f"{base}/pixel-bomb/3000x3000.png{q}", "decompression_bomb"),
        "tiny": (f"{base}/img/tiny.png{q}", "image_too_small"),
        "large": (f"{base}/img/large.jpg{q}", "image_too_large"),
        "wide": (f"{base}/gen/400x100.jpg{q}", "aspect_ratio"),
        "webp": (f"{base}/img/photo.webp{q}", "unsupported_format"),
        "wrong_hash": (f"{base}/img/small.jpg{q}&h=1", "hash_mismatch"),
        "truncated": (f"{base}/truncated/medium.jpg{q}", "truncated_body"),
        "hang": (f"{base}/hang{q}", "timeout"),
        "hang_again": (f"{base}/hang{q}&again=1", "timeout"),  # 2 timeouts, 1 connect_error: a swap shows
        "refused": (f"http://127.0.0.3:{dead_port}/x.jpg{q}", "connect_error"),
        "loop": (f"{base}/loop{q}", "redirect_loop"),
        "too_many": (f"{base}/redirect/7/small.jpg{q}", "too_many_redirects"),
        "huge": (f"{base}/huge-length{q}", "body_too_large"),
        "robots": (f"{base}/robots-noai/small.jpg{q}", "robots_disallowed"),
        "blocked": (f"http://127.0.0.4:{f}/img/small.jpg{q}", "blocked_address"),
        "missing": (None, "missing_url"),
        "invalid": ("http://[::1/x.jpg", "invalid_url"),
        "scheme": ("ftp://127.0.0.2/x.jpg", "unsupported_scheme"),
        "filtered": (f"{base}/img/small.jpg{q}&f=1", "filtered"),
        "bad_key": (f"{base}/img/small.jpg{q}&k=1", "bad_key"),
    }


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port on 127.0.0.3 that is bound but not listening: connecting is refused, and no one else gets it."""
    with socket.socket() as s:
        s.bind(("127.0.0.3", 0))
        yield int(s.getsockname()[1])


def test_each_farm_fault_gives_exactly_its_reason_status_and_metric_label(
    farm: Farm, tmp_path: Path, dead_port: int
) -> None:
    tag = uuid.uuid4().hex[:8]
    cases = _cases(farm, dead_port, tag)
    names = [*cases, "keeper"]
    # The keeper trickles one byte per 0.5 s, so the run is still up (and /metrics readable) once every
    # other row is final; it sits alone in the last tar (one row per tar), which the stop abandons.
    urls = [cases[n][0] for n in cases] + [farm.url(f"/trickle?c={tag}")]
    inp = write_urls(
        tmp_path / "urls.parquet",
        urls,
        keep=[0 if n == "filtered" else 1 for n in names],
        id=["" if n == "bad_key" else f"r{i}" for i, n in enumerate(names)],
        expected=["00" * 32 if n == "wrong_hash" else "" for n in names],
    )
    out = tmp_path / "out"
    with running_fetcher(
        tmp_path, "--input", str(inp), "--output", str(out), "--samples-per-tar", "1", "--processes", "1",
        "--allow-network", "127.0.0.2/32,127.0.0.3/32,127.0.0.5/32", "--retries", "0",
        "--timeout", "60", "--read-timeout", "4", "--max-image-pixels", "5000000",
        "--max-body-bytes", str(MAX_BODY), "--max-redirects", "5",
        "--min-image-size", "32", "--max-image-area", "3000000", "--max-aspect-ratio", "3",
        "--allowed-formats", "JPEG,PNG", "--verify-hash", "expected", "--filter", "keep == 1", "--key-col", "id",
        "--shutdown-timeout", "1", "--progress", "off",
    ) as run:  # fmt: skip
        exposition = wait_for(
            lambda: (e := run.metrics()) and total(samples(e), "fetcher_shard_rows_done") == len(cases) and e,
            90,
            "every row but the keeper to finish",
        )
    parsed = samples(exposition)
    expected_reasons = Counter(reason for _, reason in cases.values() if reason is not None)
    wrong = {}
    for name, (_status, label, *_facts) in TABLE.items():
        got = parsed.get(("fetcher_row_failures_total", (("reason", label),)))
        if got != expected_reasons.get(name, 0):
            wrong[label] = got
    assert not wrong, f"fetcher_row_failures_total by reason label, where it differs from the cases: {wrong}"
    by_status = Counter(TABLE[r][0] for r in expected_reasons.elements())
    by_status["success"] = sum(1 for _, r in cases.values() if r is None)
    for status in ("success", D, R, F):
        assert parsed[("fetcher_rows_total", (("status", status),))] == by_status[status], status

    rows = {str(r["url"]): r for r in results_table(out).to_pylist() if r["url"] != urls[-1]}
    assert len(rows) == len(cases)
    wrong_rows = {}
    for name, (url, reason) in cases.items():
        rec = rows[str(url)] if url is not None else next(r for r in rows.values() if r["url"] is None)
        status = TABLE[reason][0] if reason else "success"
        if (rec["error_message"], rec["status"]) != (reason, status):
            wrong_rows[name] = (rec["error_message"], rec["status"], rec["error_detail"])
    assert not wrong_rows, f"rows whose reason or status differs from the table: {wrong_rows}"
    arrivals = [a.host for a in farm.state.arrivals if tag in a.path]
    assert not any(h.startswith("127.0.0.4") for h in arrivals), "a refused address was contacted"
