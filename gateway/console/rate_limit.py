"""How often one client address may start a single sign-on: a token bucket per address, in this process.

The address is the one the gateway records everywhere (``RequestContext.client_address``): the TCP
peer, or the ``X-Forwarded-For`` address when the peer is a proxy uvicorn trusts (``FORWARDED_ALLOW_IPS``,
loopback by default). IPv6 callers are counted per /64, the block one host usually holds, so a
caller cannot take a fresh bucket from each of its addresses.

The table of addresses is bounded (the least recently seen goes first); it lives in the gateway
process, never in Redis, so a flood from many addresses costs the shared store nothing. Each replica
counts on its own: behind N replicas an address may start N times the limit.
"""
from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict

MAX_KEY_LENGTH = 64  # an address a trusted proxy forwarded is text of its choosing


def address_key(address: str | None) -> str:
    """The bucket of a client address: an IPv4 address, an IPv6 /64, or the text as given (shortened)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:MAX_KEY_LENGTH]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AddressRateLimit:
    """At most ``per_minute`` acquisitions per address in any minute, in a burst of as many."""

    def __init__(self, per_minute: int, max_addresses: int = 10_000, clock=time.monotonic):
        if per_minute < 1 or max_addresses < 1:
            raise ValueError("per_minute and max_addresses must be at least 1")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.max_addresses = max_addresses
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)

    def acquire(self, address: str | None) -> float:
        """0.0 when the address may go on (one token taken), else the seconds until it may."""
        key = address_key(address)
        now = self.clock()
        tokens, then = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
        return 0.0 if allowed else (1.0 - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)
