"""img2dataset in its own venv (it pulls OpenCV, albumentations and stock Pillow: never into .venv)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.stockenv import venv_python

IMG2DATASET_VENV = Path(__file__).resolve().parent / ".venv-img2dataset"
IMG2DATASET_PACKAGES = ["img2dataset==1.47.0"]


def img2dataset_bin() -> str:
    """Path of the ``img2dataset`` command, installing it into bench/.venv-img2dataset on first use."""
    py = Path(venv_python(IMG2DATASET_VENV, IMG2DATASET_PACKAGES))
    return os.fspath(py.parent / "img2dataset")
