"""The five limit kinds, a set of limits for one scope, and the scopes a request is counted in."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class LimitKind(str, Enum):
    """What a limit counts. Rates use a rolling 60-second window; budgets use UTC calendar periods."""

    REQUESTS_PER_MINUTE = "requests_per_minute"
    TOKENS_PER_MINUTE = "tokens_per_minute"  # prompt + completion
    MAX_CONCURRENT = "max_concurrent"
    TOKENS_PER_DAY = "tokens_per_day"
    TOKENS_PER_MONTH = "tokens_per_month"

    @property
    def is_budget(self) -> bool:
        return self in (LimitKind.TOKENS_PER_DAY, LimitKind.TOKENS_PER_MONTH)

    @property
    def counts_tokens(self) -> bool:
        return self in TOKEN_KINDS


# The order the stores use to pass limits around (Lua arguments, result codes 1..5).
LIMIT_KINDS: tuple[LimitKind, ...] = tuple(LimitKind)
TOKEN_KINDS = frozenset({LimitKind.TOKENS_PER_MINUTE, LimitKind.TOKENS_PER_DAY, LimitKind.TOKENS_PER_MONTH})

_KIND_FIELDS = tuple((kind, kind.value) for kind in LimitKind)  # read per request: no Enum lookups

NonNegativeInt = Annotated[int, Field(ge=0, le=2**50)]  # bounded so Lua's doubles stay exact


class QuotaLimits(BaseModel):
    """Limits of one scope. ``None`` means unlimited; 0 blocks the scope entirely."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    requests_per_minute: NonNegativeInt | None = None
    tokens_per_minute: NonNegativeInt | None = None
    max_concurrent: NonNegativeInt | None = None
    tokens_per_day: NonNegativeInt | None = None
    tokens_per_month: NonNegativeInt | None = None

    def get(self, kind: LimitKind) -> int | None:
        return getattr(self, kind.value)

    def is_unlimited(self) -> bool:
        return all(self.get(kind) is None for kind in LimitKind)

    def limits_tokens(self) -> bool:
        """Whether any token limit (per minute, day or month) is set: only then do reservations matter."""
        return any(self.get(kind) is not None for kind in TOKEN_KINDS)

    def kinds(self) -> frozenset[LimitKind]:
        """The kinds this scope actually limits (worked out once: the limits are frozen)."""
        return self._kinds

    @cached_property
    def _kinds(self) -> frozenset[LimitKind]:
        return frozenset(kind for kind, name in _KIND_FIELDS if getattr(self, name) is not None)


UNLIMITED = QuotaLimits()


class ScopeKind(str, Enum):
    TEAM = "team"
    KEY = "key"  # one API key of the team
    MODEL = "model"  # the team's use of one model


@dataclass(frozen=True)
class Scope:
    """Where a request is counted: the team itself, one of its keys, or its use of one model."""

    kind: ScopeKind
    name: str = ""  # key id or model name; empty for the team scope

    def __post_init__(self) -> None:
        if (self.kind is ScopeKind.TEAM) != (self.name == ""):
            raise ValueError("the team scope has no name; key and model scopes need one")

    def __hash__(self) -> int:
        # The stores look scopes up per request; the generated hash goes through the Enum's
        # Python-level __hash__, the kind's value is hashed in C. Equal scopes still hash equal.
        return hash((self.kind._value_, self.name))

    def label(self) -> str:
        return "team" if self.kind is ScopeKind.TEAM else f"{self.kind.value} {self.name!r}"


TEAM_SCOPE = Scope(ScopeKind.TEAM)


@dataclass(frozen=True)
class ScopeLimits:
    """A scope together with the limits that apply to it for one request."""

    scope: Scope
    limits: QuotaLimits
