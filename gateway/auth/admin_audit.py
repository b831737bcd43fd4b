"""The seam through which identity changes reach the audit log.

Every admin change (team created, key created or revoked, team disabled) is reported here with who did
it, what, on which target, and the state before and after. The audit log supplies the real recorder;
the default one records nothing. Key secrets and hashes never appear in `before` or `after`.
"""
from __future__ import annotations

from typing import Any, Protocol

from gateway.auth.principal import Principal


class AdminChangeRecorder(Protocol):
    async def record_admin_change(
        self,
        principal: Principal,
        action: str,  # e.g. "team.create", "key.create", "key.revoke", "team.disable"
        target: str,  # e.g. "team:radiology", "key:0123abcd..."
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None: ...


class NoopAdminChangeRecorder:
    """Records nothing (until the audit log is connected)."""

    async def record_admin_change(self, principal, action, target, before, after) -> None:  # noqa: D102
        return None
