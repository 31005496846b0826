"""Classes of IP addresses, shared by the agent's filters and the platform's enrichment."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

CLASSES = ("loopback", "private", "link_local", "multicast", "public", "unspecified")


@lru_cache(maxsize=65_536)
def address_class(addr: str) -> str:
    """loopback, private, link_local, multicast, unspecified or public; "invalid" for non-addresses.

    IPv4-mapped IPv6 addresses are classified as the IPv4 address they carry."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return "invalid"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private or ip in _SHARED:  # RFC 1918, ULA, CGNAT
        return "private"
    return "public"


_SHARED = ipaddress.ip_network("100.64.0.0/10")
