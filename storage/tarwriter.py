"""Streaming webdataset tar writer: members are appended as samples finish, committed atomically."""

from __future__ import annotations

import contextlib
import os
import tarfile
import time
from typing import Any

from storage.atomic import TMP_SUFFIX, commit_tmp
from storage.ustar import BLOCK, ustar_header


class TarSink:
    """Writes ``{key}.{ext}`` members into ``path + '.tmp'``; ``commit`` makes it visible as ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tmp = path + TMP_SUFFIX
        self._fh = open(self.tmp, "wb", buffering=1 << 20)  # noqa: SIM115 - owned by this object
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._mtime = int(time.time())
        self.bytes_written = 0
        self.samples = 0

    @property
    def outputs(self) -> list[str]:
        """The committed paths, in the order they must be published."""
        return [self.path]

    def add_sample(self, key: str, members: dict[str, bytes], res: Any = None) -> None:
        """Append the members of one sample (extension -> bytes), grouped under one key."""
        for ext, data in members.items():
            # Written straight to the file; tarfile's offset is kept right so its close() ends the archive.
            pad = -len(data) % BLOCK
            self._fh.write(ustar_header(f"{key}.{ext}", len(data), self._mtime))
            self._fh.write(data)
            if pad:
                self._fh.write(b"\0" * pad)
            self._tar.offset += BLOCK + len(data) + pad
            self.bytes_written += len(data)
        self.samples += 1

    def finish(self) -> None:
        """Finish the archive and make the ``.tmp`` file durable, without renaming it."""
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def commit(self) -> None:
        """Finish the archive, fsync and rename it into place."""
        self._tar.close()
        self._fh.close()
        commit_tmp(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the partial archive (closing may itself fail on a full disk; the file goes anyway)."""
        try:
            with contextlib.suppress(OSError):
                self._tar.close()
        finally:
            with contextlib.suppress(OSError):
                self._fh.close()
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
