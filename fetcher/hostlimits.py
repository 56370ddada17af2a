"""Per-host limits: the command-line defaults plus overrides from a small TOML or JSON file.

The file maps a politeness key (host or domain) to any of ``concurrency``, ``rate`` (requests per
second, 0 = unlimited) and ``burst``. TOML::

    ["images.pexels.com"]
    rate = 0.5
    concurrency = 2

JSON: ``{"images.pexels.com": {"rate": 0.5, "concurrency": 2}}``. An entry also covers the subdomains
of its key (``pexels.com`` applies to ``images.pexels.com``); the longest matching key wins.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, replace
from typing import Any

from fetcher.options import ConfigError

_FIELDS = {"concurrency": int, "rate": float, "burst": int}


@dataclass(frozen=True)
class SlotLimits:
    """What one slot may do: requests in flight, requests per second (0 = unlimited), burst."""

    concurrency: int
    rate: float = 0.0
    burst: int = 1

    def check(self, where: str) -> None:
        """Raise ConfigError naming ``where`` when a value is out of range."""
        if self.concurrency < 1:
            raise ConfigError(f"{where}: concurrency must be >= 1")
        if self.rate < 0:
            raise ConfigError(f"{where}: rate must be >= 0 (0 = unlimited)")
        if self.burst < 1:
            raise ConfigError(f"{where}: burst must be >= 1")


class HostLimits:
    """Looks up the limits of a politeness key: the longest configured suffix, else the defaults."""

    def __init__(self, default: SlotLimits, overrides: dict[str, SlotLimits] | None = None) -> None:
        self.default = default
        self.overrides = overrides or {}

    def for_key(self, key: str) -> SlotLimits:
        """Limits for ``key``: an override for it or its nearest parent domain, else the default."""
        if self.overrides:
            labels = key.split(".")
            for i in range(len(labels)):
                found = self.overrides.get(".".join(labels[i:]))
                if found is not None:
                    return found
        return self.default

    @classmethod
    def load(cls, path: str, default: SlotLimits) -> HostLimits:
        """Read ``path`` (``.json`` as JSON, anything else as TOML). Raises a one-line ConfigError."""
        where = f"--host-limits {path}"
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
            table: Any = json.loads(raw) if path.endswith(".json") else tomllib.loads(raw.decode())
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSON and TOML errors are ValueErrors
            raise ConfigError(f"{where}: {str(exc).splitlines()[0]}") from None
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table of host -> limits")
        overrides: dict[str, SlotLimits] = {}
        for key, entry in table.items():
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: {key}: expected a table such as {{rate = 1.0}}")
            unknown = set(entry) - set(_FIELDS)
            if any(isinstance(entry[name], dict) for name in unknown):
                # TOML splits a bare [images.pexels.com] at the dots into nested tables.
                raise ConfigError(f'{where}: {key}: quote host names in TOML, as in ["images.pexels.com"]')
            if unknown:
                raise ConfigError(f"{where}: {key}: unknown field {sorted(unknown)[0]!r} (known: {', '.join(_FIELDS)})")
            values: dict[str, Any] = {}
            for name, value in entry.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"{where}: {key}.{name}: expected a number, got {value!r}")
                if _FIELDS[name] is int and value != int(value):
                    raise ConfigError(f"{where}: {key}.{name}: expected a whole number, got {value!r}")
                values[name] = _FIELDS[name](value)
            limits = replace(default, **values)
            limits.check(f"{where}: {key}")
            overrides[key.lower().rstrip(".")] = limits
        return cls(default, overrides)
