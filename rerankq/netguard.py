"""Which network addresses rerankq may send a request to: the SSRF guard shared by ``https://`` media
(``rerankq.media.http``) and completion callbacks (``rerankq.callbacks``, ``rerankq.worker.callbacks``).

An address is acceptable only when it is a public unicast address: loopback, private, link-local, multicast,
reserved, shared (CGNAT) and cloud-metadata addresses are refused, also when embedded in IPv6
(``::ffff:10.0.0.1``, 6to4, Teredo, NAT64). Callers check **every** address a name resolves to, then connect
to the address they checked (``pinned_connection``), so a DNS answer that changes between the check and the
connection (rebinding) cannot redirect the request; TLS still verifies the certificate against the host name.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable

# Well-known instance-metadata endpoints; the private/link-local rules catch most, these make it explicit.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ADDRESS_RULES = (("is_loopback", "loopback"), ("is_link_local", "link-local"), ("is_multicast", "multicast"),
                  ("is_unspecified", "unspecified"), ("is_reserved", "reserved"), ("is_private", "private"))

Resolve = Callable[[str, int], list[str]]


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def address_refusal(ip: str) -> str | None:
    """Why ``ip`` may not be reached (``"private address 10.0.0.1"``), or None for a public unicast one."""
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and (inner := _embedded_ipv4(addr)) is not None:
        reason = address_refusal(str(inner))
        return f"{reason} (embedded in {addr})" if reason else None
    if addr in METADATA_ADDRESSES:
        return f"cloud metadata address {addr}"
    for attribute, label in _ADDRESS_RULES:
        if getattr(addr, attribute):
            return f"{label} address {addr}"
    return None if addr.is_global else f"non-public address {addr}"


def host_allowed(host: str, entries: frozenset[str] | list[str]) -> bool:
    """Whether ``host`` is on an allow-list of exact names, ``*.domain`` entries (subdomains of domain) and ``*``
    (any host: an explicit choice; the address checks still apply). An empty list allows nothing."""
    host = host.lower().rstrip(".")
    return any(host == entry or entry == "*" or (entry.startswith("*.") and host.endswith(entry[1:]))
               for entry in entries)


def literal_address(host: str) -> str | None:
    """``host`` as an IP address when it is one (``[::1]`` → ``::1``), else None (a name)."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def pinned_connection(scheme: str, host: str, port: int, ip: str, timeout: float,
                      ssl_context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    """An HTTP(S) connection to ``host`` that connects to ``ip`` (the address that was checked), not to a fresh
    DNS answer; TLS still verifies the certificate against ``host``."""
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=ssl_context or ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def pinned(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        return socket.create_connection((ip, address[1]), *args, **kwargs)  # type: ignore[arg-type]

    conn._create_connection = pinned  # type: ignore[attr-defined]
    return conn
