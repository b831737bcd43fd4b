"""The five limit kinds, a set of limits for one scope, and the scopes a request is counted in."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
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

NonNegativeInt = Annotated[int, Field(ge=0, le=2**50)]  # bounded so Lua's doubles stay exact

# The team's scheduling policy inside the engine (team scope only): a priority class, lower served
# first, and a fair-share weight. Admin policy: clients cannot choose either.
PRIORITY_CLASSES = (-10, 10)
WEIGHT_RANGE = (0.01, 100.0)
DEFAULT_PRIORITY = 0
DEFAULT_WEIGHT = 1.0
PriorityClass = Annotated[int, Field(ge=PRIORITY_CLASSES[0], le=PRIORITY_CLASSES[1])]
Weight = Annotated[float, Field(ge=WEIGHT_RANGE[0], le=WEIGHT_RANGE[1], allow_inf_nan=False)]
SCHEDULING_FIELDS = ("priority", "weight")


class QuotaLimits(BaseModel):
    """Limits of one scope. ``None`` means unlimited; 0 blocks the scope entirely. The team scope also
    carries the team's scheduling policy in the engine: ``priority`` (its class: lower is served first,
    -10..10, default 0) and ``weight`` (its fair share, 0.01..100, default 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    requests_per_minute: NonNegativeInt | None = None
    tokens_per_minute: NonNegativeInt | None = None
    max_concurrent: NonNegativeInt | None = None
    tokens_per_day: NonNegativeInt | None = None
    tokens_per_month: NonNegativeInt | None = None
    # Scheduling policy of the team scope (None: the default class 0 and weight 1).
    priority: PriorityClass | None = None
    weight: Weight | None = None

    def get(self, kind: LimitKind) -> int | None:
        return getattr(self, kind.value)

    def has_scheduling(self) -> bool:
        return self.priority is not None or self.weight is not None

    def scheduling(self) -> tuple[int, float]:
        """(priority class, weight) in force, defaults filled in."""
        return (DEFAULT_PRIORITY if self.priority is None else self.priority,
                DEFAULT_WEIGHT if self.weight is None else float(self.weight))

    def is_unlimited(self) -> bool:
        return all(self.get(kind) is None for kind in LimitKind)

    def limits_tokens(self) -> bool:
        """Whether any token limit (per minute, day or month) is set: only then do reservations matter."""
        return any(self.get(kind) is not None for kind in TOKEN_KINDS)

    def kinds(self) -> set[LimitKind]:
        """The kinds this scope actually limits."""
        return {kind for kind in LimitKind if self.get(kind) is not None}


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

    def label(self) -> str:
        return "team" if self.kind is ScopeKind.TEAM else f"{self.kind.value} {self.name!r}"


TEAM_SCOPE = Scope(ScopeKind.TEAM)


@dataclass(frozen=True)
class ScopeLimits:
    """A scope together with the limits that apply to it for one request."""

    scope: Scope
    limits: QuotaLimits
