"""The quota store of a single gateway: all state in this process, the same semantics as Redis.

It mirrors lua/admit.lua and lua/settle.lua step by step; keep the two in step when changing either.
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
from gateway.quota.headers import WindowState
from gateway.quota.limits import LimitKind, QuotaLimits, Scope
from gateway.quota.periods import day_id, periods_at
from gateway.quota.redis_keys import override_field, parse_override_field
from gateway.quota.scored_log import ScoredLog
from gateway.quota.store import (
    IN_FLIGHT_RETRY_S,
    RATE_WINDOW_S,
    AdmitRequest,
    AdmitResult,
    OverrideKey,
    Rejection,
    SettleMode,
    Settlement,
    UsageRecord,
)

log = logging.getLogger(__name__)
_WINDOW_US = int(RATE_WINDOW_S * 1_000_000)
_IN_FLIGHT_RETRY_US = int(IN_FLIGHT_RETRY_S * 1_000_000)
# kinds whose reservations stay live until settled (the concurrency and budget checks read them)
_LIVE_KINDS = frozenset({LimitKind.MAX_CONCURRENT, LimitKind.TOKENS_PER_DAY, LimitKind.TOKENS_PER_MONTH})


@dataclass
class _ScopeState:
    rpm: ScoredLog = field(default_factory=ScoredLog)  # admission times
    tpm: ScoredLog = field(default_factory=ScoredLog)  # admission times, tokens counted
    live: ScoredLog = field(default_factory=ScoredLog)  # expiry times, tokens reserved
    acct: dict[str, int] = field(default_factory=dict)  # "d:YYYYMMDD" / "m:YYYYMM" -> settled tokens


@dataclass
class _Refusal:
    kind: LimitKind
    scope_index: int
    retry_us: int  # -1: never
    limit: int
    used: int

    def outranks(self, other: _Refusal | None) -> bool:
        if other is None:
            return True
        return other.retry_us != -1 and (self.retry_us == -1 or self.retry_us > other.retry_us)


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
        states = [self._scopes[(request.team, item.scope)] for item in request.scopes]
        best: _Refusal | None = None

        def refuse(kind: LimitKind, index: int, retry_us: int, limit: int, used: int) -> None:
            nonlocal best
            candidate = _Refusal(kind, index, retry_us, limit, used)
            if candidate.outranks(best):
                best = candidate

        # 1. Check.
        for index, (item, state) in enumerate(zip(request.scopes, states)):
            limits = item.limits
            rpm = limits.requests_per_minute
            if rpm is not None:
                state.rpm.purge_upto(now - _WINDOW_US)
                count = len(state.rpm)
                if count + 1 > rpm:
                    retry = -1 if rpm == 0 else state.rpm.score_at(count - rpm) + _WINDOW_US - now
                    refuse(LimitKind.REQUESTS_PER_MINUTE, index, retry, rpm, count)
            tpm = limits.tokens_per_minute
            if tpm is not None:
                state.tpm.purge_upto(now - _WINDOW_US)
                total = state.tpm.total
                if reserve > tpm:
                    refuse(LimitKind.TOKENS_PER_MINUTE, index, -1, tpm, total)
                elif total + reserve > tpm:
                    retry = self._tokens_retry(state.tpm, total + reserve - tpm, now)
                    refuse(LimitKind.TOKENS_PER_MINUTE, index, retry, tpm, total)
            conc, per_day, per_month = limits.max_concurrent, limits.tokens_per_day, limits.tokens_per_month
            if conc is not None or per_day is not None or per_month is not None:
                state.live.purge_upto(now)
                if conc is not None and len(state.live) + 1 > conc:
                    retry = -1 if conc == 0 else _IN_FLIGHT_RETRY_US
                    refuse(LimitKind.MAX_CONCURRENT, index, retry, conc, len(state.live))
                live = state.live.total
                for kind, limit, fld, period_end in (
                    (LimitKind.TOKENS_PER_DAY, per_day, "d:" + periods.day, periods.day_end_us),
                    (LimitKind.TOKENS_PER_MONTH, per_month, "m:" + periods.month, periods.month_end_us),
                ):
                    if limit is None:
                        continue
                    settled = state.acct.get(fld, 0)
                    if reserve > limit:
                        refuse(kind, index, -1, limit, settled + live)
                    elif settled + reserve > limit:
                        refuse(kind, index, period_end, limit, settled + live)
                    elif settled + live + reserve > limit:
                        refuse(kind, index, _IN_FLIGHT_RETRY_US, limit, settled + live)

        # 2. Record, only when nothing refused.
        if best is None:
            rid = request.reservation_id
            ttl_us = int(request.ttl_s * 1_000_000)
            for item, state in zip(request.scopes, states):
                limits = item.limits
                if limits.requests_per_minute is not None:
                    state.rpm.add(now, rid)
                if limits.tokens_per_minute is not None:
                    state.tpm.add(now, rid, reserve)
                if not _LIVE_KINDS.isdisjoint(limits.kinds()):
                    state.live.add(now + ttl_us, rid, reserve)
            expiry = now + ttl_us + self._settle_grace_us
            self._records[(request.team, rid)] = (expiry, {"day": periods.day, "month": periods.month})
            heapq.heappush(self._record_expiry, (expiry, request.team, rid))

        # 3. What the client sees.
        requests_state = tokens_state = None
        for item, state in zip(request.scopes, states):
            rpm, tpm = item.limits.requests_per_minute, item.limits.tokens_per_minute
            if rpm is not None:
                w = _window_state(state.rpm, rpm, len(state.rpm), now)
                if requests_state is None or w.remaining < requests_state.remaining:
                    requests_state = w
            if tpm is not None:
                w = _window_state(state.tpm, tpm, state.tpm.total, now)
                if tokens_state is None or w.remaining < tokens_state.remaining:
                    tokens_state = w
        rejection = None
        if best is not None:
            rejection = Rejection(
                kind=best.kind,
                scope=request.scopes[best.scope_index].scope,
                limit=best.limit,
                used=best.used,
                retry_after_s=None if best.retry_us < 0 else best.retry_us / 1_000_000,
            )
        return AdmitResult(
            rejection=rejection,
            requests=_clamped(requests_state),
            tokens=_clamped(tokens_state),
            day=periods.day,
            month=periods.month,
        )

    @staticmethod
    def _tokens_retry(log: ScoredLog, need: int, now: int) -> int:
        for score, entry_id in log.ordered():
            need -= log.amounts.get(entry_id, 0)
            if need <= 0:
                return score + _WINDOW_US - now
        return _WINDOW_US

    def _settle(self, s: Settlement) -> bool:
        now = self._now_us()
        self._expire_records(now)
        if s.mode is not SettleMode.USAGE_ONLY:
            if self._records.pop((s.team, s.reservation_id), None) is None:
                return False
        used = 0 if s.mode is SettleMode.RELEASE else s.prompt_tokens + s.completion_tokens
        record = s.mode is not SettleMode.RELEASE
        today = periods_at(now)
        keep = {"d:" + s.day, "m:" + s.month, "d:" + today.day, "m:" + today.month}
        for scope in s.scopes:
            state = self._scopes[(s.team, scope)]
            if s.mode is not SettleMode.USAGE_ONLY:
                state.tpm.set_amount(s.reservation_id, used)
                state.live.remove(s.reservation_id)
            if record and used > 0:
                state.acct["d:" + s.day] = state.acct.get("d:" + s.day, 0) + used
                state.acct["m:" + s.month] = state.acct.get("m:" + s.month, 0) + used
                for stale in [f for f in state.acct if f not in keep]:
                    del state.acct[stale]
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


def _window_state(log: ScoredLog, limit: int, used: int, now: int) -> WindowState:
    reset = max(0, log.score_at(0) + _WINDOW_US - now) if len(log) else 0
    return WindowState(limit=limit, remaining=limit - used, reset_s=reset / 1_000_000)


def _clamped(state: WindowState | None) -> WindowState | None:
    if state is None:
        return None
    return WindowState(limit=state.limit, remaining=max(0, state.remaining), reset_s=state.reset_s)
