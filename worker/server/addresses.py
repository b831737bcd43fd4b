"""Which listen addresses stay on this machine (plaintext is allowed there and nowhere else)."""
from __future__ import annotations

import ipaddress
import socket


def is_loopback(host: str) -> bool:
    """True when every address ``host`` stands for is a loopback address (``localhost``, 127.0.0.1,
    ::1, a name that resolves only to those); a wildcard (0.0.0.0, ::) or an unresolvable name is not."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False
    return bool(resolved) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in resolved)
