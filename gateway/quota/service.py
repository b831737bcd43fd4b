"""QuotaService: what the gateway calls per request (admit before dispatch, perhaps extend once the
prompt is counted, settle at the end) and what
the admin API calls to read and change limits. It owns the outage behaviour: circuit breaker, outage
policy per limit kind, the local limiter, and settlements replayed once the store is back."""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError

from gateway.auth.principal import Principal
from gateway.quota import metrics
from gateway.quota.audit import ChangeSource, QuotaAuditSink, QuotaChange, SchedulingChange
from gateway.quota.breaker import CircuitBreaker
from gateway.quota.config import QuotaConfig, diff_configs, diff_scheduling
from gateway.quota.errors import InvalidQuotaRequest, QuotaExceeded, QuotaStoreError, QuotaUnavailable
from gateway.quota.headers import rate_limit_headers
from gateway.quota.headroom import Headroom
from gateway.quota.limits import TEAM_SCOPE, LimitKind, QuotaLimits, Scope, ScopeLimits
from gateway.quota.limits_in_force import LimitsInForce, QuotaConfigSource, RequestLimits, ScopeView
from gateway.quota.outage import OutageLimiter, PendingSettlements
from gateway.quota.scheduling import SchedulingOverride, SchedulingView, TeamScheduling
from gateway.quota.scheduling_store import SchedulingStore
from gateway.quota.settings import QuotaSettings
from gateway.quota.store import (
    AdmitRequest,
    AdmitResult,
    ExtendRequest,
    ExtendResult,
    ExtendStatus,
    QuotaStore,
    Rejection,
    SettleMode,
    Settlement,
)
from gateway.quota.usage import UsageGroupBy, UsageRow, check_report_range, group_usage
from gateway.quota.validation import check_name, check_tokens
from gateway.random_ids import new_hex_id

log = logging.getLogger(__name__)
T = TypeVar("T")
_CHECKED_NAMES_SIZE = 4096  # (team, key, model) triples whose names admit() has already checked


@dataclass
class Admission:
    """One admitted request. Pass it to ``settle`` exactly once it ends (extra calls do nothing).

    ``headers`` are the x-ratelimit-* headers to send with the response. ``degraded`` is True when the
    outage policy admitted it because the shared store was unreachable.
    """

    id: str
    team: str
    key_id: str | None
    model: str | None
    reserved_tokens: int
    scopes: tuple[Scope, ...]
    day: str
    month: str
    headers: dict[str, str]
    degraded: bool = False
    settled: bool = field(default=False, repr=False)
    limits: tuple[ScopeLimits, ...] = field(default=(), repr=False)  # as admitted: what ``extend`` checks


class QuotaService:
    """Per-request quota checks for one gateway process. Create one per process, call ``start()`` at
    start-up (or let the first request do it) and ``aclose()`` at shutdown."""

    def __init__(
        self,
        store: QuotaStore,
        config: QuotaConfigSource,
        settings: QuotaSettings | None = None,
        *,
        audit: QuotaAuditSink | None = None,
        scheduling: SchedulingStore | None = None,
    ):
        self._store = store
        self._config = config
        # Admin-set scheduling lives in the gateway database; this process keeps a copy, re-read with
        # the admin-set limits (override_refresh_s), so the request path never waits on the database.
        self._scheduling_store = scheduling
        self._scheduling: dict[str, SchedulingOverride] = {}
        self._scheduling_cache: dict[str, tuple[QuotaConfig, SchedulingOverride | None, TeamScheduling]] = {}
        self._scheduling_stale = False
        self._limits = LimitsInForce(config)
        self._checked_names: set[tuple[str, str | None, str | None]] = set()
        self._headroom = Headroom()
        self._settings = settings or QuotaSettings(redis_url=None)
        self._audit = audit
        self._breaker = CircuitBreaker(
            failure_threshold=self._settings.breaker_failure_threshold,
            reset_after_s=self._settings.breaker_reset_s,
        )
        self._outage = OutageLimiter(self._settings.outage_policy, self._settings.gateway_replicas)
        self._pending = PendingSettlements(self._settings.max_pending_settlements)
        self._maintenance: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._started = False
        self._closed = False
        if hasattr(config, "on_change"):
            config.on_change = self._on_file_change  # type: ignore[attr-defined]

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load admin-set limits (tolerating an unreachable store) and start the maintenance loop that
        refreshes them, probes the store while it is down and replays pending settlements."""
        if self._started:
            return
        self._started = True
        await self._refresh_overrides()
        await self._refresh_scheduling()
        self._maintenance = asyncio.create_task(self._maintain(), name="quota-maintenance")

    async def aclose(self) -> None:
        self._closed = True
        tasks = [t for t in [self._maintenance, *self._background] if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # A cancel can be swallowed when it races a Redis timeout; the loop also checks _closed.
            await asyncio.wait(tasks, timeout=self._settings.override_refresh_s + 2 * self._settings.redis_timeout_s + 1)
        await self._store.aclose()

    @property
    def degraded(self) -> bool:
        return self._breaker.state.value != "closed"

    @property
    def pending_settlements(self) -> int:
        return len(self._pending)

    # ---- per request -------------------------------------------------------------------------

    async def admit(self, team: str, *, key_id: str | None = None, model: str | None = None, reserve_tokens: int) -> Admission:
        """Admit one request and reserve ``reserve_tokens`` (see ``tokens_to_reserve``) against every
        limit of the team, the key (if given) and the team's use of the model (if given).

        Raises QuotaExceeded (429) when a limit refuses, consuming nothing; QuotaUnavailable (503)
        when the store is unreachable and a fail-closed limit is in play; InvalidQuotaRequest on bad input.
        """
        if (team, key_id, model) not in self._checked_names:
            check_name(team, "team")
            if key_id is not None:
                check_name(key_id, "key_id")
            if model is not None:
                check_name(model, "model")
            if len(self._checked_names) >= _CHECKED_NAMES_SIZE:
                self._checked_names.clear()
            self._checked_names.add((team, key_id, model))  # valid names stay valid: checked once
        check_tokens(reserve_tokens, "reserve_tokens")
        if not self._started:
            await self.start()
        limits = self._limits.resolve(team, key_id, model)
        request = AdmitRequest(
            team=team,
            reservation_id=new_hex_id(),
            reserve_tokens=reserve_tokens,
            model=model,
            scopes=limits.scopes,
            ttl_s=self._settings.reservation_ttl_s,
        )
        if self._breaker.allow():
            try:
                result = await self._store.admit(request)
            except QuotaStoreError as exc:
                self._store_failed("admit", exc)
                if exc.maybe_applied:  # the script may have run before the reply was lost: give it back
                    self._queue(Settlement(team, request.reservation_id, limits.names, "", "", model, 0, 0, SettleMode.RELEASE))
            else:
                self._store_ok()
                return self._admission(request, result, key_id, limits.names, degraded=False)
        return await self._admit_degraded(request, key_id, limits.names)

    async def extend(self, admission: Admission, *, reserve_tokens: int) -> Admission:
        """Raise a live admission's reservation to ``reserve_tokens`` in total (the exact reservation,
        once the prompt is counted), checked in one atomic step against every token limit as ``admit``
        would check that total; the request keeps its concurrency slot and request entry. Returns the
        admission to settle from now on.

        - A token limit refuses: QuotaExceeded, as ``admit`` raises it; nothing changed and
          ``admission`` is still live (``withdraw`` it: the refusal's headers count it out).
        - The reservation is no longer live (its TTL passed): it is admitted afresh with the total,
          every limit checked again, as if it had just arrived.
        - The store is unreachable: the first reservation's release is queued (its TTL frees it
          otherwise) and the request is admitted by the outage policy, as ``admit`` would be now
          (QuotaUnavailable when a fail-closed limit is in play).
        """
        check_tokens(reserve_tokens, "reserve_tokens")
        if admission.settled:  # given back already: nothing is held to extend
            return await self.admit(admission.team, key_id=admission.key_id, model=admission.model, reserve_tokens=reserve_tokens)
        request = ExtendRequest(admission.team, admission.id, reserve_tokens, admission.limits)
        if admission.degraded:  # held by the local limiter: extended there
            result = await self._outage.extend(request, retry_after_s=max(1.0, self._breaker.retry_after_s()))
            return await self._extended(admission, request, result)
        if self._breaker.allow():
            try:
                result = await self._store.extend(request)
            except QuotaStoreError as exc:
                self._store_failed("extend", exc)
            else:
                self._store_ok()
                return await self._extended(admission, request, result)
        # The store went away since the admission: its slot is given back once the store answers again
        # (extended or not: the reply may have been lost after the script ran), and the request is
        # decided as admit would decide it now.
        admission.settled = True
        self._queue(Settlement(admission.team, admission.id, admission.scopes, admission.day, admission.month,
                               admission.model, 0, 0, SettleMode.RELEASE))
        again = AdmitRequest(admission.team, new_hex_id(), reserve_tokens, admission.model, admission.limits,
                             self._settings.reservation_ttl_s)
        return await self._admit_degraded(again, admission.key_id, admission.scopes)

    def has_headroom(self, team: str, *, key_id: str | None = None, model: str | None = None, most_tokens: int) -> bool:
        """Whether a request of this team, key and model that can reserve at most ``most_tokens`` may
        be dispatched before its exact reservation (see gateway.quota.headroom): the store is reachable
        and the latest admission of the same team, key and model left ample room. When a concurrency
        limit is in play (``limits_concurrency``) it must still be admitted before dispatch, with a
        reservation its prompt can only add to, and extended to the exact one (``extend``)."""
        if self.degraded:
            return False
        return self._headroom.allows((team, key_id, model), most_tokens)

    def request_limits(self, team: str, *, key_id: str | None = None, model: str | None = None) -> RequestLimits:
        """The limits in force for a request of this team, key and model, with ``counts_tokens`` and
        ``limits_concurrency`` worked out (one lookup for callers that need both)."""
        return self._limits.resolve(team, key_id, model)

    def limits_concurrency(self, team: str, *, key_id: str | None = None, model: str | None = None) -> bool:
        """Whether a max_concurrent limit applies to a request of this team, key and model right now."""
        return self._limits.resolve(team, key_id, model).limits_concurrency

    def counts_tokens(self, team: str, *, key_id: str | None = None, model: str | None = None) -> bool:
        """Whether a token limit applies to a request of this team, key and model right now. When none
        does, its token reservation changes nothing, so callers may reserve 0 and skip counting the
        prompt (its usage is still recorded when it is settled)."""
        return self._limits.resolve(team, key_id, model).counts_tokens

    async def settle(self, admission: Admission, *, prompt_tokens: int, completion_tokens: int) -> None:
        """Settle a finished, cancelled or failed request to what it really used: the difference to its
        reservation goes back to the limits at once, and the usage is recorded. Idempotent; never raises
        for store trouble (the settlement is kept and replayed when the store is back)."""
        check_tokens(prompt_tokens, "prompt_tokens")
        check_tokens(completion_tokens, "completion_tokens")
        if admission.settled:
            return
        admission.settled = True
        series = metrics.team_series(admission.team)
        series.requests.inc()
        series.prompt_tokens.inc(prompt_tokens)
        series.completion_tokens.inc(completion_tokens)
        settlement = Settlement(
            admission.team, admission.id, admission.scopes, admission.day, admission.month,
            admission.model, prompt_tokens, completion_tokens,
        )
        if admission.degraded:
            await self._outage.settle(settlement)
            # The shared store never saw this request: it still needs its usage for budgets and reports.
            settlement = replace(settlement, mode=SettleMode.USAGE_ONLY)
        await self._settle_shared(settlement)

    async def release(self, admission: Admission) -> None:
        """Give back everything of a request that never reached a worker; no usage is recorded."""
        await self._give_back(admission, SettleMode.RELEASE)

    async def withdraw(self, admission: Admission) -> None:
        """Give back everything of a request refused after its admission (its extension was refused),
        its entries in the requests and tokens windows included, as if it had never been admitted."""
        await self._give_back(admission, SettleMode.WITHDRAW)

    async def _give_back(self, admission: Admission, mode: SettleMode) -> None:
        if admission.settled:
            return
        admission.settled = True
        settlement = Settlement(
            admission.team, admission.id, admission.scopes, admission.day, admission.month,
            admission.model, 0, 0, mode,
        )
        if admission.degraded:
            await self._outage.settle(settlement)
            return
        await self._settle_shared(settlement)

    # ---- scheduling --------------------------------------------------------------------------

    @property
    def config(self) -> QuotaConfig:
        """The quota file's configuration in force (empty without a file)."""
        return self._config.current()

    def scheduling(self, team: str) -> TeamScheduling:
        """The team's priority class and weight in force (no I/O: for every Generate call). Worked out
        once per team for each configuration and admin-set value, not on every call."""
        config, override = self._config.current(), self._scheduling.get(team)
        cached = self._scheduling_cache.get(team)
        if cached is not None and cached[0] is config and cached[1] is override:
            return cached[2]
        policy = config.scheduling_for(team, override).scheduling
        self._scheduling_cache[team] = (config, override, policy)
        return policy

    async def team_scheduling(self, team: str) -> SchedulingView:
        """The team's scheduling in force and where each field comes from, read fresh from the database.
        Raises TeamNotFound for a team the database does not know."""
        check_name(team, "team")
        store = self._require_scheduling_store()
        override = await self._db_call(lambda: self._existing_team_override(store, team))
        return self._config.current().scheduling_for(team, override)

    async def set_scheduling(
        self,
        team: str,
        override: SchedulingOverride | None,
        *,
        actor: str,
        principal: Principal | None = None,
        source: ChangeSource = ChangeSource.ADMIN_API,
    ) -> SchedulingView:
        """Set a team's admin-set scheduling (None or empty: remove it, the file's applies again).
        Each field set replaces the file's; the change is audited, and undone if the audit write fails.
        Raises TeamNotFound, QuotaUnavailable (database unreachable)."""
        check_name(team, "team")
        store = self._require_scheduling_store()
        config = self._config.current()
        previous = await self._db_call(lambda: store.put(team, override, by=actor))
        before = config.scheduling_for(team, previous)
        cleared = override is None or override.is_empty()
        self._set_cached_scheduling(team, None if cleared else override)
        after = config.scheduling_for(team, None if cleared else override)
        if self._audit is not None:
            change = SchedulingChange(source, actor, team, before.scheduling, after.scheduling, principal=principal, cleared=cleared)
            try:
                await self._audit.record_scheduling_change(change)
            except Exception:
                # An unaudited change must not stay in force.
                await self._db_call(lambda: store.put(team, previous, by=actor))
                self._set_cached_scheduling(team, previous)
                raise
        log.info("scheduling of team %r changed by %s: %s", team, actor, after.scheduling.model_dump())
        return after

    def _set_cached_scheduling(self, team: str, override: SchedulingOverride | None) -> None:
        if override is None or override.is_empty():
            self._scheduling.pop(team, None)
        else:
            self._scheduling[team] = override

    @staticmethod
    def _existing_team_override(store: SchedulingStore, team: str) -> SchedulingOverride | None:
        from gateway.auth.stores import TeamNotFound

        if not store.team_exists(team):
            raise TeamNotFound(team)
        return store.get(team)

    def _require_scheduling_store(self) -> SchedulingStore:
        if self._scheduling_store is None:
            raise InvalidQuotaRequest("This gateway keeps no admin-set scheduling (it has no database).", param="team")
        return self._scheduling_store

    async def _db_call(self, call: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(call)
        except SQLAlchemyError as exc:
            log.warning("gateway database unreachable for scheduling: %s", exc)
            raise QuotaUnavailable("The gateway database is unavailable; try again shortly.", retry_after_s=1.0) from exc

    async def _refresh_scheduling(self) -> None:
        """Re-read admin-set scheduling; on failure keep the last known (logged once per outage)."""
        if self._scheduling_store is None:
            return
        try:
            self._scheduling = await asyncio.to_thread(self._scheduling_store.all)
        except SQLAlchemyError as exc:
            if not self._scheduling_stale:
                log.warning("admin-set scheduling not re-read, the last known stays in force: %s", exc)
            self._scheduling_stale = True
        else:
            self._scheduling_stale = False

    # ---- admin -------------------------------------------------------------------------------

    async def team_limits(self, team: str) -> list[ScopeView]:
        """The effective limits of a team: its team scope first, then every key and model scope that
        the file or the admin API gives limits to."""
        check_name(team, "team")
        await self._admin_call(self._refresh_overrides_strict)
        return self._limits.views(team)

    async def set_limits(
        self,
        team: str,
        limits: QuotaLimits,
        *,
        actor: str,
        scope: Scope = TEAM_SCOPE,
        principal: Principal | None = None,
        source: ChangeSource = ChangeSource.ADMIN_API,
    ) -> ScopeView:
        """Set the limits of one scope through the admin API (or ``ward quotas``); they replace the
        file's for that scope. ``principal`` (the caller, when known) is handed to the audit sink."""
        return await self._change(team, scope, limits, actor, principal, source)

    async def clear_limits(
        self,
        team: str,
        *,
        actor: str,
        scope: Scope = TEAM_SCOPE,
        principal: Principal | None = None,
        source: ChangeSource = ChangeSource.ADMIN_API,
    ) -> ScopeView:
        """Remove admin-set limits of one scope, so the file's (or the defaults) apply again."""
        return await self._change(team, scope, None, actor, principal, source)

    async def usage(self, team: str, first_day: dt.date, last_day: dt.date, group_by: UsageGroupBy) -> list[UsageRow]:
        check_name(team, "team")
        check_report_range(first_day, last_day)
        records = await self._admin_call(lambda: self._store.usage(team, first_day, last_day))
        return group_usage(records, group_by)

    async def _change(
        self,
        team: str,
        scope: Scope,
        limits: QuotaLimits | None,
        actor: str,
        principal: Principal | None = None,
        source: ChangeSource = ChangeSource.ADMIN_API,
    ) -> ScopeView:
        check_name(team, "team")
        await self._admin_call(self._refresh_overrides_strict)
        previous = self._limits.override(team, scope)
        before = self._limits.effective(team, scope).limits
        await self._admin_call(lambda: self._store.set_override(team, scope, limits))
        self._limits.set_override(team, scope, limits)
        after = self._limits.effective(team, scope)
        if self._audit is not None:
            try:
                await self._audit.record_quota_change(
                    QuotaChange(
                        source, actor, team, scope, before, after.limits,
                        principal=principal, cleared=limits is None,
                    )
                )
            except Exception:
                # An unaudited change must not stay in force.
                await self._admin_call(lambda: self._store.set_override(team, scope, previous))
                self._limits.set_override(team, scope, previous)
                raise
        log.info("quota limits of team %r %s changed by %s: %s", team, scope.label(), actor, after.limits.model_dump())
        return after

    def _on_file_change(self, old: QuotaConfig, new: QuotaConfig) -> None:
        if self._audit is None:
            return
        actor = str(getattr(self._config, "path", "quota file"))
        changes: list[QuotaChange | SchedulingChange] = [
            QuotaChange(ChangeSource.CONFIG_FILE, actor, t, s, b, a) for t, s, b, a in diff_configs(old, new)
        ]
        changes += [SchedulingChange(ChangeSource.CONFIG_FILE, actor, t, b, a) for t, b, a in diff_scheduling(old, new)]
        self._spawn(self._audit_file_changes(changes))

    async def _audit_file_changes(self, changes: list[QuotaChange | SchedulingChange]) -> None:
        for change in changes:
            try:
                if isinstance(change, SchedulingChange):
                    await self._audit.record_scheduling_change(change)  # type: ignore[union-attr]
                else:
                    await self._audit.record_quota_change(change)  # type: ignore[union-attr]
            except Exception:
                log.exception("could not audit a quota file change: %s", change.as_dict())

    # ---- outage handling ---------------------------------------------------------------------

    async def _admit_degraded(self, request: AdmitRequest, key_id: str | None, names: tuple[Scope, ...]) -> Admission:
        result = await self._outage.admit(request, retry_after_s=max(1.0, self._breaker.retry_after_s()))
        return self._admission(request, result, key_id, names, degraded=True)

    def _admission(self, request: AdmitRequest, result: AdmitResult, key_id: str | None, names: tuple[Scope, ...],
                   *, degraded: bool) -> Admission:
        """``names``: the request's scopes alone, in ``request.scopes``' order (what settling needs)."""
        headers = rate_limit_headers(result.requests, result.tokens)
        mode = "degraded" if degraded else "exact"
        # A concurrency refusal leaves the shortcut open: that limit is always checked before dispatch.
        room = result.rejection is None or result.rejection.kind is LimitKind.MAX_CONCURRENT
        self._headroom.record((request.team, key_id, request.model), admitted=room and not degraded,
                              requests=result.requests, tokens=result.tokens)
        if result.rejection is not None:
            raise _refused(request.team, result.rejection, request.reserve_tokens, headers)
        if degraded:
            metrics.ADMITTED.labels(team=request.team, mode=mode).inc()
        else:
            metrics.team_series(request.team).admitted_exact.inc()
        return Admission(
            id=request.reservation_id, team=request.team, key_id=key_id, model=request.model,
            reserved_tokens=request.reserve_tokens, scopes=names, day=result.day,
            month=result.month, headers=headers, degraded=degraded, limits=request.scopes,
        )

    async def _extended(self, admission: Admission, request: ExtendRequest, result: ExtendResult) -> Admission:
        if result.status is ExtendStatus.UNKNOWN:
            log.warning("reservation %s of team %r was no longer live when extended; admitting it afresh",
                        admission.id, admission.team)
            admission.settled = True  # nothing is left to give back
            return await self.admit(admission.team, key_id=admission.key_id, model=admission.model,
                                    reserve_tokens=request.reserve_tokens)
        headers = rate_limit_headers(result.requests, result.tokens)
        self._headroom.record((admission.team, admission.key_id, admission.model),
                              admitted=result.rejection is None and not admission.degraded,
                              requests=result.requests, tokens=result.tokens)
        if result.rejection is not None:
            raise _refused(admission.team, result.rejection, request.reserve_tokens, headers)
        admission.reserved_tokens = max(admission.reserved_tokens, request.reserve_tokens)
        admission.headers = headers
        return admission

    async def _settle_shared(self, settlement: Settlement) -> None:
        if not self._breaker.allow():
            self._queue(settlement)
            return
        try:
            await self._store.settle(settlement)
        except QuotaStoreError as exc:
            self._store_failed("settle", exc)
            self._queue(settlement)
        else:
            self._store_ok()

    def _queue(self, settlement: Settlement) -> None:
        self._pending.add(settlement)

    async def _replay_pending(self) -> None:
        if not self._breaker.allow():
            return
        try:
            await self._pending.replay(self._store.settle)
        except QuotaStoreError as exc:
            self._store_failed("settle", exc)
        else:
            self._store_ok()

    def _store_ok(self) -> None:
        if self._breaker.record_success():
            metrics.DEGRADED.set(0)
            log.warning("quota store reachable again: exact enforcement restored; %d settlements to replay", len(self._pending))

    def _store_failed(self, operation: str, exc: Exception) -> None:
        metrics.STORE_ERRORS.labels(operation=operation).inc()
        if self._breaker.record_failure():
            metrics.DEGRADED.set(1)
            policy = self._settings.outage_policy
            log.warning(
                "quota store unreachable (%s); degraded until it is back: %s",
                exc,
                ", ".join(f"{k.value}={policy.of(k).value}" for k in LimitKind),
            )

    async def _maintain(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._settings.override_refresh_s)
            await self._refresh_overrides()
            await self._refresh_scheduling()
            if self._pending:
                await self._replay_pending()

    async def _refresh_overrides(self) -> None:
        """Re-read admin-set limits; on failure keep the last known ones (they also serve the outage path)."""
        if not self._breaker.allow():
            return
        try:
            self._limits.replace_overrides(await self._store.get_overrides())
        except QuotaStoreError as exc:
            self._store_failed("overrides", exc)
        else:
            self._store_ok()

    async def _refresh_overrides_strict(self) -> None:
        self._limits.replace_overrides(await self._store.get_overrides())

    async def _admin_call(self, call: Callable[[], Awaitable[T]]) -> T:
        """Admin operations need the real store: 503 rather than answers from stale state."""
        if not self._breaker.allow():
            raise QuotaUnavailable("The quota store is unavailable; try again shortly.", retry_after_s=max(1.0, self._breaker.retry_after_s()))
        try:
            result = await call()
        except QuotaStoreError as exc:
            self._store_failed("admin", exc)
            raise QuotaUnavailable("The quota store is unavailable; try again shortly.", retry_after_s=1.0) from exc
        self._store_ok()
        return result

    def _spawn(self, coro: Awaitable[None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # reloaded outside the event loop: nothing to run the sink on
            coro.close()  # type: ignore[attr-defined]
            log.error("quota file change seen outside the event loop; it was not audited")
            return
        task = loop.create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _refused(team: str, r: Rejection, reserve_tokens: int, headers: dict[str, str]) -> QuotaExceeded:
    metrics.REJECTED.labels(team=team, limit_kind=r.kind.value).inc()
    return QuotaExceeded(
        team=team, limit_kind=r.kind, scope=r.scope, limit=r.limit, used=r.used,
        requested=1 if r.kind in (LimitKind.REQUESTS_PER_MINUTE, LimitKind.MAX_CONCURRENT) else reserve_tokens,
        retry_after_s=r.retry_after_s, headers=headers,
    )

