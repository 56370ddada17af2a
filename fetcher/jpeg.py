"""JPEG structure and strict decoding: what a JPEG will cost before any pixel, and decodes that
refuse damaged data instead of painting it grey.

Why not Pillow alone: libjpeg reports a header that claims more rows than the data holds
("premature end of data segment") and corrupt entropy data ("bad Huffman code", "extraneous
bytes") only as *warnings*, which Pillow drops: the image comes back grey-padded or garbled as a
success. libjpeg-turbo through simplejpeg with ``strict=True`` turns those warnings into errors.

Why a scan walk: a progressive JPEG may hold thousands of scans, each costing a pass over every
block of its components, so a 1 MB file can cost 20 s of CPU while passing every size check. The
walk reads only marker segments (entropy data is skipped with one regex search per scan), so its
cost is bounded by the file size and it runs before any decode.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, field

from PIL import Image

# libjpeg-turbo recommends a scan limit for untrusted input (its TurboJPEG scan-limit parameter);
# real encoders write at most a few dozen scans (libjpeg: 10, mozjpeg: ~ 10-20).
MAX_SCANS = 500
# Block-scans (one 8x8 block visited by one scan) per CPU second on this kind of core, measured
# on scan bombs (fetcher.farm.bombs) with Pillow and simplejpeg: 23-31 M/s; lower keeps estimates high.
BLOCK_SCANS_PER_SECOND = 20e6

_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# After a scan's header, the entropy data ends at the first marker that is not a stuffed 0xFF00,
# a restart marker (RST0-7) or fill bytes.
_NEXT_MARKER = re.compile(rb"\xff+([\x01-\xcf\xd8-\xfe])")


class JpegDamaged(ValueError):
    """The JPEG's data is truncated or corrupt; ``truncated`` tells which."""

    def __init__(self, detail: str, truncated: bool) -> None:
        super().__init__(detail)
        self.truncated = truncated


@dataclass
class ScanReport:
    """What the marker walk found: scans, and the blocks all scans together will visit."""

    scans: int = 0
    progressive: bool = False
    block_scans: int = 0
    complete: bool = False  # the walk reached EOI
    blocks: dict[int, int] = field(default_factory=dict)  # component id -> 8x8 blocks in the frame

    @property
    def estimated_cpu_s(self) -> float:
        """A pessimistic estimate of the entropy-decoding CPU time."""
        return self.block_scans / BLOCK_SCANS_PER_SECOND


def _frame_blocks(body: bytes) -> dict[int, int]:
    if len(body) < 6:
        return {}
    _precision, height, width, count = struct.unpack_from(">BHHB", body)
    comps = [struct.unpack_from(">BBB", body, 6 + 3 * i) for i in range(count) if 6 + 3 * i + 3 <= len(body)]
    if not comps:
        return {}
    hmax = max(c[1] >> 4 for c in comps) or 1
    vmax = max(c[1] & 15 for c in comps) or 1
    blocks: dict[int, int] = {}
    for cid, sampling, _table in comps:
        w = math.ceil(width * (sampling >> 4) / hmax)
        h = math.ceil(height * (sampling & 15) / vmax)
        blocks[cid] = math.ceil(w / 8) * math.ceil(h / 8)
    return blocks


def walk_scans(data: bytes, max_scans: int = MAX_SCANS, headers_only: bool = False) -> ScanReport:
    """Count the scans of ``data`` (a JPEG) and the blocks they visit, stopping past ``max_scans``.

    ``headers_only`` stops at the first scan: enough for the frame's size in blocks.
    """
    rep = ScanReport()
    pos = 2 if data[:2] == b"\xff\xd8" else len(data)
    while pos + 2 <= len(data):
        if data[pos] != 0xFF:
            m = _NEXT_MARKER.search(data, pos)
            if m is None:
                return rep
            pos = m.start(1) - 1
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xD9:
            rep.complete = True
            return rep
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > len(data):
            return rep
        (length,) = struct.unpack_from(">H", data, pos + 2)
        body = data[pos + 4 : pos + 2 + length]
        if marker in _SOF:
            rep.progressive = marker in _PROGRESSIVE_SOF
            rep.blocks = _frame_blocks(body)
        pos += 2 + length
        if marker == 0xDA:
            rep.scans += 1
            ids = [body[1 + 2 * i] for i in range(body[0]) if 2 + 2 * i <= len(body)] if body else []
            rep.block_scans += sum(rep.blocks.get(cid, 0) for cid in ids)
            if rep.scans > max_scans or headers_only:
                return rep
            m = _NEXT_MARKER.search(data, pos)
            if m is None:
                return rep
            pos = m.start(1) - 1
    return rep


def too_complex(data: bytes, cpu_budget: float, max_scans: int = MAX_SCANS) -> str | None:
    """Why decoding ``data`` would cost too much (over ``max_scans`` scans, or an estimated CPU
    time over ``cpu_budget`` seconds; 0 = no estimate check), or None. Reads no entropy data
    unless the file may hold many scans.
    """
    head = walk_scans(data, max_scans, headers_only=True)
    # Fast upper bound first (C-speed count; SOS bytes can also sit in metadata, never in entropy data).
    marks = data.count(b"\xff\xda")
    upper = marks * sum(head.blocks.values()) / BLOCK_SCANS_PER_SECOND
    if marks <= max_scans and (not cpu_budget or upper <= cpu_budget):
        return None
    rep = walk_scans(data, max_scans)
    if rep.scans > max_scans:
        return f"JPEG with over {max_scans} scans"
    if cpu_budget and rep.estimated_cpu_s > cpu_budget:
        return (
            f"JPEG: {rep.scans} scans over {rep.block_scans} blocks, "
            f"~{rep.estimated_cpu_s:.1f}s CPU estimated (--image-cpu-budget {cpu_budget:g})"
        )
    return None


# libjpeg warnings that mean missing or garbled pixels. Others are harmless for the pixels ("unknown
# JFIF revision", "bad ICC marker", a few padding bytes before EOI that some encoders write): for those
# the image is decoded again leniently rather than lost.
_DAMAGE = re.compile(
    r"^(Premature end of JPEG file"
    r"|Corrupt JPEG data: (premature end of data segment|bad Huffman code|found marker|bad arithmetic code)"
    r"|Inconsistent progression sequence|Invalid progressive parameters)",
    re.IGNORECASE,
)
_EXTRANEOUS = re.compile(r"Corrupt JPEG data: (\d+) extraneous bytes before marker 0x(\w\w)", re.IGNORECASE)
_PADDING_BYTES = 64  # junk before EOI up to this is padding; a desynced decode leaves far more


def _damaged(text: str) -> bool:
    if _DAMAGE.match(text):
        return True
    m = _EXTRANEOUS.match(text)
    return m is not None and (m.group(2).lower() != "d9" or int(m.group(1)) > _PADDING_BYTES)


# Pillow mode of the JPEG -> (mode of the decoded image, simplejpeg colorspace, Pillow raw mode)
_MODES = {"L": ("L", "GRAY", "L"), "RGB": ("RGBX", "RGBX", "RGBX"), "CMYK": ("CMYK", "CMYK", "CMYK;I")}


def decode(data: bytes, mode: str, min_size: tuple[int, int] = (0, 0), scale: int = 1) -> Image.Image:
    """Decode ``data`` strictly, DCT-scaled by ``1/scale``, as Pillow's image ``mode`` would be
    ("L", "CMYK"), except RGB which comes as "RGBX".

    RGBX is Pillow's own layout of RGB pixels, so the decoded buffer is mapped, not copied (the
    caller drops the pad byte after resizing). CMYK (and YCCK, which libjpeg turns into CMYK) is
    read with Adobe's inverted polarity, as Pillow does. ``scale`` is a power of two (as Pillow's ``draft``
    picks): libjpeg-turbo's other M/8 factors have no SIMD code. Raises JpegDamaged on truncated or
    corrupt data (ValueError when it is no JPEG at all).
    """
    import simplejpeg

    w, h = min_size
    out, colorspace, rawmode = _MODES.get(mode, _MODES["RGB"])
    args = {
        "colorspace": colorspace,
        "min_width": math.ceil(w / scale) if w else 0,
        "min_height": math.ceil(h / scale) if h else 0,
    }
    try:
        arr = simplejpeg.decode_jpeg(data, strict=True, **args)
    except ValueError as exc:
        text = str(exc)
        if _damaged(text):
            # "Premature end of JPEG file": the file stops early. "Corrupt JPEG data: ..." (including
            # a "premature end of data segment" when a header claims more rows than the data holds)
            # is damage, not truncation.
            raise JpegDamaged(text, truncated=text.lower().startswith("premature end of jpeg file")) from None
        arr = simplejpeg.decode_jpeg(data, strict=False, **args)
    height, width = arr.shape[:2]
    return Image.frombuffer(out, (width, height), arr, "raw", rawmode, 0, 1)
