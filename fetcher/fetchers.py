"""The fetch seam: where a row's image bytes come from.

The pipeline asks one Fetch object, chosen by the input kind, to ``admit`` a row's locator (or refuse
it with a named reason) and to ``fetch`` it into a FetchOutcome; everything after (imaging, sinks,
results) is the same for both. HttpFetch is the network (URL policy, aiohttp); LocalFetch reads
images out of the tars and folders the user named explicitly (``--input-format webdataset|folder``
or ``--images-from``): it never goes near the network, and URL lists never reach it, so the SSRF
guard still refuses ``file://`` in them.
"""

from __future__ import annotations

import asyncio
import os
import tarfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fetcher.budget import ByteBudget
from fetcher.http import HttpClient
from fetcher.inputs import discover, is_url, open_binary
from fetcher.netguard import UrlRefused
from fetcher.options import ConfigError
from fetcher.readers import ReaderSpec
from fetcher.readers.local import parse_tar_locator
from fetcher.records import FetchOutcome, Reason

LOCAL_SLOT = "local files"  # the one scheduler slot of local reads: --per-host-concurrency bounds them


class Fetch(Protocol):
    """Admits and fetches the image of a row."""

    slot: str | None  # one scheduler slot for every row, or None: one per URL host

    def admit(self, url: object) -> str:
        """The locator to schedule, or raise UrlRefused with the reason the row fails."""
        ...

    async def fetch(self, url: str) -> FetchOutcome:
        """The image bytes of an admitted locator, or the named failure. Never raises."""
        ...

    def prefetch(self, url: str) -> None:
        """A hint that ``url`` will be fetched soon (HTTP: resolve its host while it waits for a permit)."""
        ...


FetchFor = Callable[[ByteBudget], Fetch]  # makes a run's Fetch; it reserves each body's bytes in that budget


class HttpFetch:
    """Rows are URLs: the address policy admits them, HttpClient downloads them."""

    slot: str | None = None

    def __init__(self, client: HttpClient) -> None:
        self.client = client

    def admit(self, url: object) -> str:
        return self.client.policy.check_url(url)

    async def fetch(self, url: str) -> FetchOutcome:
        return await self.client.fetch(url)

    def prefetch(self, url: str) -> None:
        self.client.prefetch(url)


Entry = tuple[str, int, int]  # (tar, offset of the data, size)


@dataclass(frozen=True)
class LocalRoots:
    """Where LocalFetch may read: folders (local) and tars (local or fsspec URLs)."""

    folders: tuple[str, ...] = ()
    tars: tuple[str, ...] = ()


class LocalFetch:
    """Rows are images in local (or fsspec) tars and folders, confined to ``roots``.

    A locator is a tar member (``tar://MEMBER::TAR``), a path
    inside a folder root, or a path relative to the roots (``--images-from``: a manifest's
    ``images/1.png`` is looked up in each folder, then among the members of the tars, by full name
    and then by file name).
    """

    slot: str | None = LOCAL_SLOT

    def __init__(self, roots: LocalRoots, max_bytes: int, budget: ByteBudget | None = None) -> None:
        self.budget = budget  # a body read is held like a download: the pipeline gives it back after imaging
        self.folders = [os.path.abspath(r) for r in roots.folders]
        self.tars = list(roots.tars)
        self.max_bytes = max_bytes
        self._indexes: OrderedDict[str, dict[str, Entry]] = OrderedDict()  # recently used tars
        self._names: dict[str, Entry] | None = None  # every tar's members, for relative lookups
        self._lock = threading.Lock()  # reads run in threads; the indexes are built once, under it

    def admit(self, url: object) -> str:
        if url is None or (isinstance(url, str) and not url.strip()):
            raise UrlRefused(Reason.MISSING_URL, "no image file in this sample")
        if not isinstance(url, str):
            raise UrlRefused(Reason.INVALID_URL, f"image path is a {type(url).__name__}, not text")
        text = url.strip()
        tar = parse_tar_locator(text)
        if tar is not None:
            if tar[0] not in self.tars:
                raise UrlRefused(Reason.INVALID_URL, f"{tar[0]} is not one of the input tars")
            return text
        if "://" in text:
            raise UrlRefused(Reason.UNSUPPORTED_SCHEME, "local input reads image files, not URLs")
        if os.path.isabs(text):
            real = os.path.realpath(text)
            if not any(os.path.commonpath([real, os.path.realpath(f)]) == os.path.realpath(f) for f in self.folders):
                raise UrlRefused(Reason.INVALID_URL, f"{text} is outside the input folders")
            return text
        norm = os.path.normpath(text)
        if norm.startswith(".."):
            raise UrlRefused(Reason.INVALID_URL, f"{text} climbs out of --images-from")
        return norm

    def prefetch(self, url: str) -> None:
        """Nothing to resolve: files are read when their turn comes."""

    async def fetch(self, url: str) -> FetchOutcome:
        start = time.perf_counter()
        try:
            out = await asyncio.to_thread(self._fetch, url)
        except (OSError, tarfile.TarError) as exc:
            out = FetchOutcome(reason=Reason.TRUNCATED_BODY, detail=f"{url}: {exc}"[:300])
        out.fetch_ms = (time.perf_counter() - start) * 1000
        if self.budget is not None and out.body is not None:
            await self.budget.take(len(out.body))  # at most --max-body-bytes over: the file is already read
        return out

    def _fetch(self, url: str) -> FetchOutcome:
        tar = parse_tar_locator(url)
        if tar is not None:
            entry = self._index(tar[0]).get(tar[1])
            return self._read_member(entry, url)
        if os.path.isabs(url):
            return self._read_file(url)
        for folder in self.folders:
            path = os.path.join(folder, url)
            if os.path.isfile(path):
                return self._read_file(path)
        names = self._all_names()
        entry = names.get(url) or names.get(os.path.basename(url))
        return self._read_member(entry, url)

    def _too_big(self, size: int) -> FetchOutcome | None:
        if size > self.max_bytes:
            return FetchOutcome(reason=Reason.BODY_TOO_LARGE, detail=f"image is {size} bytes > {self.max_bytes}")
        return None

    def _read_file(self, path: str) -> FetchOutcome:
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            return FetchOutcome(reason=Reason.MISSING_FILE, detail=f"{path}: no such file")
        if (big := self._too_big(size)) is not None:
            return big
        with open(path, "rb") as fh:
            return FetchOutcome(body=fh.read(), final_url=path)

    def _read_member(self, entry: Entry | None, url: str) -> FetchOutcome:
        if entry is None:
            return FetchOutcome(reason=Reason.MISSING_FILE, detail=f"{url}: not found in the input tars/folders")
        tar, offset, size = entry
        if (big := self._too_big(size)) is not None:
            return big
        with open_binary(tar) as fh:
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            return FetchOutcome(reason=Reason.TRUNCATED_BODY, detail=f"{url}: tar ends inside the member")
        return FetchOutcome(body=data, final_url=url)

    def _index(self, tar: str) -> dict[str, Entry]:
        """Member name -> location in ``tar`` (one header pass per tar, a few tars kept)."""
        with self._lock:
            return self._index_locked(tar)

    def _index_locked(self, tar: str) -> dict[str, Entry]:
        if tar in self._indexes:
            self._indexes.move_to_end(tar)
            return self._indexes[tar]
        index: dict[str, Entry] = {}
        with open_binary(tar) as fh, tarfile.open(fileobj=fh, mode="r:") as tf:
            while (info := tf.next()) is not None:
                tf.members = []  # type: ignore[attr-defined]  # no growing member list
                if info.isfile():
                    index[info.name] = (tar, info.offset_data, info.size)
        self._indexes[tar] = index
        while len(self._indexes) > 4:
            self._indexes.popitem(last=False)
        return index

    def _all_names(self) -> dict[str, Entry]:
        with self._lock:
            if self._names is None:
                names: dict[str, Entry] = {}
                for tar in self.tars:
                    for name, entry in self._index_locked(tar).items():
                        names.setdefault(name, entry)
                        names.setdefault(os.path.basename(name), entry)
                self._names = names
            return self._names


def local_roots(sources: list[tuple[str, ReaderSpec]], images_from: str) -> LocalRoots | None:
    """Where LocalFetch may read, or None when the rows are URLs (HttpFetch).

    ``sources`` are the input paths with their readers. Mixing URL lists and local images in one run
    is refused: one run, one kind of fetch.
    """
    local = [(path, spec) for path, spec in sources if spec.local_images]
    if local and len(local) != len(sources):
        raise ConfigError("--input mixes URL lists and local images; run them separately")
    if local and images_from:
        raise ConfigError("--images-from resolves image paths of a manifest; tars/folders carry their own images")
    if local:
        return LocalRoots(
            folders=tuple(p for p, spec in local if spec.whole_folder),
            tars=tuple(p for p, spec in local if not spec.whole_folder),
        )
    return _images_from(images_from) if images_from else None


def _images_from(spec: str) -> LocalRoots:
    """``--images-from``: a folder (and the tars directly in it), a tar, or a glob of tars; local or URL."""
    path = spec.removeprefix("file://")
    if not is_url(spec) and os.path.isdir(path):
        tars = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".tar"))
        return LocalRoots(folders=(path,), tars=tuple(tars))
    return LocalRoots(tars=tuple(discover(spec, "webdataset")))
