"""Typed quota errors. `gateway.quota.http` turns them into OpenAI-shaped responses."""
from __future__ import annotations

from gateway.quota.limits import LimitKind, Scope, ScopeKind


class QuotaError(Exception):
    """Base of every error the quota layer raises on purpose."""


class QuotaExceeded(QuotaError):
    """A limit refused the request (HTTP 429). Nothing was consumed from any limit.

    ``retry_after_s`` is when the refusing limit will have room again, or None when the request can
    never fit (it asks for more than the limit itself, or the limit is 0).
    ``headers`` are the x-ratelimit-* headers to send with the 429.
    """

    def __init__(
        self,
        *,
        team: str,
        limit_kind: LimitKind,
        scope: Scope,
        limit: int,
        used: int,
        requested: int,
        retry_after_s: float | None,
        headers: dict[str, str],
    ):
        self.team = team
        self.limit_kind = limit_kind
        self.scope = scope
        self.limit = limit
        self.used = used
        self.requested = requested
        self.retry_after_s = retry_after_s
        self.headers = headers
        super().__init__(self.message)

    @property
    def never_fits(self) -> bool:
        return self.retry_after_s is None

    @property
    def message(self) -> str:
        from gateway.quota.headers import format_duration  # local: headers imports nothing from here

        headline = "Token budget exhausted" if self.limit_kind.is_budget else "Rate limit reached"
        where = f"team {self.team!r}"
        if self.scope.kind is not ScopeKind.TEAM:
            where += f", {self.scope.label()}"
        text = (
            f"{headline} on {_KIND_WORDS[self.limit_kind]} for {where}: "
            f"limit {self.limit}, used {self.used}, requested {self.requested}."
        )
        if self.retry_after_s is None:
            return text + " This request can never fit within the limit."
        return text + f" Please try again in {format_duration(self.retry_after_s)}."


_KIND_WORDS = {
    LimitKind.REQUESTS_PER_MINUTE: "requests per min (RPM)",
    LimitKind.TOKENS_PER_MINUTE: "tokens per min (TPM)",
    LimitKind.MAX_CONCURRENT: "concurrent requests",
    LimitKind.TOKENS_PER_DAY: "tokens per day (UTC)",
    LimitKind.TOKENS_PER_MONTH: "tokens per month (UTC)",
}


class QuotaUnavailable(QuotaError):
    """The quota store cannot be reached and the outage policy of a limit in play is fail-closed (HTTP 503)."""

    def __init__(self, message: str, *, retry_after_s: float):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class QuotaStoreError(QuotaError):
    """The backing store failed (connection refused, timeout, server error). Feeds the circuit breaker.

    ``maybe_applied``: the call may have taken effect before its reply was lost (a timeout).
    """

    def __init__(self, message: str, *, maybe_applied: bool = False):
        super().__init__(message)
        self.maybe_applied = maybe_applied


class InvalidQuotaRequest(QuotaError, ValueError):
    """A caller passed something the quota layer cannot accept (HTTP 400)."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
