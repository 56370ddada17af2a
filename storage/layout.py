"""Names of the files that make up one output tar, and the completion rule."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ShardFiles:
    """Paths of tar ``index``: the tar, its results parquet, and the stats marker written last."""

    root: str
    index: int

    @property
    def stem(self) -> str:
        return os.path.join(self.root, f"{self.index:05d}")

    @property
    def tar(self) -> str:
        return self.stem + ".tar"

    @property
    def parquet(self) -> str:
        return self.stem + ".parquet"

    @property
    def stats(self) -> str:
        return self.stem + "_stats.json"

    @property
    def journal(self) -> str:
        """Checkpoint of the tar in progress: its finished rows and temp tar lengths (storage/journal.py)."""
        return self.stem + ".journal"

    @property
    def lease(self) -> str:
        """The flock'd claim of the process writing this tar."""
        return self.stem + ".lease"

    @property
    def folder(self) -> str:
        """``--output-format files``: the per-tar folder of images and captions."""
        return self.stem

    @property
    def metadata_piece(self) -> str:
        """``--output-format files``: this tar's rows of the dataset-level ``metadata.parquet``."""
        return self.stem + "_metadata.parquet"

    @property
    def images_parquet(self) -> str:
        """``--output-format parquet``: the samples with their image bytes."""
        return self.stem + "_images.parquet"

    @property
    def tfrecord(self) -> str:
        """``--output-format tfrecord``: the samples as tf.train.Example records."""
        return self.stem + ".tfrecord"

    def is_complete(self) -> bool:
        """A tar counts as done only when its stats marker exists (written after tar and parquet)."""
        return os.path.exists(self.stats)
