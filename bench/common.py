"""Shared bench helpers: result tables printed as text and saved as JSON under bench/out/."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

OUT = Path(__file__).resolve().parent / "out"
F = TypeVar("F")


@dataclass
class Table:
    """One printed result table."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *values: Any) -> None:
        self.rows.append(list(values))

    def format(self) -> str:
        cells = [self.columns] + [[_fmt(v) for v in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        line = "  ".join("-" * w for w in widths)
        out = [self.title, line]
        out.append(_row(cells[0], widths))
        out.append(line)
        out += [_row(r, widths) for r in cells[1:]]
        out += [f"  {n}" for n in self.notes]
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "notes": self.notes}


def _row(cells: list[str], widths: list[int]) -> str:
    """First column left-aligned, the others right-aligned."""
    return "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(cells, widths, strict=True)))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def save(name: str, tables: list[Table]) -> Path:
    """Write ``bench/out/<name>.json`` with the given tables."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps([t.to_json() for t in tables], indent=1, default=str))
    os.replace(tmp, path)
    return path


def parse_flags(argv: list[str], cls: type[F], renames: dict[str, str] | None = None) -> F:
    """A section's ``--name[=value]`` flags into its Flags dataclass (``--field-name``, or ``renames``):
    bool fields are switches, list fields comma-separated, numbers parsed. Other sections' flags are ignored."""
    out = cls()
    hints = get_type_hints(cls)
    names = {"--" + name.replace("_", "-"): name for name in hints}
    names.update(renames or {})
    for arg in argv:
        key, _, value = arg.partition("=")
        name = names.get(key)
        if name is None:
            continue
        hint = hints[name]
        if hint is bool:
            setattr(out, name, True)
        elif hint == list[int]:
            setattr(out, name, [int(x) for x in value.split(",") if x])
        elif hint == list[str]:
            setattr(out, name, value.split(","))
        else:
            setattr(out, name, hint(value))
    return out
