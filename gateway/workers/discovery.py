"""Worker discovery through DNS: every A/AAAA record of a name is a worker of the model.

A model's ``dns`` entries (``host:port``, e.g. a Kubernetes headless Service such as
``ward-worker-llama.ward.svc.cluster.local:50051``) are resolved when the gateway starts and again
every ``routing.dns_refresh_s``. An address that appears is added to the pool (it serves once its
health polls say ready); an address that disappears leaves rotation at once, while the requests
already on it run to their end (a rolling update drains, it does not cut streams).

A failed lookup (resolver timeout, SERVFAIL, no such name) changes nothing: the last answer stays
in force, so a DNS hiccup never empties a model; a worker that really went away fails its health
polls and leaves rotation through the pool. Only a successful answer removes workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Protocol

from gateway.workers.pool import WorkerHandle, WorkerPool

log = logging.getLogger("ward.gateway.discovery")


class Resolver(Protocol):
    """Turns a name into worker addresses (``ip:port``; IPv6 in brackets)."""

    async def resolve(self, host: str, port: int) -> set[str]:
        """Every address ``host`` has now. Raises OSError when the lookup fails."""
        ...


def format_address(ip: str, port: int) -> str:
    """``ip:port``, with an IPv6 address in brackets (as gRPC targets write it)."""
    return f"[{ip}]:{port}" if ipaddress.ip_address(ip).version == 6 else f"{ip}:{port}"


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``: /etc/hosts, then the cluster's DNS).

    Every A and AAAA record of a headless Service is one ready pod.
    """

    async def resolve(self, host: str, port: int) -> set[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return {format_address(info[4][0].split("%")[0], port) for info in infos}


def split_target(target: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); the settings have checked the shape."""
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


class DnsDiscovery:
    """Keeps the pool's workers of each model equal to what its DNS names resolve to."""

    def __init__(
        self,
        pool: WorkerPool,
        targets: Mapping[str, Sequence[str]],
        *,
        resolver: Resolver | None = None,
        refresh_s: float = 5.0,
    ) -> None:
        """``targets`` maps model names to the ``host:port`` names whose records are its workers."""
        self.pool = pool
        self.targets = {model: list(names) for model, names in targets.items() if names}
        self.resolver = resolver or SystemResolver()
        self.refresh_s = refresh_s
        self._answers: dict[tuple[str, str], set[str]] = {}  # (model, name) -> last good answer
        self._members: dict[tuple[str, str], WorkerHandle] = {}  # (model, address) -> its handle
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Resolves every name once (so the first requests find workers), then keeps refreshing."""
        if self._task is None and self.targets:
            await self.refresh()
            self._task = asyncio.create_task(self._run(), name="dns discovery")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def members(self, model: str) -> set[str]:
        """The addresses discovery has put in the pool for ``model``."""
        return {address for (m, address) in self._members if m == model}

    async def refresh(self) -> None:
        """One round: resolve every name, then add and remove workers to match the answers."""
        lookups = [(model, name) for model, names in self.targets.items() for name in names]
        answers = await asyncio.gather(*(self._lookup(name) for _, name in lookups))
        for key, answer in zip(lookups, answers):
            if answer is not None:
                self._answers[key] = answer
        for model in self.targets:
            self._reconcile(model)

    async def _lookup(self, name: str) -> set[str] | None:
        host, port = split_target(name)
        try:
            return await self.resolver.resolve(host, port)
        except (OSError, UnicodeError, ValueError) as err:
            log.warning("cannot resolve %s (keeping its last known workers): %s", name, err)
            return None

    def _reconcile(self, model: str) -> None:
        wanted = set().union(*(self._answers.get((model, name), set()) for name in self.targets[model]))
        static = {h.address for h in self.pool.handles(model) if (model, h.address) not in self._members}
        wanted -= static  # listed in `workers` too: the pool already watches it
        current = self.members(model)
        for address in sorted(wanted - current):
            log.info("discovered worker %s for %s", address, model)
            self._members[(model, address)] = self.pool.add_worker(model, address)
        for address in sorted(current - wanted):
            log.info("worker %s of %s left DNS: out of rotation, its requests finish", address, model)
            self.pool.remove_worker(self._members.pop((model, address)))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except Exception:  # a bug must not stop discovery: the next round tries again
                log.exception("worker discovery round failed")
