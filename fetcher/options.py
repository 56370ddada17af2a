"""Declarative command-line options.

Each configuration dataclass declares its flags next to its fields with :func:`opt`; the CLI, the
TOML file and the environment are all derived from those declarations, so a flag is defined once.
"""

from __future__ import annotations

import argparse
import dataclasses
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
) -> Any:
    """Declare a dataclass field that is also a command-line flag (and TOML key / env var)."""
    meta = {
        "flag": flag,
        "help": help,
        "type": type,
        "choices": choices,
        "aliases": aliases,
        "metavar": metavar,
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


def parse_bool(text: str) -> bool:
    """Parse a boolean flag value as img2dataset and most tools accept it."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def split_csv(text: str) -> list[str]:
    """``a,b , c`` -> ``["a", "b", "c"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """Add every flag declared on ``cls`` to ``parser`` under a help group named ``title``."""
    group = parser.add_argument_group(title)
    for f in flag_fields(cls):
        meta = f.metadata
        names = [meta["flag"], *meta["aliases"]]
        default = field_default(f)
        help_text = meta["help"]
        if default not in (None, "", [], False):
            help_text += f" (default: {','.join(map(str, default)) if isinstance(default, list) else default})"
        kwargs: dict[str, Any] = {"dest": _dest(cls, f), "default": default, "help": help_text}
        if isinstance(default, bool):
            # `--flag` alone means true; `--flag=false` is accepted for img2dataset-style scripts.
            kwargs.update(nargs="?", const=True, type=parse_bool, metavar="BOOL")
        elif isinstance(default, list):
            # Repeatable, and each value may itself be a comma-separated list.
            kwargs.update(action="extend", type=split_csv, metavar=meta["metavar"])
        else:
            if meta["type"] is not None:
                kwargs["type"] = meta["type"]
            elif isinstance(default, int):
                kwargs["type"] = int
            elif isinstance(default, float):
                kwargs["type"] = float
            if meta["choices"] is not None:
                kwargs["choices"] = meta["choices"]
            if meta["metavar"] is not None:
                kwargs["metavar"] = meta["metavar"]
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


def build(cls: type[T], ns: argparse.Namespace) -> T:
    """Instantiate ``cls`` from the parsed namespace."""
    kwargs = {f.name: getattr(ns, _dest(cls, f)) for f in flag_fields(cls)}
    return cls(**kwargs)
