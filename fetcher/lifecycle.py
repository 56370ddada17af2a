"""How a run stops: signals, the shutdown deadline, the shard watchdog, and the durability options.

A first SIGTERM/SIGINT asks the pipeline to stop reading and wind down within ``--shutdown-timeout``;
a second one exits at once (nothing half-done is ever visible: open tars are only temp files, and
what their journal holds is continued by the next run).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from fetcher.options import ConfigError, opt

log = logging.getLogger(__name__)

LOW_DISK_ACTIONS = ("pause", "exit")
_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def parse_size(text: str) -> int:
    """Bytes from ``123``, ``512M``, ``10G``, ``1.5T`` (binary units)."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    unit = s[-1:] if s[-1:] in units and s[-1:] else ""
    try:
        value = float(s[: len(s) - len(unit)] if unit else s)
    except ValueError:
        raise ConfigError(f"bad size {text!r}: expected bytes or a number with K/M/G/T") from None
    if value < 0:
        raise ConfigError(f"bad size {text!r}: must be >= 0")
    return int(value * units[unit])


@dataclass(frozen=True)
class DurabilityOptions:
    """Options that decide how a run stops, resumes and guards the output disk."""

    shutdown_timeout: float = opt(
        "--shutdown-timeout", 20.0, "seconds to finish in-flight work after SIGTERM/SIGINT before abandoning it"
    )
    tail_timeout: float = opt(
        "--tail-timeout",
        0.0,
        "once a tar is fully read and only rows on failing/slowed hosts remain, give them up after this"
        " many seconds as tail_timeout (retryable by --retry-failed); 0 = 3 x --timeout",
    )
    shard_watchdog: float = opt(
        "--shard-watchdog", 600.0, "fail a tar's outstanding rows as timeout after this many seconds without progress"
    )
    retry_failed: bool = opt(
        "--retry-failed", False, "revisit finished tars and re-fetch only rows with retryable failures"
    )
    min_free_disk: str = opt("--min-free-disk", "1G", "free space the output file system must keep (e.g. 500M, 2G)")
    low_disk_action: str = opt(
        "--low-disk-action",
        "pause",
        "below --min-free-disk: pause until space returns, or exit",
        choices=LOW_DISK_ACTIONS,
    )
    disk_check_interval: float = opt("--disk-check-interval", 10.0, "seconds between free-space checks")
    worker_max_memory: str = opt(
        "--worker-max-memory",
        "2G",
        "address-space cap of each imaging worker process (--imaging-pool processes; 0 = none);"
        " over it = named failure",
    )

    @property
    def min_free_bytes(self) -> int:
        return parse_size(self.min_free_disk)

    @property
    def worker_max_bytes(self) -> int:
        return parse_size(self.worker_max_memory)

    def validate(self) -> None:
        if self.shutdown_timeout < 0:
            raise ConfigError("--shutdown-timeout must be >= 0")
        if self.tail_timeout < 0:
            raise ConfigError("--tail-timeout must be >= 0 (0 = 3 x --timeout)")
        if self.shard_watchdog < 0:
            raise ConfigError("--shard-watchdog must be >= 0 (0 disables it)")
        if self.disk_check_interval <= 0:
            raise ConfigError("--disk-check-interval must be > 0")
        for flag, value in (("--min-free-disk", self.min_free_disk), ("--worker-max-memory", self.worker_max_memory)):
            try:
                parse_size(value)
            except ConfigError as exc:
                raise ConfigError(f"{flag}: {exc}") from None
        if 0 < self.worker_max_bytes < 256 * 2**20:
            raise ConfigError("--worker-max-memory must be 0 or at least 256M (a worker needs room to start)")


class RunAborted(Exception):
    """The run stopped on a condition the operator must fix (disk full); the message is one line."""

    exit_code = 75  # EX_TEMPFAIL: rerunning the same command resumes


def exit_code_for(sig: signal.Signals | None) -> int:
    """Conventional exit status after a stop signal (0 when none arrived)."""
    return 0 if sig is None else _EXIT_CODES.get(sig, 128 + int(sig))


class SignalGate:
    """Installs SIGTERM/SIGINT handlers on the running loop for the life of a run.

    The first signal calls ``on_stop(sig)``; a second one ends the process immediately with the
    conventional status. Open tars exist only as temp files; the next run continues them from their
    last checkpoint.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, on_stop: Callable[[signal.Signals], None]) -> None:
        self.on_stop = on_stop
        self.received: signal.Signals | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> SignalGate:
        self._loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            self._loop.add_signal_handler(sig, self._handle, sig)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        for sig in self.SIGNALS:
            self._loop.remove_signal_handler(sig)

    def _handle(self, sig: signal.Signals) -> None:
        if self.received is not None:
            log.warning("second %s: exiting now; open tars continue from their last checkpoint", sig.name)
            sys.stderr.flush()
            os._exit(exit_code_for(sig))
        self.received = sig
        log.warning("%s received: stopping (again to exit at once)", sig.name)
        self.on_stop(sig)
