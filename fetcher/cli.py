"""Command-line entry point: ``python -m fetcher --input PATH --output DIR [options]``."""

from __future__ import annotations

import sys

from fetcher.config import load_config
from fetcher.options import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Run fetcher; returns the process exit code (2 for bad flags or input)."""
    try:
        cfg = load_config(argv)
        from fetcher.pipeline import run

        run(cfg)
    except ConfigError as exc:
        print(f"fetcher: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fetcher: interrupted; incomplete tars will be redone on the next run", file=sys.stderr)
        return 130
    return 0
