"""Sample-level checkpoints and the per-tar lease: what lets a stopped tar continue instead of restart.

An open tar is an append-only temp file plus ``NNNNN.journal``, one JSON line per finished row
(successes and failures, with their result records) and the temp tar's byte length after it. Lines
are appended in batches (every ``every`` rows or ``interval`` seconds) and only after the tar bytes
they cover were fdatasync'd, so at any instant the journal describes a prefix of the temp tar. A
restart truncates the temp tar to the last journaled length (dropping a torn sample) and skips the
journaled rows; a torn last journal line is ignored. At most one batch of finished rows is lost.

The lease (``NNNNN.lease``) is an flock held for the life of a writer: the kernel drops it when the
process dies (SIGKILL and OOM included), so a live duplicate process skips the tar and a dead one's
tar is adopted. flock is advisory and local to one machine's kernel (on NFS it is emulated with
fcntl locks by Linux clients); object stores are written through a local staging folder, so there
the lease covers the processes sharing one staging folder only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from storage.atomic import fsync_dir, write_bytes

logger = logging.getLogger(__name__)

JOURNAL_VERSION = 1


class TarBusy(Exception):
    """Another live process holds this tar's lease."""


class LeaseLost(Exception):
    """This writer no longer holds its tar's lease (the lease file was removed or replaced)."""


class Lease:
    """An exclusive, crash-released claim on one tar (``flock`` on ``path``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lease or raise TarBusy (never waits)."""
        for _ in range(8):  # the holder may unlink the file between our open and our lock: retry
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise TarBusy(f"{os.path.basename(self.path)} is held: {self._holder()}") from None
                raise
            if self._same_file(fd):
                self._fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps({"owner": self.owner, "since": time.time()}).encode())
                return
            os.close(fd)
        raise TarBusy(f"{os.path.basename(self.path)} keeps changing hands")

    def _same_file(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        own = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def _holder(self) -> str:
        try:
            with open(self.path, encoding="utf-8") as fh:
                return str(json.loads(fh.read() or "{}").get("owner", "unknown"))
        except (OSError, ValueError):
            return "unknown"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def verify(self) -> None:
        """Raise LeaseLost unless this writer still holds the lease (checked right before publishing)."""
        if self._fd is None or not self._same_file(self._fd):
            raise LeaseLost(f"lease {self.path} lost")

    def release(self, remove: bool = True) -> None:
        """Drop the lease; ``remove`` deletes the lease file first (while still holding it)."""
        if self._fd is None:
            return
        if remove and self._same_file(self._fd):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


@dataclass
class Entry:
    """One finished row: its position, the result record, and the sink's state just after it."""

    row: int
    record: dict[str, Any]
    offset: int  # temp tar length covering this row
    bytes_written: int  # sink payload bytes up to and including this row
    samples: int  # samples in the sink up to and including this row


@dataclass
class Resumed:
    """What an earlier writer of this tar left: its temp file name and the journaled rows."""

    tmp: str
    entries: list[Entry] = field(default_factory=list)

    @property
    def offset(self) -> int:
        return self.entries[-1].offset if self.entries else 0


def _encode(entry: Entry) -> bytes:
    data = {"r": entry.row, "o": entry.offset, "b": entry.bytes_written, "s": entry.samples, "rec": entry.record}
    return (json.dumps(data, ensure_ascii=False, default=_jsonable, separators=(",", ":")) + "\n").encode()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class Journal:
    """Append-only, batched, fsync'd log of one tar's finished rows."""

    def __init__(self, path: str, every: int = 64, interval: float = 1.0) -> None:
        self.path = path
        self.every = max(1, every)
        self.interval = interval
        self._fh: Any = None
        self._pending: list[Entry] = []
        self._last = time.monotonic()
        self.synced_rows = 0
        self.sync_seconds = 0.0  # time spent in checkpoints (for the cost per sample)

    @staticmethod
    def load(path: str) -> Resumed | None:
        """Read a journal left by an earlier writer; None when there is none (or no usable header)."""
        try:
            with open(path, "rb") as fh:
                lines = fh.read().split(b"\n")
        except FileNotFoundError:
            return None
        try:
            head = json.loads(lines[0])
            resumed = Resumed(tmp=str(head["tmp"]))
        except (ValueError, KeyError, TypeError, IndexError):
            logger.warning("journal %s has no usable header: the tar starts over", path)
            return None
        seen: set[int] = set()
        for line in lines[1:]:
            try:
                d = json.loads(line)
                entry = Entry(int(d["r"]), dict(d["rec"]), int(d["o"]), int(d["b"]), int(d["s"]))
            except (ValueError, KeyError, TypeError):
                break  # a torn last line (or the empty string after the final newline): stop here
            if entry.row in seen:
                continue
            seen.add(entry.row)
            resumed.entries.append(entry)
        return resumed

    def start(self, tmp: str, entries: list[Entry]) -> None:
        """Write a fresh journal (atomically) naming ``tmp`` and holding ``entries``, then open it to append."""
        head = json.dumps({"v": JOURNAL_VERSION, "tmp": os.path.basename(tmp)}).encode() + b"\n"
        write_bytes(self.path, head + b"".join(_encode(e) for e in entries))
        self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self.synced_rows = len(entries)

    def add(self, entry: Entry) -> None:
        self._pending.append(entry)

    def due(self, now: float | None = None) -> bool:
        """True when a checkpoint is owed (batch full, or rows waiting longer than ``interval``)."""
        if not self._pending:
            return False
        now = time.monotonic() if now is None else now
        return len(self._pending) >= self.every or now - self._last >= self.interval

    def sync(self) -> int:
        """Append and fsync the pending entries (the caller made their tar bytes durable first)."""
        self._last = time.monotonic()
        if not self._pending or self._fh is None:
            return 0
        t0 = time.perf_counter()
        self._fh.write(b"".join(_encode(e) for e in self._pending))
        self._fh.flush()
        os.fdatasync(self._fh.fileno())
        n = len(self._pending)
        self.synced_rows += n
        self._pending.clear()
        self.sync_seconds += time.perf_counter() - t0
        return n

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    def remove(self) -> None:
        """Delete the journal (its tar is published, or is being redone from scratch)."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))
