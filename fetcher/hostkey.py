"""Politeness keys: which URLs share one scheduler slot.

``host`` (default) groups by lower-cased hostname; ``domain`` by registrable domain
(``cdn1.example.co.uk`` and ``www.example.co.uk`` -> ``example.co.uk``), using the public-suffix list
bundled with the ``publicsuffixlist`` package: no network access at run time, no cache files, no
dependencies. Private-section suffixes count too, so ``alice.github.io`` and ``bob.github.io`` stay
separate sites. IP literals are their own key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache
from urllib.parse import urlsplit

POLITENESS_KEYS = ("host", "domain")


def hostname(url: str) -> str:
    """Lower-cased hostname of ``url`` ('' when it has none)."""
    return (urlsplit(url).hostname or "").lower()


@lru_cache(maxsize=1)
def _psl() -> object:
    # Imported lazily: parsing the bundled list costs ~50 ms, and the default key never needs it.
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


@lru_cache(maxsize=65536)
def registrable_domain(host: str) -> str:
    """The registrable domain of ``host``; the host itself for IPs, bare suffixes and single labels."""
    host = host.rstrip(".")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    found = _psl().privatesuffix(host)  # type: ignore[attr-defined]
    return str(found) if found else host


def key_function(kind: str) -> Callable[[str], str]:
    """The URL -> politeness key function for ``--politeness-key`` value ``kind``."""
    if kind == "host":
        return hostname
    if kind == "domain":
        return lambda url: registrable_domain(hostname(url))
    raise ValueError(f"unknown politeness key {kind!r}; expected one of {', '.join(POLITENESS_KEYS)}")
