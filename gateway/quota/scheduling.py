"""A team's scheduling policy: its priority class and its fair-share weight, set by admins.

Both travel to the engine with every Generate call of the team (``GenerateRequest.team_priority`` and
``team_weight``): the class orders teams (a lower class is served first), the weight sets the team's
share of the service among teams of the same class (service is counted in tokens per team). A client's
own ``priority`` field orders requests only within its team, so no caller can change another team's
service. The policy comes from the quota file (``defaults`` and per team) and from the admin API and
``ward quotas``, whose values replace the file's field by field.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MIN_PRIORITY, MAX_PRIORITY = -10, 10
MIN_WEIGHT, MAX_WEIGHT = 0.01, 100.0
DEFAULT_PRIORITY = 0
DEFAULT_WEIGHT = 1.0

# Strict: an integer class (no floats, strings or booleans); a finite weight (integers are accepted).
Priority = Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY, strict=True)]
Weight = Annotated[float, Field(ge=MIN_WEIGHT, le=MAX_WEIGHT, allow_inf_nan=False, strict=True)]


class TeamScheduling(BaseModel):
    """The scheduling policy in force for one team."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: Priority = DEFAULT_PRIORITY
    weight: Weight = DEFAULT_WEIGHT


class SchedulingOverride(BaseModel):
    """Scheduling fields set by an admin (API or CLI); a field left out or null keeps the file's value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: Priority | None = None
    weight: Weight | None = None

    def is_empty(self) -> bool:
        return self.priority is None and self.weight is None


DEFAULT_SCHEDULING = TeamScheduling()


class SchedulingView(BaseModel):
    """The policy in force for a team and where each field comes from: ``admin`` (API or CLI), ``file``
    (the team's entry of the quota file), ``default`` (the file's ``defaults``) or ``none`` (built in)."""

    model_config = ConfigDict(frozen=True)

    scheduling: TeamScheduling
    priority_source: str
    weight_source: str

    def as_dict(self) -> dict:
        return {
            "priority": self.scheduling.priority,
            "weight": self.scheduling.weight,
            "source": {"priority": self.priority_source, "weight": self.weight_source},
        }
