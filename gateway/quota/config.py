"""The quota configuration file's schema (config/quotas.yaml) and how it resolves to a scope's limits."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gateway.identifiers import KeyId, ModelName, TeamName
from gateway.quota.limits import UNLIMITED, LimitKind, QuotaLimits, Scope, ScopeKind
from gateway.quota.scheduling import (
    DEFAULT_PRIORITY,
    DEFAULT_WEIGHT,
    Priority,
    SchedulingOverride,
    SchedulingView,
    TeamScheduling,
    Weight,
)

class QuotaDefaults(QuotaLimits):
    """``defaults``: the team-scope limits of every team, and the scheduling class and weight of every
    team whose entry sets none (left out: class 0, weight 1.0)."""

    priority: Priority | None = None
    weight: Weight | None = None

    @property
    def limits(self) -> QuotaLimits:
        return QuotaLimits(**{kind.value: self.get(kind) for kind in LimitKind})


class TeamQuotaConfig(BaseModel):
    """One team's entry. Fields left out of ``limits`` inherit ``defaults``; an explicit null is unlimited.
    ``keys`` and ``models`` add limits of their own on one API key or on the team's use of one model.
    ``priority`` and ``weight``, when given, replace those of ``defaults`` (see gateway.quota.scheduling)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limits: QuotaLimits = Field(default_factory=QuotaLimits)
    # The names' own rules: an entry no team, key or model could match would never apply.
    keys: dict[KeyId, QuotaLimits] = Field(default_factory=dict)
    models: dict[ModelName, QuotaLimits] = Field(default_factory=dict)
    priority: Priority | None = None
    weight: Weight | None = None


class QuotaConfig(BaseModel):
    """The whole file. ``defaults`` are the team-scope limits and scheduling of every team, listed or not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: QuotaDefaults = Field(default_factory=QuotaDefaults)
    teams: dict[TeamName, TeamQuotaConfig] = Field(default_factory=dict)

    def limits_for(self, team: str, scope: Scope) -> tuple[QuotaLimits, str]:
        """The limits this file gives one scope of a team, and where they come from:
        "file" (the team's own entry), "default" (the defaults) or "none" (unlimited)."""
        entry = self.teams.get(team)
        defaults = self.defaults.limits
        if scope.kind is ScopeKind.TEAM:
            if entry is None or not entry.limits.model_fields_set:
                return defaults, "default" if not defaults.is_unlimited() else "none"
            merged = defaults.model_dump() | entry.limits.model_dump(exclude_unset=True)
            return QuotaLimits.model_validate(merged), "file"
        table = {} if entry is None else (entry.keys if scope.kind is ScopeKind.KEY else entry.models)
        if scope.name in table:
            return table[scope.name], "file"
        return UNLIMITED, "none"

    def scheduling_for(self, team: str, override: SchedulingOverride | None = None) -> SchedulingView:
        """The scheduling policy of a team: each field from ``override`` (admin-set) when it sets it,
        else from the team's entry, else from ``defaults``, else built in (class 0, weight 1.0)."""
        entry = self.teams.get(team)
        values, sources = {}, {}
        for name, builtin in (("priority", DEFAULT_PRIORITY), ("weight", DEFAULT_WEIGHT)):
            for source, layer in (("admin", override), ("file", entry), ("default", self.defaults)):
                value = None if layer is None else getattr(layer, name)
                if value is not None:
                    values[name], sources[name] = value, source
                    break
            else:
                values[name], sources[name] = builtin, "none"
        return SchedulingView(
            scheduling=TeamScheduling(**values), priority_source=sources["priority"], weight_source=sources["weight"]
        )

    def scopes_of(self, team: str) -> list[Scope]:
        """The key and model scopes the file names for a team (the team scope is implied)."""
        entry = self.teams.get(team)
        if entry is None:
            return []
        return [Scope(ScopeKind.KEY, k) for k in entry.keys] + [Scope(ScopeKind.MODEL, m) for m in entry.models]


EMPTY_CONFIG = QuotaConfig()


ALL_TEAMS = "*"  # the team named in changes of `defaults`, which reach every team without limits of its own


def diff_configs(old: QuotaConfig, new: QuotaConfig) -> list[tuple[str, Scope, QuotaLimits, QuotaLimits]]:
    """(team, scope, before, after) for every scope whose limits differ between two configurations.
    A change of ``defaults`` is reported once under team ``*``, plus per listed team it reaches."""
    changes = []
    if old.defaults.limits != new.defaults.limits:
        changes.append((ALL_TEAMS, Scope(ScopeKind.TEAM), old.defaults.limits, new.defaults.limits))
    for team in sorted(set(old.teams) | set(new.teams)):
        scopes = [Scope(ScopeKind.TEAM)] + sorted(
            set(old.scopes_of(team)) | set(new.scopes_of(team)), key=lambda s: (s.kind.value, s.name)
        )
        for scope in scopes:
            (before, _), (after, _) = old.limits_for(team, scope), new.limits_for(team, scope)
            if before != after:
                changes.append((team, scope, before, after))
    return changes


def diff_scheduling(old: QuotaConfig, new: QuotaConfig) -> list[tuple[str, TeamScheduling, TeamScheduling]]:
    """(team, before, after) for every team whose scheduling from the file differs between two
    configurations; a change of ``defaults`` is reported once under team ``*``, plus per listed team."""
    changes = []
    if (old.defaults.priority, old.defaults.weight) != (new.defaults.priority, new.defaults.weight):
        changes.append((ALL_TEAMS, old.scheduling_for(ALL_TEAMS).scheduling, new.scheduling_for(ALL_TEAMS).scheduling))
    for team in sorted(set(old.teams) | set(new.teams)):
        before, after = old.scheduling_for(team).scheduling, new.scheduling_for(team).scheduling
        if before != after:
            changes.append((team, before, after))
    return changes
