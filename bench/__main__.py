"""``python -m bench [section ...]``: run benchmark sections and print their tables.

Each section is a module in this package with ``run(args: list[str]) -> list[Table]``.
"""

from __future__ import annotations

import importlib
import sys

from bench.common import save

# Sections in the order they run; each module owns its own workloads.
SECTIONS: list[str] = ["imaging", "politeness", "inputs", "peers", "dns", "scaling", "fleet"]


def main(argv: list[str]) -> int:
    wanted = [a for a in argv if not a.startswith("-")] or SECTIONS
    flags = [a for a in argv if a.startswith("-")]
    for name in wanted:
        module = importlib.import_module(f"bench.{name}")
        tables = module.run(flags)
        for t in tables:
            print(t.format(), end="\n\n", flush=True)
        print(f"(saved {save(name, tables)})\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
