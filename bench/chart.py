"""PNG charts drawn with Pillow's ImageDraw (matplotlib would pull stock Pillow over Pillow-SIMD)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, ImageDraw, ImageFont

COLOURS = {
    "fetcher": (31, 119, 180),
    "img2dataset": (255, 127, 14),
    "baseline": (127, 127, 127),
    "imaging-limit": (44, 160, 44),
    "fetcher-processes": (148, 103, 189),
}
_PANEL_W, _PANEL_H, _PAD = 330, 260, 40


class RunLike(Protocol):
    workload: str
    runner: str
    timeline: list[dict[str, Any]]

    @property
    def rate(self) -> float: ...


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType's bundled default font
        return ImageFont.load_default()


def _bars(d: ImageDraw.ImageDraw, x0: int, y0: int, title: str, items: Sequence[tuple[str, float]]) -> None:
    """One panel: a bar per runner, its own scale, value on top."""
    d.text((x0 + 8, y0 + 4), title, fill="black", font=_font(15))
    top = max((v for _, v in items), default=0.0) or 1.0
    base, height = y0 + _PANEL_H - 40, _PANEL_H - 90
    width = (_PANEL_W - 30) // max(1, len(items))
    for i, (name, value) in enumerate(items):
        left = x0 + 15 + i * width
        h = int(height * value / top)
        d.rectangle((left + 6, base - h, left + width - 6, base), fill=COLOURS.get(name, (90, 90, 90)))
        d.text((left + width // 2, base - h - 4), f"{value:.1f}", fill="black", font=_font(12), anchor="md")
        d.text((left + width // 2, base + 6), name, fill="black", font=_font(11), anchor="ma")
    d.line((x0 + 12, base, x0 + _PANEL_W - 12, base), fill="black")


def _lines(d: ImageDraw.ImageDraw, x0: int, y0: int, title: str, runs: Sequence[RunLike]) -> None:
    """RSS over (normalised) run time, one line per runner."""
    d.text((x0 + 8, y0 + 4), title, fill="black", font=_font(15))
    base, height, left, width = y0 + _PANEL_H - 30, _PANEL_H - 70, x0 + 45, _PANEL_W - 60
    top = max((s["rss_mb"] for r in runs for s in r.timeline), default=1.0) or 1.0
    d.line((left, base, left + width, base), fill="black")
    d.line((left, base, left, base - height), fill="black")
    d.text((left - 4, base - height), f"{top:.0f}", fill="black", font=_font(11), anchor="rm")
    d.text((left - 4, base), "0 MB", fill="black", font=_font(11), anchor="rm")
    d.text((left + width, base + 4), "run time ->", fill="black", font=_font(11), anchor="ra")
    for k, r in enumerate(runs):
        tl = r.timeline
        if len(tl) < 2:
            continue
        end = tl[-1]["t"] or 1.0
        pts = [(left + width * s["t"] / end, base - height * s["rss_mb"] / top) for s in tl]
        colour = COLOURS.get(r.runner, (90, 90, 90))
        d.line(pts, fill=colour, width=2)
        d.text((left + 8, y0 + 26 + 14 * k), r.runner, fill=colour, font=_font(12))


def draw(results: Sequence[RunLike], path: Path) -> Path:
    """One panel of images/s per workload (own scale each) and, when present, the RSS-over-time panel."""
    workloads = list(dict.fromkeys(r.workload for r in results))
    rss_runs = [r for r in results if r.workload == "rss-50k"]
    panels = len(workloads) + (1 if rss_runs else 0)
    cols = min(3, panels)
    rows = -(-panels // cols)
    img = Image.new("RGB", (cols * _PANEL_W + _PAD, rows * _PANEL_H + _PAD + 20), "white")
    d = ImageDraw.Draw(img)
    d.text((_PAD // 2, 8), "images/s per workload (higher is better)", fill="black", font=_font(16))
    for i, wl in enumerate(workloads):
        x0, y0 = _PAD // 2 + (i % cols) * _PANEL_W, 30 + (i // cols) * _PANEL_H
        _bars(d, x0, y0, wl, [(r.runner, r.rate) for r in results if r.workload == wl])
    if rss_runs:
        i = len(workloads)
        x0, y0 = _PAD // 2 + (i % cols) * _PANEL_W, 30 + (i // cols) * _PANEL_H
        _lines(d, x0, y0, "rss-50k: tree RSS over time (MB)", rss_runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    os.replace(tmp, path)
    return path
