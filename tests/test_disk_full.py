"""A full output disk, for real: a small tmpfs mounted in a private mount namespace.

``unshare --mount`` (plus ``--map-root-user`` when not root) gives the fetcher runs their own tmpfs
that disappears with the namespace, so nothing leaks onto the machine even if a test dies.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fetcher.farm import Farm
from tests.conftest import ROOT, write_urls
from tests.output_checks import check_output, check_stopped_output

ROWS, PER_TAR = 60, 10
# Reads a loopback /metrics page inside the namespace (no proxy, whatever the environment says).
SCRAPE = shlex.quote(
    "import sys, urllib.request as u; "
    "print(u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=10).read().decode())"
)


def in_namespace(script: str, tmp: Path, size: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a bash script in a private mount namespace where ``$MNT`` is a fresh tmpfs of ``size``."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is required for the disk-full test")
    flags = ["--mount"] if os.geteuid() == 0 else ["--mount", "--map-root-user"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PY=sys.executable, MNT=str(tmp / "mnt"), SAVE=str(tmp / "saved"),
               SIZE=size)  # fmt: skip
    (tmp / "mnt").mkdir()
    (tmp / "saved").mkdir()
    head = 'set -u\nmount --make-rprivate / 2>/dev/null\nmount -t tmpfs -o size=${SIZE} none "$MNT" || exit 97\n'
    proc = subprocess.run(["unshare", *flags, "bash", "-c", head + script], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)  # fmt: skip
    if proc.returncode == 97:
        pytest.fail(f"cannot mount a tmpfs in a private namespace here: {proc.stderr}")
    return proc


def exited(saved: Path, run: str, code: int) -> str:
    """Check the exit code the script saved for ``run``; returns the run's last stderr line."""
    err = (saved / f"err_{run}").read_text()
    assert (saved / f"rc_{run}").read_text().strip() == str(code), err
    return err.strip().splitlines()[-1]


def disk_urls(farm: Farm, tmp: Path, path: str = "/gen/640x480.jpg?variants=60") -> tuple[Path, list[str]]:
    tag = uuid.uuid4().hex[:8]
    urls = [farm.url(f"{path}{'&' if '?' in path else '?'}seed={i}&disk={tag}", i % 8) for i in range(ROWS)]
    return write_urls(tmp / "urls.parquet", urls), urls


def fetch_cmd(inp: Path, *extra: str) -> str:
    args = ["--input", str(inp), "--output", "$MNT/out", "--samples-per-tar", str(PER_TAR), "--processes", "1",
            "--allow-private-networks", *extra]  # fmt: skip
    return '"$PY" -m fetcher ' + " ".join(args)


def test_enospc_mid_write_leaves_no_corrupt_output_and_resume_completes_the_tar(farm: Farm, tmp_path: Path) -> None:
    inp, urls = disk_urls(farm, tmp_path)
    run = fetch_cmd(inp, "--min-free-disk", "0", "--read-ahead", "1")
    script = f"""
{run} 2>"$SAVE/err_full"; echo $? >"$SAVE/rc_full"
cp -a "$MNT/out" "$SAVE/after_full"
mount -o remount,size=8m "$MNT"
{run} 2>"$SAVE/err_resume"; echo $? >"$SAVE/rc_resume"
cp -a "$MNT/out" "$SAVE/final"
"""
    proc = in_namespace(script, tmp_path, "600k")
    saved = tmp_path / "saved"
    assert proc.returncode == 0, proc.stderr
    last = exited(saved, "full", 75)
    assert last.startswith("fetcher: error: disk full writing tar") and "No space left on device" in last
    partial = check_stopped_output(saved / "after_full")  # only checkpoints, nothing without its marker
    assert len(partial) < ROWS  # (tars are written concurrently: none may have finished)

    exited(saved, "resume", 0)
    rows = check_output(saved / "final", final=True)
    assert sorted(r["url"] for r in rows.values()) == sorted(urls)
    assert all(r["status"] == "success" for r in rows.values())


def test_min_free_disk_exit_and_pause(farm: Farm, tmp_path: Path) -> None:
    # 100 ms per image, 2 at a time: the run lasts seconds, so the 0.2 s checks see the disk filling.
    inp, urls = disk_urls(farm, tmp_path, "/slow/100/medium.jpg")
    small = ["--image-size", "128", "--read-ahead", "1", "--concurrency", "2", "--disk-check-interval", "0.2"]
    exit_run = fetch_cmd(inp, *small, "--min-free-disk", "1950k", "--low-disk-action", "exit")
    pause_run = fetch_cmd(inp, *small, "--min-free-disk", "300k", "--low-disk-action", "pause",
                          "--metrics-address", "127.0.0.1:0")  # fmt: skip
    script = f"""
{exit_run} 2>"$SAVE/err_exit"; echo $? >"$SAVE/rc_exit"
cp -a "$MNT/out" "$SAVE/after_exit"
avail=$(df -k --output=avail "$MNT" | tail -1)
head -c $(( (avail - 150) * 1024 )) /dev/zero >"$MNT/filler"
{pause_run} 2>"$SAVE/err_pause" & pid=$!
sleep 3
cp "$SAVE/err_pause" "$SAVE/err_while_paused"
url=$(grep -o 'http://127.0.0.1:[0-9]*/metrics' "$SAVE/err_pause" | head -1)
"$PY" -c {SCRAPE} "$url" >"$SAVE/metrics_while_paused"
ls "$MNT/out" >"$SAVE/ls_while_paused"
rm "$MNT/filler"
wait $pid; echo $? >"$SAVE/rc_pause"
cp -a "$MNT/out" "$SAVE/final"
"""
    proc = in_namespace(script, tmp_path, "2m")
    saved = tmp_path / "saved"
    assert proc.returncode == 0, proc.stderr
    assert "below --min-free-disk 1950k" in exited(saved, "exit", 75)
    before_pause = check_stopped_output(saved / "after_exit")
    assert len(before_pause) < ROWS

    paused_log = (saved / "err_while_paused").read_text()
    assert "disk low:" in paused_log and "paused until space is freed" in paused_log, paused_log
    assert "fetcher_disk_paused 1.0" in (saved / "metrics_while_paused").read_text()
    markers_while_paused = [n for n in (saved / "ls_while_paused").read_text().split() if n.endswith("_stats.json")]
    assert len(markers_while_paused) == len(before_pause) // PER_TAR, "nothing new is finished while paused"
    exited(saved, "pause", 0)
    assert "resuming" in (saved / "err_pause").read_text()
    rows = check_output(saved / "final", final=True)
    assert sorted(r["url"] for r in rows.values()) == sorted(urls)


# -- an output that cannot take a new tar: one line, exit 75 (issue 14.7) ----------------------------


def test_inode_exhaustion_at_tar_creation_is_one_line(farm: Farm, tmp_path: Path) -> None:
    # A finished output with one tar to redo, on a file system with bytes to spare but no inode left:
    # creating that tar's file is what fails (ENOSPC, where TarSink opens it).
    inp, _ = disk_urls(farm, tmp_path)
    fetch = fetch_cmd(inp, "--min-free-disk", "0")
    script = (
        f"{fetch} 2> /dev/null || exit 3\n"
        'rm "$MNT/out/00005_stats.json"\n'
        'for i in $(seq 1 200); do touch "$MNT/fill$i" 2> /dev/null || break; done\n'
        f'{fetch} 2> "$SAVE/err_inodes"; echo $? > "$SAVE/rc_inodes"\n'
    )
    proc = in_namespace(script, tmp_path, "64M,nr_inodes=64")
    assert proc.returncode == 0, proc.stderr
    last = exited(tmp_path / "saved", "inodes", 75)
    assert last.startswith("fetcher: error: disk full creating tar 00005"), last
    assert "Traceback" not in (tmp_path / "saved" / "err_inodes").read_text()


def test_read_only_output_at_tar_creation_is_one_line(farm: Farm, tmp_path: Path) -> None:
    inp, _ = disk_urls(farm, tmp_path)
    fetch = fetch_cmd(inp, "--min-free-disk", "0")
    script = (
        f"{fetch} 2> /dev/null || exit 3\n"
        'rm "$MNT/out/00005_stats.json"\n'  # one tar to redo, in a folder now mounted read-only
        'mount -o remount,ro "$MNT" || exit 4\n'
        f'{fetch} 2> "$SAVE/err_ro"; echo $? > "$SAVE/rc_ro"\n'
    )
    proc = in_namespace(script, tmp_path, "64M")
    assert proc.returncode == 0, proc.stderr
    last = exited(tmp_path / "saved", "ro", 75)
    assert last.startswith("fetcher: error: I/O error creating tar 00005"), last
    assert "Read-only file system" in last
    assert "Traceback" not in (tmp_path / "saved" / "err_ro").read_text()
