"""SSRF guard: a webhook URL must be http(s) and resolve only to public addresses.

Checked when an endpoint is created and again before every attempt, and the attempt connects to the
address that was checked (no second lookup a DNS rebinding could answer differently).
"""

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


class TargetRefused(ValueError):
    """The URL is malformed, does not resolve, or points at a non-public address."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # as written in the URL (the Host header and the TLS server name)
    port: int
    address: str  # the checked IP address the attempt connects to
    path: str  # path and query


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # is_global is False for private, loopback, link-local, unspecified, reserved, shared (CGNAT)
    # and documentation ranges; multicast is refused on its own.
    return ip.is_global and not ip.is_multicast


def parse_url(url: str) -> tuple[str, str, int, str]:
    """Return (scheme, host, port, path) or raise TargetRefused saying what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise TargetRefused("the URL must start with http:// or https://")
    if not parts.hostname:
        raise TargetRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("the URL must not carry credentials")
    if parts.fragment:
        raise TargetRefused("the URL must not have a #fragment")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme], path


def resolve_target(url: str, *, allow_private: bool) -> Target:
    """Parse and resolve the URL; refuse it if any address it resolves to is not public."""
    scheme, host, port, path = parse_url(url)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetRefused(f"host {host!r} does not resolve ({exc})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise TargetRefused(f"host {host!r} does not resolve")
    if not allow_private:
        blocked = [a for a in addresses if not _is_public(a)]
        if blocked:
            raise TargetRefused(f"host {host!r} resolves to a private, loopback, link-local or reserved "
                                f"address ({', '.join(blocked)}); webhooks go to public addresses only")
    return Target(scheme=scheme, host=host, port=port, address=addresses[0], path=path)
