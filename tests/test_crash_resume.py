"""SIGKILL at random instants, restart the same command: nothing lost, nothing duplicated.

Kills must land both inside open tars (with rows already checkpointed, which the next run continues)
and after tars were published (which the next run must skip): the test checks that both happened.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

from fetcher.farm import Farm
from storage.journal import Journal
from tests.conftest import run_fetcher, write_urls
from tests.output_checks import check_output, kill_tree, start_fetcher

ROWS = 480
PER_TAR = 20
KILLS = 10


def kill_test_urls(farm: Farm, tag: str) -> list[str]:
    """Small images over 8 hosts, a deterministic failure every 9 rows, a slow one every 11."""
    urls = []
    for i in range(ROWS):
        if i % 9 == 4:
            path = "/status/404"
        elif i % 11 == 3:
            path = "/slow/150/small.jpg"
        else:
            path = f"/gen/96x64.jpg?seed={i}&variants=16"
        urls.append(farm.url(path + ("&" if "?" in path else "?") + f"{tag}={i}", i % 8))
    return urls


def requests_seen(farm: Farm, tag: str) -> int:
    return sum(1 for a in farm.state.arrivals if tag in a.path)


def wait_first_request(farm: Farm, tag: str, seen: int, proc: subprocess.Popen[str]) -> None:
    """Return once the run has sent a request (its start-up is over) or has ended."""
    while proc.poll() is None and requests_seen(farm, tag) <= seen:
        time.sleep(0.005)


def test_sigkill_at_random_instants_loses_and_duplicates_nothing(farm: Farm, tmp_path: Path) -> None:
    tag = f"kill{uuid.uuid4().hex[:8]}"
    urls = kill_test_urls(farm, tag)
    inp = write_urls(tmp_path / "urls.parquet", urls)
    common = ["--input", str(inp), "--samples-per-tar", str(PER_TAR), "--processes", "1", "--allow-private-networks",
              "--retries", "0", "--image-size", "32", "--min-free-disk", "0", "--concurrency", "16",
              # tars are read (and so finished) a few at a time, and open ones checkpoint often, so kills
              # land after tars are published as well as inside open tars with checkpointed rows
              "--read-ahead", "40", "--checkpoint-interval", "0.1", "--metrics-address", ""]  # fmt: skip

    ref = start_fetcher([*common, "--output", str(tmp_path / "ref")])
    wait_first_request(farm, tag, 0, ref)
    started = time.monotonic()
    assert ref.wait(120) == 0
    work = time.monotonic() - started  # seconds from the first request to the end, at today's load
    reference = check_output(tmp_path / "ref", final=True)

    ok_reference = {r["url"] for r in reference.values() if r["status"] == "success"}
    assert len(ok_reference) == ROWS - len([i for i in range(ROWS) if i % 9 == 4])

    rng = random.Random(int(os.environ.get("KILL_SEED", "5")))
    kills = attempts = 0
    progress: list[int] = []
    landed: list[tuple[int, int]] = []  # per kill: tars published by that run, rows checkpointed in open tars
    finished: list[Path] = []  # output folders the kills could not stop before they were complete
    out = tmp_path / "out0"
    while kills < KILLS and attempts < 4 * KILLS:
        attempts += 1
        # A random instant once the run is working: up to ~60 % of the time the rest would take, so
        # ten kills leave work for the next run; kills land in fetching, imaging and finalizing alike.
        remaining = ROWS - len(check_output(out, final=False)) if out.exists() else ROWS
        markers_before = len(list(out.glob("*_stats.json")))
        seen = requests_seen(farm, tag)
        proc = start_fetcher([*common, "--output", str(out)], start_new_session=True)
        wait_first_request(farm, tag, seen, proc)
        time.sleep(rng.uniform(0, 0.6 * work * remaining / ROWS + 0.05))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
            proc.wait(60)  # the files are now as the kill left them
            journaled = sum(len(j.entries) for p in out.glob("*.journal") if (j := Journal.load(str(p))))
            landed.append((len(list(out.glob("*_stats.json"))) - markers_before, journaled))
        else:
            work *= 0.7  # faster than measured (the machine's load changed): aim earlier
        proc.wait(60)
        kill_tree(proc)  # orphaned imaging workers, as an init system would reap them
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read() if proc.stderr else ""
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
        done = check_output(out, final=False)  # whatever is marked complete is complete, at every instant
        progress.append(len(list(out.glob("*_stats.json"))))
        if len(done) == ROWS:  # finished before ten kills: check it below, go on in a fresh folder
            finished.append(out)
            out = tmp_path / f"out{len(finished)}"
    assert kills >= KILLS, f"only {kills} kills landed in {attempts} attempts"
    assert any(published for published, _ in landed), f"no kill landed after a tar was published: {landed}"
    assert any(rows for _, rows in landed), f"no kill landed inside an open tar with checkpointed rows: {landed}"

    run_fetcher(*common, "--output", str(out))
    lost = duplicates = 0
    for folder in [*finished, out]:
        rows = check_output(folder, final=True)
        lost += ROWS - len(rows)
        duplicates += len(rows) - len({r["url"] for r in rows.values()})
        assert sorted(r["url"] for r in rows.values()) == sorted(urls)
        assert {r["url"] for r in rows.values() if r["status"] == "success"} == ok_reference
    assert (lost, duplicates) == (0, 0)
    print(f"kill test: rows={ROWS} x {len(finished) + 1} folders, kills={kills} attempts={attempts} "
          f"duplicates={duplicates} lost={lost} work={work:.1f}s tars complete after each run: {progress} "
          f"(tars published, rows checkpointed) at each kill: {landed}")  # fmt: skip
