"""The limit checks of the in-process store, shared by its admit and extend: the Python twin of the
helpers in lua/common.lua (keep the two in step)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.quota.headers import WindowState
from gateway.quota.limits import LimitKind, ScopeLimits
from gateway.quota.periods import Periods
from gateway.quota.scored_log import ScoredLog
from gateway.quota.store import IN_FLIGHT_RETRY_S, RATE_WINDOW_S, Rejection

WINDOW_US = int(RATE_WINDOW_S * 1_000_000)
IN_FLIGHT_RETRY_US = int(IN_FLIGHT_RETRY_S * 1_000_000)


@dataclass
class Refusal:
    kind: LimitKind
    scope_index: int
    retry_us: int  # -1: never
    limit: int
    used: int


class Refusals:
    """Collects the refusals of one check; the one that keeps the request out longest wins (-1,
    never, beats everything)."""

    def __init__(self) -> None:
        self.best: Refusal | None = None

    def add(self, kind: LimitKind, index: int, retry_us: int, limit: int, used: int) -> None:
        best = self.best
        if best is None or (best.retry_us != -1 and (retry_us == -1 or retry_us > best.retry_us)):
            self.best = Refusal(kind, index, retry_us, limit, used)

    def rejection(self, scopes: tuple[ScopeLimits, ...]) -> Rejection | None:
        best = self.best
        if best is None:
            return None
        return Rejection(
            kind=best.kind,
            scope=scopes[best.scope_index].scope,
            limit=best.limit,
            used=best.used,
            retry_after_s=None if best.retry_us < 0 else best.retry_us / 1_000_000,
        )


def tokens_retry(log: ScoredLog, need: int, now: int, skip: str | None = None) -> int:
    """When the tokens window frees room for ``need`` more tokens; ``skip``'s leaving frees nothing."""
    for score, entry_id in log.ordered():
        if entry_id == skip:
            continue
        need -= log.amounts.get(entry_id, 0)
        if need <= 0:
            return score + WINDOW_US - now
    return WINDOW_US


def check_tpm(refusals: Refusals, index: int, tpm: int, log: ScoredLog, others: int, reserve: int, now: int,
              skip: str | None = None) -> None:
    """tokens_per_minute: ``reserve`` more tokens beside the ``others`` held in the window."""
    if reserve > tpm:
        refusals.add(LimitKind.TOKENS_PER_MINUTE, index, -1, tpm, others)
    elif others + reserve > tpm:
        refusals.add(LimitKind.TOKENS_PER_MINUTE, index, tokens_retry(log, others + reserve - tpm, now, skip), tpm, others)


def check_budgets(refusals: Refusals, index: int, per_day: int | None, per_month: int | None, acct: dict[str, int],
                  live: int, reserve: int, periods: Periods) -> None:
    """tokens_per_day and tokens_per_month: ``reserve`` more tokens beside the settled ones and the
    ``live`` tokens other requests hold in flight."""
    for kind, limit, fld, period_end in (
        (LimitKind.TOKENS_PER_DAY, per_day, "d:" + periods.day, periods.day_end_us),
        (LimitKind.TOKENS_PER_MONTH, per_month, "m:" + periods.month, periods.month_end_us),
    ):
        if limit is None:
            continue
        settled = acct.get(fld, 0)
        if reserve > limit:
            refusals.add(kind, index, -1, limit, settled + live)
        elif settled + reserve > limit:
            refusals.add(kind, index, period_end, limit, settled + live)
        elif settled + live + reserve > limit:
            refusals.add(kind, index, IN_FLIGHT_RETRY_US, limit, settled + live)


def rate_states(scopes: Iterable[tuple[ScopeLimits, ScoredLog, ScoredLog]], now: int,
                skip: str | None = None) -> tuple[WindowState | None, WindowState | None]:
    """What the client sees: for requests and for tokens per minute, the scope with the least room.
    ``scopes``: each scope's limits with its requests log and its tokens log; ``skip`` is left out, as
    if it were already released."""
    # (limit, remaining, log) of the tightest scope so far; its WindowState is built once, at the end
    requests = tokens = None
    for item, rpm_log, tpm_log in scopes:
        limits = item.limits
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        if rpm is not None:
            remaining = rpm - (len(rpm_log) - (skip in rpm_log))
            if requests is None or remaining < requests[1]:
                requests = (rpm, remaining, rpm_log)
        if tpm is not None:
            remaining = tpm - (tpm_log.total - tpm_log.amounts.get(skip, 0))
            if tokens is None or remaining < tokens[1]:
                tokens = (tpm, remaining, tpm_log)
    return _window_state(requests, now, skip), _window_state(tokens, now, skip)


def _window_state(tightest: tuple[int, int, ScoredLog] | None, now: int, skip: str | None) -> WindowState | None:
    """The client's view of one window (``remaining`` never below 0); None when no limit is in play."""
    if tightest is None:
        return None
    limit, remaining, log = tightest
    oldest = None
    for index in range(min(2, len(log))):
        score, entry_id = log.entry_at(index)
        if entry_id != skip:
            oldest = score
            break
    reset = 0 if oldest is None else max(0, oldest + WINDOW_US - now)
    return WindowState(limit=limit, remaining=max(0, remaining), reset_s=reset / 1_000_000)
