"""The audit log as the quota layer's QuotaAuditSink: every quota change becomes an ``admin`` entry.

Admin API changes are recorded with the caller's principal (``quota.set`` for PUT, ``quota.clear``
for DELETE); accepted reloads of the quota file as ``quota.file_reload`` by the file itself. The
target is ``team:<name>`` (``team:*`` for the file's defaults), and ``before`` / ``after`` hold the
scope and the effective limits, so the record reads on its own. Scheduling changes (a team's priority
class and weight) are recorded the same way as ``scheduling.set``, ``scheduling.clear`` and
``scheduling.file_reload``, with ``before`` / ``after`` holding the policy in force.
"""
from __future__ import annotations

from typing import Any

from gateway.audit.records import Actor
from gateway.auth.admin_audit import AdminChangeRecorder
from gateway.quota.audit import ChangeSource, QuotaChange, SchedulingChange


def quota_change_action(change: QuotaChange) -> str:
    """The admin entry's action for a change: quota.set, quota.clear or quota.file_reload."""
    if change.source is ChangeSource.CONFIG_FILE:
        return "quota.file_reload"
    return "quota.clear" if change.cleared else "quota.set"


def scheduling_change_action(change: SchedulingChange) -> str:
    """The admin entry's action: scheduling.set, scheduling.clear or scheduling.file_reload."""
    if change.source is ChangeSource.CONFIG_FILE:
        return "scheduling.file_reload"
    return "scheduling.clear" if change.cleared else "scheduling.set"


def _who(change: QuotaChange | SchedulingChange) -> Any:
    if change.principal is not None:
        return change.principal
    # a file reload, or a caller that gave no principal
    kind = "config" if change.source is ChangeSource.CONFIG_FILE else "admin"
    return Actor(subject=f"{kind}:{change.actor}", team=None, auth_method="local")


def _state(change: QuotaChange, limits: Any) -> dict[str, Any]:
    scope = {"kind": change.scope.kind.value, "name": change.scope.name or None}
    return {"scope": scope, "limits": limits.model_dump()}


class AuditedQuotaChanges:
    """Writes each QuotaChange to an AdminChangeRecorder (the gateway's AuditLog).

    Raising from ``record_quota_change`` undoes an admin-API change (the quota service's contract),
    so no quota change stays in force without its audit entry.
    """

    def __init__(self, recorder: AdminChangeRecorder) -> None:
        self.recorder = recorder

    async def record_quota_change(self, change: QuotaChange) -> None:
        await self.recorder.record_admin_change(
            _who(change),
            quota_change_action(change),
            f"team:{change.team}",
            _state(change, change.before),
            {**_state(change, change.after), "source": change.source.value},
        )

    async def record_scheduling_change(self, change: SchedulingChange) -> None:
        await self.recorder.record_admin_change(
            _who(change),
            scheduling_change_action(change),
            f"team:{change.team}",
            {"scheduling": change.before.model_dump()},
            {"scheduling": change.after.model_dump(), "source": change.source.value},
        )
