"""A separate venv with *stock* Pillow (+ requests, pyarrow) for the naive baselines.

The main venv must keep Pillow-SIMD, so baselines that stand for "what users do today" run here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

STOCK_VENV = Path(__file__).resolve().parent / ".venv-stock"
STOCK_PACKAGES = ["pillow", "requests", "pyarrow"]


def stock_python() -> str:
    """Path of the stock-Pillow venv's python, creating the venv on first use."""
    py = STOCK_VENV / "bin" / "python"
    stamp = STOCK_VENV / ".installed"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(STOCK_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *STOCK_PACKAGES], check=True)
        stamp.write_text(" ".join(STOCK_PACKAGES))
    return os.fspath(py)
