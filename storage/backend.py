"""Where finished output goes: the local file system or an fsspec object store, behind one small interface.

Shard files are always written locally first (the output folder itself, or a staging folder for
object stores) and then *published*: a local output is already in place after its atomic rename; an
object store gets one upload per file (a PUT is atomic per object), in the order given, so the
stats marker that is uploaded last still means "everything of this tar is there".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Any, Protocol

from storage.atomic import TMP_SUFFIX, fsync_dir


class Backend(Protocol):
    """The operations the writers need from an output location (names are relative to its root)."""

    root: str

    def exists(self, name: str) -> bool: ...

    def listdir(self) -> list[str]: ...

    def read_bytes(self, name: str) -> bytes: ...

    def write_bytes(self, name: str, data: bytes) -> None: ...

    def publish(self, local: str, name: str) -> None: ...


def is_remote(url: str) -> bool:
    """True for object-store URLs (``s3://``, ``gs://``, …); ``file://`` and plain paths are local."""
    return "://" in url and not url.startswith("file://")


def unique_tmp(path: str) -> str:
    """A temp name beside ``path`` that no other process uses (several workers share one folder)."""
    return f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"


class LocalBackend:
    """A local directory; every write is tmp + fsync + rename."""

    def __init__(self, root: str) -> None:
        self.root = root.removeprefix("file://")
        os.makedirs(self.root, exist_ok=True)

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def exists(self, name: str) -> bool:
        return os.path.exists(self._path(name))

    def listdir(self) -> list[str]:
        return sorted(os.listdir(self.root))

    def read_bytes(self, name: str) -> bytes:
        with open(self._path(name), "rb") as fh:
            return fh.read()

    def write_bytes(self, name: str, data: bytes) -> None:
        path = self._path(name)
        tmp = unique_tmp(path)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(self.root)

    def publish(self, local: str, name: str) -> None:
        target = self._path(name)
        if os.path.abspath(local) != os.path.abspath(target):
            os.replace(local, target)


class FsspecBackend:
    """An fsspec file system (s3://, gs://, hf://, memory://, …): credentials and endpoints come from
    the usual places for that file system (environment, config files)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        self.root = url.rstrip("/")
        self.fs, self._base = fsspec.core.url_to_fs(self.root, **(storage_options or {}))
        with contextlib.suppress(OSError, NotImplementedError):
            self.fs.makedirs(self._base, exist_ok=True)

    def _path(self, name: str) -> str:
        return f"{self._base}/{name}"

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self._path(name)))

    def listdir(self) -> list[str]:
        self.fs.invalidate_cache(self._base)  # other workers add files: never trust a cached listing
        try:
            return sorted(os.path.basename(p.rstrip("/")) for p in self.fs.ls(self._base, detail=False))
        except FileNotFoundError:
            return []

    def read_bytes(self, name: str) -> bytes:
        return bytes(self.fs.cat_file(self._path(name)))

    def write_bytes(self, name: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(name), data)

    def publish(self, local: str, name: str) -> None:
        """Upload ``local`` (a file, or a folder file by file) and drop the local copy."""
        if os.path.isdir(local):
            sources = sorted(os.path.join(d, f) for d, _, files in os.walk(local) for f in files)
            targets = [self._path(f"{name}/{os.path.relpath(p, local)}") for p in sources]
            if sources:
                self.fs.put(sources, targets)  # one call: object stores upload the list concurrently
            shutil.rmtree(local)
        else:
            self.fs.put_file(local, self._path(name))
            os.unlink(local)


def open_backend(url: str) -> Backend:
    """The backend for an ``--output`` value."""
    return FsspecBackend(url) if is_remote(url) else LocalBackend(url)
