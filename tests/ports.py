"""Ports for the processes a test starts, picked outside the kernel's ephemeral range.

A port found free by binding port 0 comes from the ephemeral range, where the kernel keeps handing
out ports to outgoing connections (gRPC channels, HTTP clients, the database drivers): between the
test picking it and the child process binding it, another socket could take it ("Address already in
use", seen once in a full run). Below that range only listeners bind, and this process never hands
out the same port twice. When the suite runs in several processes (pytest-xdist), each picks from its
own slice of that range, so two of them never hand out the same port either.
"""
from __future__ import annotations

import os
import pathlib
import random
import socket

_handed_out: set[int] = set()
_LOWEST = 20000


def _ephemeral_start() -> int:
    try:
        return int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0  # not Linux: fall back to the kernel's choice


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _slice(low: int, high: int) -> tuple[int, int]:
    """This test process's share of [low, high): the whole of it unless pytest-xdist runs several."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1):
        return low, high
    width = (high - low) // int(count)
    start = low + int(worker[2:]) * width
    return start, start + width


def free_port() -> int:
    """A port no socket of this machine holds now, below the ephemeral range where it can."""
    low, top = _slice(_LOWEST, _ephemeral_start())
    if top - low >= 500:
        for _ in range(200):
            port = random.randrange(low, top)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _handed_out.add(port)
    return port
