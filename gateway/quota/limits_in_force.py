"""Which limits apply to a scope right now: admin-set limits where there are any, else the quota file's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.quota.config import QuotaConfig
from gateway.quota.limits import TEAM_SCOPE, QuotaLimits, Scope, ScopeKind, ScopeLimits
from gateway.quota.store import OverrideKey


class QuotaConfigSource(Protocol):
    """Gives the current file configuration (QuotaConfigFile or StaticQuotaConfig)."""

    def current(self) -> QuotaConfig: ...


@dataclass(frozen=True)
class ScopeView:
    scope: Scope
    limits: QuotaLimits
    source: str  # "admin" (set through the API), "file", "default" or "none" (unlimited)


@dataclass(frozen=True)
class RequestLimits:
    """The limits of one (team, key, model) with what the request path asks of them, worked out once."""

    scopes: tuple[ScopeLimits, ...]  # the team scope, then the key and model scopes when present
    names: tuple[Scope, ...]  # the scopes alone, in the same order
    counts_tokens: bool  # a token limit applies: the prompt's reservation matters
    limits_concurrency: bool  # a max_concurrent limit applies


def _request_limits(scopes: tuple[ScopeLimits, ...]) -> RequestLimits:
    return RequestLimits(
        scopes=scopes,
        names=tuple(item.scope for item in scopes),
        counts_tokens=any(item.limits.limits_tokens() for item in scopes),
        limits_concurrency=any(item.limits.max_concurrent is not None for item in scopes),
    )


# Resolved limits kept per (team, key, model) until the file or the admin-set limits change;
# past this many the cache starts afresh (many keys and models must not grow it without bound).
REQUEST_CACHE_SIZE = 4096


class LimitsInForce:
    """The quota file plus this process's copy of the admin-set limits (refreshed from the store by the
    service). An admin-set scope replaces the file's limits of that scope entirely."""

    def __init__(self, config: QuotaConfigSource):
        self.config = config
        self._overrides: dict[OverrideKey, QuotaLimits] = {}
        # Every admitted request asks for_request; resolving builds pydantic models, so the answer
        # is kept for as long as the configuration object and the overrides are the same.
        self._requests: dict[tuple[str, str | None, str | None], RequestLimits] = {}
        self._requests_config: QuotaConfig | None = None

    def replace_overrides(self, overrides: dict[OverrideKey, QuotaLimits]) -> None:
        self._overrides = dict(overrides)
        self._requests.clear()

    def override(self, team: str, scope: Scope) -> QuotaLimits | None:
        return self._overrides.get((team, scope))

    def set_override(self, team: str, scope: Scope, limits: QuotaLimits | None) -> None:
        if limits is None:
            self._overrides.pop((team, scope), None)
        else:
            self._overrides[(team, scope)] = limits
        self._requests.clear()

    def effective(self, team: str, scope: Scope, config: QuotaConfig | None = None) -> ScopeView:
        override = self._overrides.get((team, scope))
        if override is not None:
            return ScopeView(scope, override, "admin")
        return ScopeView(scope, *(config or self.config.current()).limits_for(team, scope))

    def for_request(self, team: str, key_id: str | None, model: str | None) -> tuple[ScopeLimits, ...]:
        """The team scope, then the key and model scopes when the request has them."""
        return self.resolve(team, key_id, model).scopes

    def resolve(self, team: str, key_id: str | None, model: str | None) -> RequestLimits:
        """``for_request``'s scopes with the flags the request path reads (kept as long as they hold)."""
        config = self.config.current()
        if config is not self._requests_config:  # the file was reloaded (or this is the first call)
            self._requests.clear()
            self._requests_config = config
        cache_key = (team, key_id, model)
        cached = self._requests.get(cache_key)
        if cached is not None:
            return cached
        if len(self._requests) >= REQUEST_CACHE_SIZE:
            self._requests.clear()
        scopes = [TEAM_SCOPE]
        if key_id is not None:
            scopes.append(Scope(ScopeKind.KEY, key_id))
        if model is not None:
            scopes.append(Scope(ScopeKind.MODEL, model))
        resolved = _request_limits(tuple(ScopeLimits(s, self.effective(team, s, config).limits) for s in scopes))
        self._requests[cache_key] = resolved
        return resolved

    def views(self, team: str) -> list[ScopeView]:
        """Every scope of a team that has limits from the file or the admin API, the team scope first."""
        config = self.config.current()
        scopes = {TEAM_SCOPE, *config.scopes_of(team), *(s for (t, s) in self._overrides if t == team)}
        ordered = sorted(scopes, key=lambda s: (s.kind is not ScopeKind.TEAM, s.kind.value, s.name))
        return [self.effective(team, s, config) for s in ordered]
