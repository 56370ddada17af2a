"""Streaming webdataset tar writer: members are appended as samples finish, committed atomically.

The temp tar is append-only and has a per-writer name (two processes never write one file). It can be
reopened at a checkpointed length (``offset``) to continue a tar a stopped run left behind.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
import time
from typing import Any

from storage.atomic import fsync_dir
from storage.backend import unique_tmp
from storage.ustar import BLOCK, ustar_header


class TarSink:
    """Writes ``{key}.{ext}`` members into a temp file beside ``path``; ``commit`` makes it visible as ``path``."""

    resumable = True

    def __init__(
        self, path: str, tmp: str | None = None, offset: int = 0, bytes_written: int = 0, samples: int = 0
    ) -> None:
        self.path = path
        self.tmp = tmp or unique_tmp(path)
        if offset:
            # Continue a checkpointed temp tar: whatever lies past the checkpoint is a torn sample.
            fh = open(self.tmp, "r+b", buffering=1 << 20)  # noqa: SIM115 - owned by this object
            fh.truncate(offset)
            fh.seek(offset)
        else:
            fh = open(self.tmp, "wb", buffering=1 << 20)  # noqa: SIM115
        self._fh = fh
        self.offset = offset
        self._mtime = int(time.time())
        self.bytes_written = bytes_written
        self.samples = samples

    @property
    def outputs(self) -> list[str]:
        """The committed paths, in the order they must be published."""
        return [self.path]

    def add_sample(self, key: str, members: dict[str, bytes], res: Any = None) -> None:
        """Append the members of one sample (extension -> bytes), grouped under one key."""
        for ext, data in members.items():
            pad = -len(data) % BLOCK
            self._fh.write(ustar_header(f"{key}.{ext}", len(data), self._mtime))
            self._fh.write(data)
            if pad:
                self._fh.write(b"\0" * pad)
            self.offset += BLOCK + len(data) + pad
            self.bytes_written += len(data)
        self.samples += 1

    def sync(self) -> None:
        """Make every sample written so far durable (before the journal may mention it)."""
        self._fh.flush()
        os.fdatasync(self._fh.fileno())

    def finish(self) -> None:
        """End the archive as tarfile does (two zero blocks, padded to a record) and make it durable."""
        end = self.offset + 2 * BLOCK
        end += -end % tarfile.RECORDSIZE
        self._fh.write(b"\0" * (end - self.offset))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def commit(self) -> None:
        """Finish the archive, fsync and rename it into place."""
        self.finish()
        os.replace(self.tmp, self.path)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def close(self) -> None:
        """Stop writing, keeping the temp tar for a later run to continue."""
        with contextlib.suppress(OSError):
            self._fh.close()

    def abort(self) -> None:
        """Drop the partial archive (closing may itself fail on a full disk; the file goes anyway)."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
