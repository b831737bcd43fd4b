"""How quota changes reach the audit log: the quota layer emits QuotaChange events to a sink the
gateway provides (its implementation writes them to the tamper-evident audit log)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from gateway.auth.principal import Principal
from gateway.quota.limits import QuotaLimits, Scope
from gateway.quota.scheduling import TeamScheduling

log = logging.getLogger(__name__)


class ChangeSource(str, Enum):
    ADMIN_API = "admin_api"  # PUT / DELETE /admin/teams/{team}/quotas or /scheduling
    CONFIG_FILE = "config_file"  # an accepted reload of the quota file
    CLI = "cli"  # `ward quotas` on the gateway host


@dataclass(frozen=True)
class QuotaChange:
    """The effective limits of one scope before and after a change (None: unlimited)."""

    source: ChangeSource
    actor: str  # principal subject for the admin API; the file path for reloads
    team: str
    scope: Scope
    before: QuotaLimits
    after: QuotaLimits
    # Admin API only: who made the change (the audit log keeps their team, roles and key id), and
    # whether the change removed admin-set limits (DELETE) rather than setting them (PUT).
    principal: Principal | None = field(default=None, compare=False)
    cleared: bool = False

    def as_dict(self) -> dict:
        return {
            "source": self.source.value,
            "actor": self.actor,
            "team": self.team,
            "scope": {"kind": self.scope.kind.value, "name": self.scope.name or None},
            "before": self.before.model_dump(),
            "after": self.after.model_dump(),
        }


@dataclass(frozen=True)
class SchedulingChange:
    """A team's scheduling policy in force before and after a change (team ``*``: the file's defaults)."""

    source: ChangeSource
    actor: str
    team: str
    before: TeamScheduling
    after: TeamScheduling
    principal: Principal | None = field(default=None, compare=False)
    cleared: bool = False  # admin-set scheduling removed (the file's applies again)

    def as_dict(self) -> dict:
        return {
            "source": self.source.value,
            "actor": self.actor,
            "team": self.team,
            "before": self.before.model_dump(),
            "after": self.after.model_dump(),
        }


class QuotaAuditSink(Protocol):
    """Receives every quota change. An exception from an admin change undoes that change."""

    async def record_quota_change(self, change: QuotaChange) -> None: ...

    async def record_scheduling_change(self, change: SchedulingChange) -> None: ...


class LogAuditSink:
    """Writes changes to the log only: for tests and setups without an audit database."""

    async def record_quota_change(self, change: QuotaChange) -> None:
        log.info("quota change: %s", change.as_dict())

    async def record_scheduling_change(self, change: SchedulingChange) -> None:
        log.info("scheduling change: %s", change.as_dict())
