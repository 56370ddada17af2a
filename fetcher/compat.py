"""img2dataset 1.47 flags that have no fetcher option of their own: accepted so an img2dataset command
runs verbatim, then mapped onto fetcher's options or explained in one line (README: "img2dataset flags").

img2dataset flags that fetcher implements directly are aliases on the owning stage's options
(``--thread_count`` on the scheduler, ``--upscale_interpolation`` on imaging, ...).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from fetcher.imaging import ImageOptions
from fetcher.metrics import MonitorOptions
from fetcher.options import ConfigError, dest, opt, split_csv

log = logging.getLogger(__name__)

DISTRIBUTORS = ("multiprocessing", "pyspark", "ray")
INCREMENTAL_MODES = ("incremental", "overwrite", "extend")


@dataclass(frozen=True)
class Img2datasetOptions:
    """img2dataset flags fetcher maps onto its own options (or explains why it does not need them)."""

    enable_wandb: bool = opt(
        "--enable_wandb", False, "img2dataset: log to Weights & Biases; fetcher serves /metrics (Prometheus) instead"
    )
    wandb_project: str = opt("--wandb_project", "img2dataset", "img2dataset: wandb project name (see --enable_wandb)")
    extract_exif: bool = opt(
        "--extract_exif", False, "img2dataset: copy EXIF into the .json; fetcher applies the orientation, stores none"
    )
    bbox_col: str = opt("--bbox_col", "", "img2dataset: column of boxes to blur; not supported (refused)")
    oom_shard_count: int = opt("--oom_shard_count", 5, "img2dataset: digits of tar names; fetcher always uses 5")
    max_shard_retry: int = opt(
        "--max_shard_retry", 1, "img2dataset: reruns of failed tars; fetcher resumes on rerun (--retry-failed)"
    )
    disable_all_reencoding: bool = opt(
        "--disable_all_reencoding", False, "img2dataset: keep original bytes = --resize-mode no --skip-reencode"
    )
    incremental_mode: str = opt(
        "--incremental_mode",
        "incremental",
        "img2dataset: incremental (fetcher's only mode: finished tars are skipped); overwrite/extend are refused",
        choices=INCREMENTAL_MODES,
    )
    distributor: str = opt(
        "--distributor",
        "multiprocessing",
        "img2dataset: multiprocessing (this box); for many boxes run one fetcher per box with --shard i/N",
        choices=DISTRIBUTORS,
    )
    subjob_size: int = opt("--subjob_size", 1000, "img2dataset: pyspark batching; no effect in fetcher")
    verify_hash: str = opt(
        "--verify_hash",
        "",
        "img2dataset: '[COLUMN, ALGORITHM]' = --verify-hash COLUMN --hash ALGORITHM",
        metavar="LIST",
    )

    def validate(self) -> None:
        if self.bbox_col:
            raise ConfigError(
                "--bbox_col: fetcher does not blur boxes; drop the flag (keep the column with --save-columns) "
                "or blur with img2dataset"
            )
        if self.incremental_mode != "incremental":
            raise ConfigError(
                f"--incremental_mode {self.incremental_mode}: fetcher always resumes an output folder; "
                "for a fresh download give a new --output (or delete the old one yourself)"
            )
        if self.distributor != "multiprocessing":
            raise ConfigError(
                f"--distributor {self.distributor}: fetcher has no cluster driver; run one fetcher per machine "
                "with --shard i/N (README: 'Many machines')"
            )


def apply(ns: argparse.Namespace) -> None:
    """Map the img2dataset flags in a parsed namespace onto fetcher's options; log what is not honoured."""

    def get(name: str) -> object:
        return getattr(ns, dest(Img2datasetOptions, name))

    if get("enable_wandb"):
        address = getattr(ns, dest(MonitorOptions, "metrics_address"))
        where = f"http://{address}/metrics" if address else "a --metrics-address"
        log.warning(
            "--enable_wandb: fetcher does not log to wandb; its counters are on %s (Prometheus/Grafana: deploy/)", where
        )
    if get("extract_exif"):
        log.warning("--extract_exif: EXIF is not copied into the .json (the orientation is applied to the pixels)")
    if get("oom_shard_count") != 5:
        log.warning("--oom_shard_count: tar names always have 5 digits in fetcher (00000.tar)")
    if get("disable_all_reencoding"):
        setattr(ns, dest(ImageOptions, "resize_mode"), "no")
        setattr(ns, dest(ImageOptions, "skip_reencode"), True)
    verify = str(get("verify_hash"))
    if verify:
        parts = split_csv(verify)
        if len(parts) != 2:
            raise ConfigError(
                f"--verify_hash {verify!r}: expected '[COLUMN, ALGORITHM]', e.g. '[\"sha256\",\"sha256\"]'"
            )
        setattr(ns, dest(ImageOptions, "verify_hash"), parts[0])
        setattr(ns, dest(ImageOptions, "hash"), parts[1])
