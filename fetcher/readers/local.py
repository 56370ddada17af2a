"""What the readers of local images (webdataset tars, folders) share: which files are images, how a
sample's sidecars (``.json`` fields, ``.txt`` caption) become columns, and the locator of its image.

A row's ``--url-col`` column holds the image's locator: ``tar://MEMBER::TAR`` for a tar member (the
fsspec chained-URL spelling), the file's path for a folder. Only fetcher.fetchers.LocalFetch reads it.
"""

from __future__ import annotations

import json
import os
from typing import Any

IMAGE_EXTS = frozenset(
    {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "avif", "heic", "heif", "jxl", "ppm", "jp2"}
)
KEY_COLUMN = "__key__"  # the sample's own key (file stem), for --key-col __key__
TEXT_COLUMN = "txt"  # the .txt sidecar's text; also "caption" unless the .json has one


def is_image(ext: str) -> bool:
    """True for an image file extension (``png``, ``0.jpg``…; case ignored)."""
    return ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTS


def tar_locator(tar: str, member: str) -> str:
    """The locator of ``member`` inside ``tar``."""
    return f"tar://{member}::{tar}"


def parse_tar_locator(locator: str) -> tuple[str, str] | None:
    """``(tar, member)`` of a tar locator, None for anything else."""
    if not locator.startswith("tar://"):
        return None
    member, sep, tar = locator.removeprefix("tar://").partition("::")
    return (tar, member) if sep and member and tar else None


def split_member(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name, the rest the extension."""
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def parse_sidecar(data: bytes | None) -> dict[str, Any]:
    """A ``.json`` sidecar's fields ({} when missing or not a JSON object)."""
    if not data:
        return {}
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def sample_record(
    url_col: str, locator: str | None, key: str, meta: dict[str, Any], text: bytes | None
) -> dict[str, Any]:
    """The columns of one sample: its sidecar fields, ``__key__``, ``txt`` and the image locator."""
    rec = dict(meta)
    if text is not None:
        caption = text.decode("utf-8", "replace").strip()
        rec[TEXT_COLUMN] = caption
        rec.setdefault("caption", caption)
    rec[KEY_COLUMN] = key
    rec[url_col] = locator  # the image comes from here, whatever a sidecar field of that name says
    return rec


def column_names(url_col: str, first_meta: dict[str, Any], has_text: bool) -> tuple[str, ...]:
    """Column names a local source offers (the first sample's sidecar fields stand for all)."""
    names = [url_col, KEY_COLUMN, *first_meta]
    if has_text:
        names += [TEXT_COLUMN, "caption"]
    return tuple(dict.fromkeys(names))


def needs_sidecars(columns: list[str], url_col: str) -> bool:
    """Whether reading ``columns`` needs the sidecar files at all (keys and locators do not)."""
    return any(c not in (url_col, KEY_COLUMN) for c in columns)
