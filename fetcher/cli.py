"""Command-line entry point: ``python -m fetcher --input PATH --output DIR [options]``.

``python -m fetcher metadata OUTPUT`` rebuilds an output's dataset-level indexes (wids-index.json,
metadata.parquet) from its completed tars.
"""

from __future__ import annotations

import json
import sys

from fetcher.config import load_config
from fetcher.lifecycle import RunAborted
from fetcher.options import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Run fetcher; returns the process exit code (2 for bad flags or input)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["metadata"]:
        return _metadata(argv[1:])
    try:
        cfg = load_config(argv)
        if cfg.output.print_simpletuner_config:
            from storage.indexes import simpletuner_config

            if not cfg.output.format.image_folder or "://" in cfg.run.output:
                raise ConfigError("--print-simpletuner-config needs --output-format files and a local --output")
            print(json.dumps(simpletuner_config(cfg.run.output), indent=4))
            return 0
        from fetcher.box import run_box

        return run_box(cfg)
    except ConfigError as exc:
        print(f"fetcher: error: {exc}", file=sys.stderr)
        return 2
    except RunAborted as exc:
        print(f"fetcher: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # Last line of defence: whatever file operation failed, one line naming it, never a traceback.
        print(f"fetcher: error: I/O error: {exc}", file=sys.stderr)
        return 75
    except KeyboardInterrupt:
        print("fetcher: interrupted; incomplete tars will be redone on the next run", file=sys.stderr)
        return 130
    return 0


def _metadata(args: list[str]) -> int:
    usage = "usage: python -m fetcher metadata OUTPUT"
    if args in (["-h"], ["--help"]):
        print(f"{usage}\n\nrebuild OUTPUT's wids-index.json and metadata.parquet from its completed tars")
        return 0
    if len(args) != 1 or args[0].startswith("-"):
        print(usage, file=sys.stderr)
        return 2
    from storage.output import rebuild

    try:
        built = rebuild(args[0])
    except (OSError, ValueError) as exc:
        print(f"fetcher: error: metadata {args[0]}: {exc}", file=sys.stderr)
        return 2
    if not built:
        print(f"fetcher: error: metadata {args[0]}: no completed tars found", file=sys.stderr)
        return 2
    for name, count in built.items():
        print(f"{name}: {count} completed tars")
    return 0
