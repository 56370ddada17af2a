"""What this run's tars are made from, checked against the output's run record before any traffic
(see :mod:`storage.manifest`): a rerun that would make different tars stops with one line."""

from __future__ import annotations

import logging
import os
from typing import Any

from fetcher.config import Config
from fetcher.inputs import is_url
from fetcher.lifecycle import RunAborted
from fetcher.options import ConfigError
from fetcher.reader import InputFile
from storage.manifest import ADOPTED, RunMismatch, RunRecord, claim
from storage.output import Output

logger = logging.getLogger(__name__)

# Options that change what a tar holds (its rows, their keys, the stored bytes and columns). Not
# recorded: network, politeness, durability and budget options (a rerun may well change timeouts),
# and --shard (tar k is the same whichever worker writes it).
_SHAPING = {
    "run": ("samples_per_tar",),
    "input": ("url_col", "caption_col", "fallback_caption_col", "save_columns", "key_col", "filter", "input_format"),
    "output": ("output_format",),
    "imaging": (
        "image_size", "resize_mode", "resize_only_if_bigger", "encode_format", "encode_quality", "skip_reencode",
        "background", "allowed_formats", "max_image_pixels", "min_image_size", "max_image_area", "max_aspect_ratio",
        "min_aspect_ratio", "hash", "verify_hash",
    ),
}  # fmt: skip


def run_record(cfg: Config, files: list[InputFile]) -> RunRecord:
    """The record of this run: ordered input files with row counts (and sizes when local), shaping options."""
    options: dict[str, Any] = {}
    for part, names in _SHAPING.items():
        section = getattr(cfg, part)
        options.update({name: getattr(section, name) for name in names})
    inputs = [{"name": os.path.basename(f.path.rstrip("/")), "rows": f.num_rows, "bytes": _size(f.path)} for f in files]
    return RunRecord(inputs=inputs, options=options, extra={"input": cfg.run.input})


def _size(path: str) -> int | None:
    if is_url(path):
        return None  # a HEAD per file on an object store buys little over the row count
    try:
        return os.path.getsize(path.removeprefix("file://"))
    except OSError:
        return None


def claim_output(cfg: Config, files: list[InputFile], output: Output) -> None:
    """Refuse (ConfigError, exit 2) a run whose tars would differ from the output's; record a new one."""
    try:
        done = claim(output.backend, run_record(cfg, files), new_run=cfg.output.new_run)
    except RunMismatch as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise RunAborted(f"I/O error writing the run record in {cfg.run.output}: {exc}") from None
    logger.log(logging.WARNING if done == ADOPTED else logging.INFO, "%s: %s", cfg.run.output, done)
