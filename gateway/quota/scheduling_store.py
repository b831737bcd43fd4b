"""Admin-set scheduling (priority class, weight) of teams, in the gateway database.

The database, not the quota store, holds them: they describe teams, which live there, they must survive
restarts of Redis as well as of the gateway, and the `ward quotas` command reaches them with the same
database URL as `ward teams`. Synchronous SQLAlchemy; async callers use a thread.
"""
from __future__ import annotations

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.auth.records import utcnow
from gateway.auth.stores import TeamNotFound
from gateway.db.models_identity import Team
from gateway.db.models_policy import TeamSchedulingPolicy
from gateway.quota.scheduling import SchedulingOverride


def _override(row: TeamSchedulingPolicy) -> SchedulingOverride:
    return SchedulingOverride(priority=row.priority, weight=row.weight)


class SchedulingStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def all(self) -> dict[str, SchedulingOverride]:
        """Every team's admin-set scheduling (teams without any are absent)."""
        with Session(self.engine) as s:
            return {row.team: _override(row) for row in s.scalars(select(TeamSchedulingPolicy))}

    def get(self, team: str) -> SchedulingOverride | None:
        with Session(self.engine) as s:
            row = s.get(TeamSchedulingPolicy, team)
            return _override(row) if row else None

    def team_exists(self, team: str) -> bool:
        with Session(self.engine) as s:
            return s.get(Team, team) is not None

    def put(self, team: str, override: SchedulingOverride | None, *, by: str) -> SchedulingOverride | None:
        """Sets (or with None or an empty override, removes) a team's admin-set scheduling; returns the
        previous one. Raises TeamNotFound for a team the database does not know."""
        with Session(self.engine) as s, s.begin():
            if s.get(Team, team) is None:
                raise TeamNotFound(team)
            row = s.get(TeamSchedulingPolicy, team, with_for_update=True)
            previous = _override(row) if row else None
            if override is None or override.is_empty():
                if row is not None:
                    s.delete(row)
                return previous
            if row is None:
                row = TeamSchedulingPolicy(team=team)
                s.add(row)
            row.priority, row.weight = override.priority, override.weight
            row.updated_at, row.updated_by = utcnow(), by[:200]
            return previous
