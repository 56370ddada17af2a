"""Atomic file creation: temp name, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
    """Open ``path + '.tmp'`` for writing; on clean exit fsync and rename it over ``path``.

    On any exception the temp file is removed and ``path`` is untouched.
    """
    tmp = path + TMP_SUFFIX
    fh = open(tmp, "wb")  # noqa: SIM115 - closed below on every path
    try:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except BaseException:
        with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
            fh.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as fh:
        fh.write(data)


def commit_tmp(tmp: str, path: str) -> None:
    """fsync an already-written temp file and rename it to its final name."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def remove_stale_tmp(directory: str) -> list[str]:
    """Delete leftover ``*.tmp`` files of an interrupted run; returns what was removed."""
    removed: list[str] = []
    if not os.path.isdir(directory):
        return removed
    for name in os.listdir(directory):
        if name.endswith(TMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
            removed.append(name)
    return removed


def remove_path(path: str) -> None:
    """Remove a file or a folder (a files-format tar in progress); already gone is fine."""
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
