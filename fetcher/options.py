"""Declarative command-line options.

Each configuration dataclass declares its flags next to its fields with :func:`opt`; the CLI, the
TOML file and the environment are all derived from those declarations, so a flag is defined once.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line that names the culprit."""


def opt(
    flag: str,
    default: Any,
    help: str,
    *,
    type: Callable[[str], Any] | None = None,
    choices: tuple[Any, ...] | None = None,
    aliases: tuple[str, ...] = (),
    metavar: str | None = None,
    required: bool = False,
) -> Any:
    """Declare a dataclass field that is also a command-line flag (and TOML key / env var).

    ``required`` only marks the flag in ``--help``; the options class's ``validate`` enforces it
    (so it may also come from the TOML file or the environment).
    """
    meta = {
        "flag": flag,
        "help": help,
        "type": type,
        "choices": choices,
        "aliases": aliases,
        "metavar": metavar,
        "required": required,
    }
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type_copy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def type_copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value)


def field_default(f: dataclasses.Field[Any]) -> Any:
    """The default value of a dataclass field (calling its factory if it has one)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    factory: Callable[[], Any] = f.default_factory  # type: ignore[assignment]
    return factory()


def flag_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` that carry a flag declaration."""
    return [f for f in dataclasses.fields(cls) if "flag" in f.metadata]


def _dest(cls: type, f: dataclasses.Field[Any]) -> str:
    return f"{cls.__name__}.{f.name}"


def dest(cls: type, name: str) -> str:
    """The argparse destination of field ``name`` of ``cls`` (to read or set it on a parsed namespace)."""
    return f"{cls.__name__}.{name}"


def parse_bool(text: str) -> bool:
    """Parse a boolean flag value as img2dataset and most tools accept it."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def split_csv(text: str) -> list[str]:
    """``a,b , c`` -> ``["a", "b", "c"]``; img2dataset's python-style ``'["a","b"]'`` too (``[]``: none)."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].replace('"', "").replace("'", "")
    return [part.strip() for part in text.split(",") if part.strip()]


class _ExtendAction(argparse.Action):
    """Repeatable list flag: the first use on the command line replaces the default, later uses add."""

    def __call__(
        self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        seen: set[str] = ns.__dict__.setdefault("_lists_given", set())
        current = list(getattr(ns, self.dest)) if self.dest in seen else []
        seen.add(self.dest)
        setattr(ns, self.dest, current + list(values))


def human_bytes(n: int) -> str:
    """``134217728`` -> ``128 MiB`` (exact binary units only; other values stay digits)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return str(n)


def _is_bytes(f: dataclasses.Field[Any]) -> bool:
    return "bytes" in f.metadata["flag"] and isinstance(field_default(f), int)


def _is_seconds(f: dataclasses.Field[Any]) -> bool:
    text = f.metadata["help"]
    return isinstance(field_default(f), float) and (
        "seconds" in f.metadata["flag"] or ("second" in text and "per second" not in text)
    )


def show_default(f: dataclasses.Field[Any]) -> str | None:
    """The default as ``--help`` shows it: human units, lists comma-joined; None when there is none."""
    default = field_default(f)
    if isinstance(default, bool):
        return "true" if default else "false"
    if default in (None, "", []):
        return None
    if isinstance(default, list):
        return ",".join(map(str, default))
    if _is_bytes(f):
        return human_bytes(default)
    if isinstance(default, float) and default == int(default):
        return f"{int(default)}s" if _is_seconds(f) else str(int(default))
    if isinstance(default, float) and _is_seconds(f):
        return f"{default:g}s"
    return str(default)


def _metavar(f: dataclasses.Field[Any]) -> str:
    if f.metadata["metavar"] is not None:
        return str(f.metadata["metavar"])
    if _is_bytes(f):
        return "BYTES"
    if _is_seconds(f):
        return "SECONDS"
    default = field_default(f)
    if isinstance(default, int | float):
        return "N"
    name = str(f.metadata["flag"]).lstrip("-")
    return _NOUNS.get(name.rsplit("-", 1)[-1], name.replace("-", "_").upper())


# Metavars by the flag's last word, so `--url-col COLUMN` reads as what to type.
_NOUNS = {"col": "COLUMN", "columns": "COLUMNS", "dir": "DIR", "format": "FORMAT", "limits": "FILE", "env": "VAR"}


def add_arguments(parser: argparse.ArgumentParser, cls: type, title: str, description: str | None = None) -> None:
    """Add every flag declared on ``cls`` to ``parser`` under a help group named ``title``."""
    group = parser.add_argument_group(title, description)
    for f in flag_fields(cls):
        meta = f.metadata
        names = [meta["flag"], *meta["aliases"]]
        default = field_default(f)
        help_text = meta["help"].replace("%", "%%").replace("%%%%", "%%")
        shown = show_default(f)
        if meta.get("required"):
            help_text += " (required)"
        elif shown is not None:
            help_text += f" (default: {shown.replace('%', '%%')})"
        kwargs: dict[str, Any] = {"dest": _dest(cls, f), "default": default, "help": help_text}
        if isinstance(default, bool):
            # `--flag` alone means true; `--flag=false` is accepted for img2dataset-style scripts.
            kwargs.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
        elif isinstance(default, list):
            # Repeatable, and each value may itself be a comma-separated list.
            kwargs.update(action=_ExtendAction, type=split_csv, metavar=_metavar(f))
        else:
            if meta["type"] is not None:
                kwargs["type"] = meta["type"]
            elif isinstance(default, int):
                kwargs["type"] = int
            elif isinstance(default, float):
                kwargs["type"] = float
            if meta["choices"] is not None:
                kwargs["choices"] = meta["choices"]
                kwargs["metavar"] = "{" + ",".join(map(str, meta["choices"])) + "}"
            else:
                kwargs["metavar"] = _metavar(f)
        group.add_argument(*names, **kwargs)


def apply_defaults(
    parser: argparse.ArgumentParser, classes: list[type], values: Mapping[str, Any], origin: str
) -> None:
    """Override parser defaults from a TOML table or environment (keys are flag names without dashes)."""
    known: dict[str, tuple[type, dataclasses.Field[Any]]] = {}
    for cls in classes:
        for f in flag_fields(cls):
            for name in (f.metadata["flag"], *f.metadata["aliases"]):
                known[name.lstrip("-").replace("-", "_")] = (cls, f)
    for key, value in values.items():
        norm = key.replace("-", "_")
        if norm not in known:
            raise ConfigError(f"{origin}: unknown option {key!r}")
        cls, f = known[norm]
        conv = _convert(cls, f, value, origin, key)
        parser.set_defaults(**{_dest(cls, f): conv})


def _convert(cls: type, f: dataclasses.Field[Any], value: Any, origin: str, key: str) -> Any:
    default = field_default(f)
    if isinstance(default, list) and isinstance(value, str):
        return split_csv(value)
    if not isinstance(value, str):
        return value
    try:
        if isinstance(default, bool):
            return parse_bool(value)
        conv = f.metadata["type"] or (type(default) if isinstance(default, int | float) else None)
        return conv(value) if conv else value
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{origin}: bad value for {key}: {exc}") from None


def env_values(classes: list[type], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Options given as ``FETCHER_<FLAG_NAME>`` environment variables."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for cls in classes:
        for f in flag_fields(cls):
            name = f.metadata["flag"].lstrip("-").replace("-", "_")
            var = "FETCHER_" + name.upper()
            if var in environ:
                out[name] = environ[var]
    return out


# FETCHER_* variables the deploy files use for themselves, not flags (systemd unit, compose file).
# FETCHER_OWNER_PID: set by fetcher itself for its imaging helpers (fetcher/deathsig.py), inherited by children.
NON_FLAG_ENV = frozenset({"FETCHER_SHARDS", "FETCHER_INPUT_DIR", "FETCHER_OUTPUT_DIR", "FETCHER_OWNER_PID"})


def unknown_env(classes: list[type], environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per ``FETCHER_*`` variable that names no flag (a typo is otherwise silently ignored)."""
    environ = os.environ if environ is None else environ
    known = {
        "FETCHER_" + f.metadata["flag"].lstrip("-").replace("-", "_").upper() for c in classes for f in flag_fields(c)
    }
    out = []
    for var in sorted(environ):
        if not var.startswith("FETCHER_") or var in known or var in NON_FLAG_ENV:
            continue
        close = difflib.get_close_matches(var, sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]} (--{close[0][8:].lower().replace('_', '-')})?" if close else ""
        out.append(f"environment variable {var} matches no option and is ignored{hint}")
    return out


def build(cls: type[T], ns: argparse.Namespace) -> T:
    """Instantiate ``cls`` from the parsed namespace."""
    kwargs = {f.name: getattr(ns, _dest(cls, f)) for f in flag_fields(cls)}
    return cls(**kwargs)
