"""CPU time and memory of a whole process tree, sampled from /proc while it runs.

The kernel has no per-tree counter that survives children which are never waited for (a
multiprocessing forkserver, for one, is left to exit on its own), so a sampler thread walks /proc
every ``interval`` seconds: CPU is the sum over every pid ever seen of its last user+sys time
(max'ed with the wait4 rusage of the root, which covers waited-for children); memory is the sum of
RSS (and PSS, which counts pages shared between forked workers once) over the live tree.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Sample:
    """One look at the tree: seconds since start, processes, RSS and PSS bytes, CPU seconds so far."""

    t: float
    procs: int
    rss: int
    pss: int
    cpu: float


@dataclass
class Measurement:
    """What one measured command cost."""

    returncode: int
    wall: float
    cpu: float  # user+sys seconds of the whole tree
    root_cpu: float  # user+sys seconds of the root process alone (the parent of a pipeline)
    peak_rss: int
    peak_pss: int
    samples: list[Sample] = field(default_factory=list)
    stderr_tail: str = ""

    def timeline(self, points: int = 200) -> list[dict[str, Any]]:
        """The samples thinned to about ``points`` entries, for JSON."""
        step = max(1, len(self.samples) // points)
        keep = self.samples[::step]
        if self.samples and keep[-1] is not self.samples[-1]:
            keep.append(self.samples[-1])
        return [
            {"t": round(s.t, 2), "procs": s.procs, "rss_mb": round(s.rss / 2**20, 1), "pss_mb": round(s.pss / 2**20, 1)}
            for s in keep
        ]


def _stat(pid: int) -> tuple[int, float, int] | None:
    """(ppid, cpu seconds, rss bytes) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields after the last ')' are fixed.
    rest = raw[raw.rfind(b")") + 2 :].split()
    ppid = int(rest[1])
    cpu = (int(rest[11]) + int(rest[12])) / _TICK
    rss = int(rest[21]) * _PAGE
    return ppid, cpu, rss


def cpu_seconds(pid: int) -> float:
    """user+sys seconds one process has used so far (0 once it is gone)."""
    st = _stat(pid)
    return st[1] if st is not None else 0.0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeSampler:
    """Samples the tree under ``root`` in a thread until ``stop``."""

    def __init__(self, root: int, interval: float = 0.25) -> None:
        self.root = root
        self.interval = interval
        self.cpu_by_pid: dict[int, float] = {}
        self.samples: list[Sample] = []
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="procstat", daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self, record: bool = True) -> Sample:
        """Walk /proc once and return the tree's totals (kept in ``samples`` when ``record``)."""
        table: dict[int, tuple[int, float, int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                st = _stat(int(name))
                if st is not None:
                    table[int(name)] = st
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            if pid in table:
                tree.append(pid)
                todo.extend(children.get(pid, ()))
        rss = pss = 0
        for pid in tree:
            _, cpu, r = table[pid]
            self.cpu_by_pid[pid] = max(cpu, self.cpu_by_pid.get(pid, 0.0))
            rss += r
            pss += _pss(pid)
        s = Sample(time.monotonic() - self._t0, len(tree), rss, pss, sum(self.cpu_by_pid.values()))
        if record:
            self.samples.append(s)
        return s

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def measure(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 1800,
    interval: float = 0.25,
    stdout_path: str | None = None,
) -> Measurement:
    """Run ``cmd`` to completion while sampling its process tree; never raises on a non-zero exit."""
    out = open(stdout_path or os.devnull, "wb")  # noqa: SIM115 - closed below
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.PIPE, start_new_session=True)
    sampler = TreeSampler(proc.pid, interval).start()
    stderr_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read() if proc.stderr else b""))
    reader.start()
    deadline = start + timeout
    while True:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            # Exited but not reaped: its /proc entry still holds its final CPU times; read them first
            # (not as a memory sample: a zombie has no RSS).
            sampler.sample(record=False)
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, 9)
            continue
        time.sleep(0.02)
    wall = time.monotonic() - start
    sampler.stop()
    reader.join()
    out.close()
    sampled = sampler.samples
    cpu = max(sum(sampler.cpu_by_pid.values()), rusage.ru_utime + rusage.ru_stime)
    return Measurement(
        returncode=proc.returncode,
        wall=wall,
        cpu=cpu,
        root_cpu=sampler.cpu_by_pid.get(proc.pid, 0.0),
        peak_rss=max((s.rss for s in sampled), default=0),
        peak_pss=max((s.pss for s in sampled), default=0),
        samples=sampled,
        stderr_tail=b"".join(stderr_chunks).decode("utf-8", "replace")[-3000:],
    )
