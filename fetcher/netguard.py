"""Which URLs and addresses fetcher may contact.

Download boxes sit inside private networks; a URL list nobody checked must not turn fetcher into a
scanner of that network or of a cloud metadata service.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import unquote

import yarl

from fetcher.records import Reason

ALLOWED_SCHEMES = ("http", "https")

# Ranges Python's is_private/is_global do not all cover, named so reviewers can see the policy.
_EXTRA_BLOCKED = [
    ipaddress.ip_network("100.64.0.0/10"),  # CGNAT
    ipaddress.ip_network("169.254.169.254/32"),  # cloud metadata (also link-local)
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS IPv6 metadata
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("192.0.0.0/24"),
    ipaddress.ip_network("198.18.0.0/15"),  # benchmarking
    ipaddress.ip_network("240.0.0.0/4"),
]


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UrlRefused(Exception):
    """The URL must not be fetched; carries the named reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why fetching from ``ip`` is refused, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return address_problem(ip.ipv4_mapped)
        # 6to4 and NAT64 addresses carry an IPv4 address that a gateway may deliver to.
        embedded = ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        inner = address_problem(embedded) if embedded is not None else None
        if inner:
            return f"{inner} (embeds {embedded})"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_reserved:
        return "reserved"
    for net in _EXTRA_BLOCKED:
        if ip.version == net.version and ip in net:
            return f"special-purpose ({net})"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-global"
    return None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(texts: list[str]) -> tuple[Network, ...]:
    """CIDRs (or bare addresses) from ``--allow-network``; raises ValueError naming a bad one."""
    out: list[Network] = []
    for text in texts:
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an address or CIDR network") from None
    return tuple(out)


@dataclass(frozen=True)
class NetPolicy:
    """The address policy of one run.

    ``allow_private`` lifts the address checks entirely; ``allowed`` lifts them only for the listed
    networks, so tests can reach one loopback address while every other blocked range stays blocked.
    """

    allow_private: bool = False
    allowed: tuple[Network, ...] = ()

    def check_url(self, url: object) -> str:
        """Return the URL, normalised as the HTTP client will use it, when it may be fetched.

        Raises UrlRefused otherwise. See ``target``.
        """
        return str(self.target(url))

    def target(self, url: object) -> yarl.URL:
        """The URL exactly as the HTTP client will connect to it, when it may be fetched.

        The host is checked *after* yarl's normalisation (IDNA/UTS-46: full-width and other Unicode
        digits, ideographic dots), because that normalised host is what aiohttp connects to: a
        literal in full-width digits (U+FF11 U+FF12 U+FF17 ...) becomes ``127.0.0.1`` and never reaches the resolver.
        Callers must pass the returned URL object (not the original text) to the client.
        Hostnames are checked again on resolution (see http.py).
        """
        if url is None or (isinstance(url, str) and not url.strip()):
            raise UrlRefused(Reason.MISSING_URL, "no URL in this row")
        if not isinstance(url, (str, yarl.URL)):
            raise UrlRefused(Reason.INVALID_URL, f"URL is a {type(url).__name__}, not text")
        text = url.strip() if isinstance(url, str) else str(url)
        try:
            parsed = url if isinstance(url, yarl.URL) else yarl.URL(text)
            host = parsed.raw_host
            parsed.port  # noqa: B018 - raises ValueError on a bad port
        except (ValueError, UnicodeError) as exc:
            raise UrlRefused(Reason.INVALID_URL, f"unparsable URL: {exc}") from None
        if parsed.scheme not in ALLOWED_SCHEMES:
            raise UrlRefused(Reason.UNSUPPORTED_SCHEME, f"scheme {parsed.scheme or '(none)'!r} is not http/https")
        if not host:
            raise UrlRefused(Reason.INVALID_URL, "URL has no host")
        if any(ch in text for ch in "\x00\r\n\t "):  # yarl would silently drop some of them
            raise UrlRefused(Reason.INVALID_URL, "URL contains whitespace or control characters")
        self.check_host_literal(host)
        try:  # the text form is what rows carry to the scheduler and back here: it must name the same place
            again = yarl.URL(str(parsed))
            same = (again.raw_host, again.port) == (host, parsed.port)
        except ValueError:
            same = False
        if not same:  # e.g. yarl drops the brackets of an IPv6 literal it had to normalise
            raise UrlRefused(Reason.INVALID_URL, f"URL does not survive normalisation: {str(parsed)[:200]}")
        return parsed

    def check_host_literal(self, host: str) -> None:
        """Refuse a host that is, or that a resolver would read as, an address in a blocked range.

        Besides IP literals (with or without brackets and IPv6 zone ids) this covers the legacy numeric
        IPv4 spellings that ``inet_aton``/``getaddrinfo`` accept (``2130706433``, ``0x7f.1``,
        ``0177.0.0.1``, ``127.1``), with or without a trailing dot.
        """
        ip = _as_address(host)
        if ip is None:
            # A shortcut for the obvious names; with an allowlist the resolver's answer decides.
            name = host.lower().rstrip(".")
            if (
                not self.allow_private
                and not self.allowed
                and (name in ("localhost", "localhost.localdomain") or name.endswith(".localhost"))
            ):
                raise UrlRefused(Reason.BLOCKED_ADDRESS, f"host {host} is loopback")
            return
        self.check_address(ip, host)

    def check_address(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, host: str) -> None:
        """Refuse a concrete (literal or resolved) address in a blocked range."""
        if self.allow_private:
            return
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return
        problem = address_problem(ip)
        if problem:
            raise UrlRefused(Reason.BLOCKED_ADDRESS, f"{host} -> {ip} is {problem}")


def _as_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names without any DNS lookup, or None for a real hostname."""
    bare = unquote(host.strip("[]"))  # yarl keeps an IPv6 zone id percent-encoded ("fe80::1%25eth0")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    numeric = bare.rstrip(".")
    if numeric and all(ch in "0123456789abcdefxABCDEFX." for ch in numeric):
        try:  # the legacy forms inet_aton (and so getaddrinfo) reads as an address
            return ipaddress.IPv4Address(socket.inet_aton(numeric))
        except OSError:
            return None
    return None
