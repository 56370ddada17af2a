"""``--retry-failed``: only retryable failures are fetched again; old samples are kept byte for byte."""

from __future__ import annotations

import tarfile
import uuid
from pathlib import Path

from fetcher.farm import Farm
from tests.conftest import run_fetcher, write_urls
from tests.output_checks import check_output


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        out = {}
        for m in tf.getmembers():
            fh = tf.extractfile(m)
            assert fh is not None
            out[m.name] = fh.read()
        return out


def test_retry_failed_refetches_only_retryable_rows(farm: Farm, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    kinds = ["good", "good", "flaky", "gone", "good", "throttled"]
    paths = {"good": "/img/small.jpg", "flaky": "/flaky/1/small.jpg", "gone": "/status/404",
             "throttled": "/status/429"}  # fmt: skip
    urls = [farm.url(f"{paths[kinds[i % 6]]}?r={tag}-{i}", i % 8) for i in range(36)]
    inp = write_urls(tmp_path / "urls.parquet", urls, extra=[f"x{i}" for i in range(36)])
    out = tmp_path / "out"
    args = ["--input", str(inp), "--output", str(out), "--samples-per-tar", "12", "--allow-private-networks",
            "--retries", "0", "--save-columns", "extra", "--processes", "1"]  # fmt: skip

    run_fetcher(*args)
    first = check_output(out, final=True)
    assert sum(r["status"] == "success" for r in first.values()) == 18
    old_members = {p.name: members(p) for p in sorted(out.glob("*.tar"))}
    seen_before = len([a for a in farm.state.arrivals if tag in a.path])

    proc = run_fetcher(*args, "--retry-failed")
    again = [a.path for a in farm.state.arrivals if tag in a.path][seen_before:]
    retried = sorted(int(p.rsplit("-", 1)[1]) for p in again)
    assert retried == [i for i in range(36) if kinds[i % 6] in ("flaky", "throttled")], again
    assert "rows        12 of 12" in proc.stderr

    second = check_output(out, final=True)
    assert sorted(second) == sorted(first)  # every row exactly once, same keys
    for key, rec in second.items():
        kind = kinds[(int(key[:5]) * 12 + int(key[5:])) % 6]
        expected = {"good": "success", "flaky": "success", "gone": "failed_to_download",
                    "throttled": "failed_to_download"}[kind]  # fmt: skip
        assert rec["status"] == expected, rec
        assert rec["extra"] == first[key]["extra"]
        if kind == "good":
            assert rec == first[key], "a kept row must be carried over unchanged"
    for name, old in old_members.items():
        new = members(out / name)
        assert {k: v for k, v in new.items() if k in old} == old, "old samples must be kept byte for byte"
        assert len(new) == len(old) + 3 * 2  # two flaky rows per tar came back, three members each

    # Only the 429s are still retryable: a third pass fetches just those and keeps every sample.
    before = {p.name: members(p) for p in out.glob("*.tar")}
    seen_before = len([a for a in farm.state.arrivals if tag in a.path])
    run_fetcher(*args, "--retry-failed")
    assert len([a for a in farm.state.arrivals if tag in a.path]) - seen_before == 6
    assert {p.name: members(p) for p in out.glob("*.tar")} == before
    assert check_output(out, final=True).keys() == second.keys()
