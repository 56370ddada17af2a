"""Separate venvs for the peers and naive baselines, e.g. one with *stock* Pillow (+ requests, pyarrow).

The main venv must keep Pillow-SIMD, so baselines that stand for "what users do today" run here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

STOCK_VENV = Path(__file__).resolve().parent / ".venv-stock"
STOCK_PACKAGES = ["pillow", "requests", "pyarrow"]


def venv_python(venv: Path, packages: list[str]) -> str:
    """Path of ``venv``'s python, creating it with ``packages`` on first use (or when they change)."""
    py = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists() or stamp.read_text() != " ".join(packages):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *packages], check=True)
        stamp.write_text(" ".join(packages))
    return os.fspath(py)


def stock_python() -> str:
    """Path of the stock-Pillow venv's python, creating the venv on first use."""
    return venv_python(STOCK_VENV, STOCK_PACKAGES)
