"""Which URLs and addresses fetcher may contact.

Download boxes sit inside private networks; a URL list nobody checked must not turn fetcher into a
scanner of that network or of a cloud metadata service.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

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


class UrlRefused(Exception):
    """The URL must not be fetched; carries the named reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why fetching from ``ip`` is refused, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_problem(ip.ipv4_mapped)
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
        """Return the URL as text when it may be fetched; raise UrlRefused otherwise.

        Only the literal form is checked here; hostnames are checked on resolution (see http.py).
        """
        if url is None or (isinstance(url, str) and not url.strip()):
            raise UrlRefused(Reason.MISSING_URL, "no URL in this row")
        if not isinstance(url, str):
            raise UrlRefused(Reason.INVALID_URL, f"URL is a {type(url).__name__}, not text")
        text = url.strip()
        try:
            parts = urlsplit(text)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise UrlRefused(Reason.INVALID_URL, f"unparsable URL: {exc}") from None
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            raise UrlRefused(Reason.UNSUPPORTED_SCHEME, f"scheme {parts.scheme or '(none)'!r} is not http/https")
        if not host:
            raise UrlRefused(Reason.INVALID_URL, "URL has no host")
        if any(ch in text for ch in "\x00\r\n\t "):
            raise UrlRefused(Reason.INVALID_URL, "URL contains whitespace or control characters")
        self.check_host_literal(host)
        return text

    def check_host_literal(self, host: str) -> None:
        """Refuse a host given as an IP literal in a blocked range."""
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            # A shortcut for the obvious name; with an allowlist the resolver's answer decides.
            if (
                not self.allow_private
                and not self.allowed
                and host.lower().rstrip(".") in ("localhost", "localhost.localdomain")
            ):
                raise UrlRefused(Reason.BLOCKED_ADDRESS, f"host {host} is loopback") from None
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
