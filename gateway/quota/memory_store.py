"""The quota store of a single gateway: all state in this process, the same semantics as Redis.

It mirrors lua/admit.lua, lua/extend.lua and lua/settle.lua step by step (its per-limit checks, in
memory_checks.py, mirror lua/common.lua); keep the two in step when changing either.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import heapq
import json
import logging
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.quota.errors import QuotaUnavailable
from gateway.quota.limits import LimitKind, QuotaLimits, Scope
from gateway.quota.memory_checks import IN_FLIGHT_RETRY_US, WINDOW_US, Refusals, check_budgets, check_tpm, rate_states
from gateway.quota.periods import day_id, periods_at
from gateway.quota.redis_keys import override_field, parse_override_field
from gateway.quota.scored_log import ScoredLog
from gateway.quota.store import (
    AdmitRequest,
    AdmitResult,
    ExtendRequest,
    ExtendResult,
    ExtendStatus,
    OverrideKey,
    SettleMode,
    Settlement,
    UsageRecord,
)

log = logging.getLogger(__name__)
# kinds whose reservations stay live until settled (the concurrency and budget checks read them)
_LIVE_KINDS = frozenset({LimitKind.MAX_CONCURRENT, LimitKind.TOKENS_PER_DAY, LimitKind.TOKENS_PER_MONTH})


@dataclass
class _ScopeState:
    rpm: ScoredLog = field(default_factory=ScoredLog)  # admission times
    tpm: ScoredLog = field(default_factory=ScoredLog)  # admission times, tokens counted
    live: ScoredLog = field(default_factory=ScoredLog)  # expiry times, tokens reserved
    acct: dict[str, int] = field(default_factory=dict)  # "d:YYYYMMDD" / "m:YYYYMM" -> settled tokens


class InMemoryQuotaStore:
    """QuotaStore for one gateway process. ``clock`` gives seconds since the epoch (wall time, since
    budgets follow UTC calendar days). ``overrides_path``, when given, keeps admin-set limits across
    restarts in a small JSON file, which `ward quotas` on the same host may change too: the file is
    re-read when it changed (``get_overrides``), and every write re-reads it under a file lock first,
    so neither writer loses the other's change."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        overrides_path: Path | None = None,
        settle_grace_s: float = 86_400.0,
    ):
        self._clock = clock
        self._lock = threading.Lock()
        self._scopes: dict[tuple[str, Scope], _ScopeState] = defaultdict(_ScopeState)
        self._records: dict[tuple[str, str], tuple[int, dict]] = {}  # (team, id) -> (expiry_us, record)
        self._record_expiry: list[tuple[int, str, str]] = []
        self._usage: dict[tuple[str, str], dict[str | None, list[int]]] = {}  # (team, day) -> model -> [r, p, c]
        self._settle_grace_us = int(settle_grace_s * 1_000_000)
        self._overrides_path = overrides_path
        self._overrides_signature: tuple[int, int, int] | None = None
        self._overrides: dict[OverrideKey, QuotaLimits] = self._load_overrides()

    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    async def admit(self, request: AdmitRequest) -> AdmitResult:
        with self._lock:
            return self._admit(request)

    async def extend(self, request: ExtendRequest) -> ExtendResult:
        with self._lock:
            return self._extend(request)

    async def settle(self, settlement: Settlement) -> bool:
        with self._lock:
            return self._settle(settlement)

    def _admit(self, request: AdmitRequest) -> AdmitResult:
        now = self._now_us()
        periods = periods_at(now)
        self._expire_records(now)
        if (request.team, request.reservation_id) in self._records:
            raise ValueError(f"reservation id {request.reservation_id} was already admitted")
        reserve = request.reserve_tokens
        # Only the scopes that limit something are checked and record anything here (a scope without
        # limits keeps only settled usage, which settle adds); the index stays the request's own.
        team = request.team
        active = [(index, item, self._scopes[(team, item.scope)])
                  for index, item in enumerate(request.scopes) if item.limits.kinds()]
        refusals = Refusals()

        # 1. Check.
        for index, item, state in active:
            limits = item.limits
            rpm = limits.requests_per_minute
            if rpm is not None:
                state.rpm.purge_upto(now - WINDOW_US)
                count = len(state.rpm)
                if count + 1 > rpm:
                    retry = -1 if rpm == 0 else state.rpm.score_at(count - rpm) + WINDOW_US - now
                    refusals.add(LimitKind.REQUESTS_PER_MINUTE, index, retry, rpm, count)
            tpm = limits.tokens_per_minute
            if tpm is not None:
                state.tpm.purge_upto(now - WINDOW_US)
                check_tpm(refusals, index, tpm, state.tpm, state.tpm.total, reserve, now)
            conc, per_day, per_month = limits.max_concurrent, limits.tokens_per_day, limits.tokens_per_month
            if conc is not None or per_day is not None or per_month is not None:
                state.live.purge_upto(now)
                if conc is not None and len(state.live) + 1 > conc:
                    retry = -1 if conc == 0 else IN_FLIGHT_RETRY_US
                    refusals.add(LimitKind.MAX_CONCURRENT, index, retry, conc, len(state.live))
                check_budgets(refusals, index, per_day, per_month, state.acct, state.live.total, reserve, periods)

        # 2. Record, only when nothing refused.
        if refusals.best is None:
            rid = request.reservation_id
            ttl_us = int(request.ttl_s * 1_000_000)
            for _, item, state in active:
                limits = item.limits
                if limits.requests_per_minute is not None:
                    state.rpm.add(now, rid)
                if limits.tokens_per_minute is not None:
                    state.tpm.add(now, rid, reserve)
                if not _LIVE_KINDS.isdisjoint(limits.kinds()):
                    state.live.add(now + ttl_us, rid, reserve)
            expiry = now + ttl_us + self._settle_grace_us
            record = {"day": periods.day, "month": periods.month, "reserve": reserve, "expires": now + ttl_us}
            self._records[(request.team, rid)] = (expiry, record)
            heapq.heappush(self._record_expiry, (expiry, request.team, rid))

        # 3. What the client sees.
        requests_state, tokens_state = rate_states(((item, state.rpm, state.tpm) for _, item, state in active), now)
        return AdmitResult(
            rejection=refusals.rejection(request.scopes),
            requests=requests_state,
            tokens=tokens_state,
            day=periods.day,
            month=periods.month,
        )

    def _extend(self, request: ExtendRequest) -> ExtendResult:
        """Mirrors lua/extend.lua."""
        now = self._now_us()
        self._expire_records(now)
        entry = self._records.get((request.team, request.reservation_id))
        if entry is None or entry[1]["expires"] <= now:
            return ExtendResult(ExtendStatus.UNKNOWN, None, None, None)
        record, rid, total = entry[1], request.reservation_id, request.reserve_tokens
        more = total > record["reserve"]
        periods = periods_at(now)
        states = [self._scopes[(request.team, item.scope)] for item in request.scopes]
        refusals = Refusals()

        # 1. Check, leaving the request's own tokens out: the new total replaces them.
        for index, (item, state) in enumerate(zip(request.scopes, states)):
            limits = item.limits
            if limits.requests_per_minute is not None:
                state.rpm.purge_upto(now - WINDOW_US)  # only for the headers
            tpm = limits.tokens_per_minute
            if tpm is not None:
                state.tpm.purge_upto(now - WINDOW_US)
                others = state.tpm.total - state.tpm.amounts.get(rid, 0)
                check_tpm(refusals, index, tpm, state.tpm, others, total, now, skip=rid)
            if not _LIVE_KINDS.isdisjoint(limits.kinds()):
                state.live.purge_upto(now)
                if rid not in state.live.amounts:
                    return ExtendResult(ExtendStatus.UNKNOWN, None, None, None)
                others = state.live.total - state.live.amounts[rid]
                check_budgets(refusals, index, limits.tokens_per_day, limits.tokens_per_month, state.acct, others, total, periods)
        if not more:
            refusals = Refusals()

        # 2. Record, only when nothing refused.
        if refusals.best is None and more:
            for item, state in zip(request.scopes, states):
                if item.limits.tokens_per_minute is not None:
                    state.tpm.add(now, rid, total)  # moves the entry to now
                if rid in state.live.amounts:
                    state.live.set_amount(rid, total)
            record["reserve"] = total

        # 3. What the client sees; after a refusal, as if the request were already released (as it will be).
        refused = refusals.best is not None
        requests_state, tokens_state = rate_states(
            ((item, state.rpm, state.tpm) for item, state in zip(request.scopes, states)), now, rid if refused else None
        )
        status = ExtendStatus.REFUSED if refused else ExtendStatus.EXTENDED
        return ExtendResult(status, refusals.rejection(request.scopes), requests_state, tokens_state)

    def _settle(self, s: Settlement) -> bool:
        now = self._now_us()
        self._expire_records(now)
        if s.mode is not SettleMode.USAGE_ONLY:
            if self._records.pop((s.team, s.reservation_id), None) is None:
                return False
        withdraw = s.mode is SettleMode.WITHDRAW
        record = s.mode is not SettleMode.RELEASE and not withdraw
        used = s.prompt_tokens + s.completion_tokens if record else 0
        day_field, month_field = "d:" + s.day, "m:" + s.month
        keep: set[str] | None = None  # worked out only when a counter has stale periods to drop
        for scope in s.scopes:
            state = self._scopes[(s.team, scope)]
            if withdraw:  # out of the rate windows too, as if never admitted
                state.rpm.remove(s.reservation_id)
                state.tpm.remove(s.reservation_id)
                state.live.remove(s.reservation_id)
            elif s.mode is not SettleMode.USAGE_ONLY:
                state.tpm.set_amount(s.reservation_id, used)
                state.live.remove(s.reservation_id)
            if record and used > 0:
                acct = state.acct
                acct[day_field] = acct.get(day_field, 0) + used
                acct[month_field] = acct.get(month_field, 0) + used
                if len(acct) > 2:  # just the two fields above: nothing stale
                    if keep is None:
                        today = periods_at(now)
                        keep = {day_field, month_field, "d:" + today.day, "m:" + today.month}
                    for stale in [f for f in acct if f not in keep]:
                        del acct[stale]
        if record:
            counts = self._usage.setdefault((s.team, s.day), {}).setdefault(s.model, [0, 0, 0])
            counts[0] += 1
            counts[1] += s.prompt_tokens
            counts[2] += s.completion_tokens
        return True

    def _expire_records(self, now: int) -> None:
        while self._record_expiry and self._record_expiry[0][0] <= now:
            expiry, team, rid = heapq.heappop(self._record_expiry)
            entry = self._records.get((team, rid))
            if entry is not None and entry[0] == expiry:
                del self._records[(team, rid)]

    async def usage(self, team: str, first_day: dt.date, last_day: dt.date) -> list[UsageRecord]:
        records = []
        with self._lock:
            for offset in range((last_day - first_day).days + 1):
                day = first_day + dt.timedelta(days=offset)
                by_model = self._usage.get((team, day_id(day)), {})
                for model in sorted(by_model, key=lambda m: "" if m is None else m):
                    r, p, c = by_model[model]
                    records.append(UsageRecord(day, model, r, p, c))
        return records

    async def get_overrides(self) -> dict[OverrideKey, QuotaLimits]:
        with self._lock:
            if self._overrides_path is not None and self._file_signature() != self._overrides_signature:
                try:
                    self._overrides = self._load_overrides()
                except (OSError, ValueError) as exc:  # a hand edit gone wrong: keep what is in force
                    log.error("quota overrides file %s unreadable, the previous limits stay in force: %s", self._overrides_path, exc)
            return dict(self._overrides)

    async def set_override(self, team: str, scope: Scope, limits: QuotaLimits | None) -> None:
        with self._lock, self._file_lock():
            if self._overrides_path is not None:
                try:
                    self._overrides = self._load_overrides()  # another process may have written since
                except (OSError, ValueError) as exc:
                    raise QuotaUnavailable(
                        f"The admin-set limits file {self._overrides_path} cannot be read ({exc}); fix or remove it.",
                        retry_after_s=60.0,
                    ) from exc
            if limits is None:
                self._overrides.pop((team, scope), None)
            else:
                self._overrides[(team, scope)] = limits
            self._save_overrides()

    async def aclose(self) -> None:
        return None

    def _file_signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._overrides_path)  # type: ignore[arg-type]
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """An exclusive lock beside the overrides file, across processes (the gateway and `ward quotas`)."""
        if self._overrides_path is None:
            yield
            return
        self._overrides_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._overrides_path.with_name(self._overrides_path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load_overrides(self) -> dict[OverrideKey, QuotaLimits]:
        if self._overrides_path is None:
            return {}
        self._overrides_signature = self._file_signature()
        if self._overrides_signature is None:
            return {}
        raw = json.loads(self._overrides_path.read_text())
        return {parse_override_field(k): QuotaLimits.model_validate(v) for k, v in raw.items()}

    def _save_overrides(self) -> None:
        if self._overrides_path is None:
            return
        data = {override_field(team, scope): limits.model_dump() for (team, scope), limits in self._overrides.items()}
        self._overrides_path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a crash never leaves a half-written file behind.
        fd, tmp = tempfile.mkstemp(dir=self._overrides_path.parent, prefix=".quota-overrides-")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.replace(tmp, self._overrides_path)
        self._overrides_signature = self._file_signature()

