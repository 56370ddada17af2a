"""Free-space checks on the output file system: before each tar and every few seconds."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time

from fetcher.lifecycle import DurabilityOptions, RunAborted

log = logging.getLogger(__name__)


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer can still use on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class DiskFull(RunAborted):
    """The output file system is (nearly) full and the run was told to exit, or a write hit ENOSPC."""


def is_disk_full(exc: BaseException) -> bool:
    """True for the OSErrors that mean "no room": ENOSPC and EDQUOT."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class DiskGuard:
    """Keeps ``--min-free-disk`` free on the output file system: pause (and say so) or exit."""

    def __init__(self, path: str, opts: DurabilityOptions) -> None:
        self.path = path
        self.opts = opts
        self.min_free = opts.min_free_bytes
        self.paused = False
        self.pauses = 0
        self.paused_seconds = 0.0
        self._ok = asyncio.Event()
        self._ok.set()

    def low(self) -> int | None:
        """Free bytes when below the minimum, else None."""
        free = free_bytes(self.path)
        return free if free < self.min_free else None

    def error(self, free: int) -> DiskFull:
        return DiskFull(
            f"free space on {self.path} is {_mib(free)}, below --min-free-disk {self.opts.min_free_disk}; "
            "stopped cleanly, rerun the same command to resume"
        )

    async def ensure(self) -> None:
        """Return once there is room; raise DiskFull instead when the action is ``exit``."""
        if self.paused:  # the other checker is already waiting for space
            await self.wait_ok()
        free = self.low()
        if free is None:
            return
        if self.opts.low_disk_action == "exit":
            raise self.error(free)
        await self._pause(free)

    async def _pause(self, free: int) -> None:
        self.paused = True
        self.pauses += 1
        self._ok.clear()
        start = time.monotonic()
        log.warning(
            "disk low: %s free on %s < --min-free-disk %s; paused until space is freed",
            _mib(free),
            self.path,
            self.opts.min_free_disk,
        )
        try:
            while self.low() is not None:
                await asyncio.sleep(self.opts.disk_check_interval)
        finally:
            self.paused_seconds += time.monotonic() - start
            self.paused = False
            self._ok.set()
        log.info("disk space back (%s free); resuming", _mib(free_bytes(self.path)))

    async def wait_ok(self) -> None:
        """Block while a pause is in progress."""
        await self._ok.wait()

    async def monitor(self) -> None:
        """Check every ``--disk-check-interval`` seconds; raises DiskFull in exit mode."""
        while True:
            await asyncio.sleep(self.opts.disk_check_interval)
            if not self.paused:
                await self.ensure()
