"""What one gateway process does on its own while the shared quota store is unreachable: apply the
outage policy of each limit kind, and keep settlements until the store is back."""
from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from gateway.quota import metrics
from gateway.quota.errors import QuotaUnavailable
from gateway.quota.limits import LimitKind, QuotaLimits, ScopeLimits
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.settings import OutagePolicies, OutagePolicy
from gateway.quota.store import AdmitRequest, AdmitResult, ExtendRequest, ExtendResult, Settlement

T = TypeVar("T", AdmitResult, ExtendResult)


class OutageLimiter:
    """Admits requests by the outage policy: refuses (503) when a fail-closed limit is in play, ignores
    fail-open limits, and enforces ``limit // replicas`` of local ones in this process alone, so that
    ``replicas`` gateways together never admit more than the limit."""

    def __init__(self, policies: OutagePolicies, replicas: int):
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        self._policies = policies
        self._replicas = replicas
        self._local = InMemoryQuotaStore()

    async def admit(self, request: AdmitRequest, *, retry_after_s: float) -> AdmitResult:
        """The local answer for a request; raises QuotaUnavailable if a fail-closed limit applies."""
        in_play = {kind for item in request.scopes for kind in item.limits.kinds()}
        closed = sorted(k.value for k in in_play if self._policies.of(k) is OutagePolicy.FAIL_CLOSED)
        if closed:
            metrics.UNAVAILABLE.labels(team=request.team).inc()
            raise QuotaUnavailable(
                f"The quota service is temporarily unavailable, so limits on {', '.join(closed)} "
                "cannot be checked. Please try again shortly.",
                retry_after_s=retry_after_s,
            )
        result = await self._local.admit(replace(request, scopes=self._local_scopes(request.scopes)))
        return self._until_back(result, request.scopes, request.reserve_tokens, retry_after_s)

    async def extend(self, request: ExtendRequest, *, retry_after_s: float) -> ExtendResult:
        """The local answer for raising a reservation this limiter admitted (fail-closed limits were
        refused at its admission)."""
        result = await self._local.extend(replace(request, scopes=self._local_scopes(request.scopes)))
        return self._until_back(result, request.scopes, request.reserve_tokens, retry_after_s)

    def _until_back(self, result: T, scopes: tuple[ScopeLimits, ...], tokens: int, retry_after_s: float) -> T:
        """A request that only this process's share refuses for good (a limit under ``replicas`` leaves
        a share of 0) fits the whole limit: it may retry once the store is back, in ``retry_after_s``.
        One that a whole limit could never take (more than the limit, or a limit of 0) still never fits."""
        rejection = result.rejection
        if rejection is None or rejection.retry_after_s is not None:
            return result
        for item in scopes:
            for kind in item.limits.kinds():
                limit = item.limits.get(kind)
                if self._policies.of(kind) is OutagePolicy.LOCAL and (tokens if kind.counts_tokens else 1) > limit:
                    return result
        return replace(result, rejection=replace(rejection, retry_after_s=retry_after_s))

    def _local_scopes(self, scopes: tuple[ScopeLimits, ...]) -> tuple[ScopeLimits, ...]:
        return tuple(ScopeLimits(item.scope, self.local_share(item.limits)) for item in scopes)

    async def settle(self, settlement: Settlement) -> None:
        await self._local.settle(settlement)

    def local_share(self, limits: QuotaLimits) -> QuotaLimits:
        """What this process may admit alone: limit // replicas for local-policy kinds, nothing else."""
        share = {}
        for kind in LimitKind:
            limit = limits.get(kind)
            local = limit is not None and self._policies.of(kind) is OutagePolicy.LOCAL
            share[kind.value] = limit // self._replicas if local else None
        return QuotaLimits(**share)


class PendingSettlements:
    """Settlements the store could not take, oldest first, replayed when it is back. Bounded: when full,
    the oldest is dropped (and counted), since a reservation also expires on its own."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._queue: deque[Settlement] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, settlement: Settlement) -> None:
        if self._capacity == 0:
            metrics.DROPPED_SETTLEMENTS.inc()
            return
        if len(self._queue) >= self._capacity:
            self._queue.popleft()
            metrics.DROPPED_SETTLEMENTS.inc()
        self._queue.append(settlement)
        metrics.PENDING_SETTLEMENTS.set(len(self._queue))

    async def replay(self, settle: Callable[[Settlement], Awaitable[object]]) -> None:
        """Hand each settlement to ``settle`` in order; stops at (and re-raises) the first failure,
        keeping that settlement and the ones after it."""
        while self._queue:
            await settle(self._queue[0])
            self._queue.popleft()
            metrics.PENDING_SETTLEMENTS.set(len(self._queue))
