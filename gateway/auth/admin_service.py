"""Identity administration with its permission rules, shared by the /admin API and the `ward` CLI.

Rules: a platform_admin manages every team and key; a team_admin manages keys of its own team only and
may mint only `user` and `team_admin` keys; nobody else administers anything. Each change is reported
to the AdminChangeRecorder after it is committed.
"""
from __future__ import annotations

from datetime import datetime

from starlette.concurrency import run_in_threadpool

from gateway.auth.admin_audit import AdminChangeRecorder, NoopAdminChangeRecorder
from gateway.auth.errors import PermissionDenied
from gateway.auth.principal import Principal, Role
from gateway.auth.records import KeyRecord, TeamRecord
from gateway.auth.stores import KeyNotFound, KeyStore, TeamNotFound, TeamStore

# roles a team admin may hand out within its team
TEAM_ADMIN_GRANTABLE = frozenset({Role.USER, Role.TEAM_ADMIN})


class IdentityAdmin:
    def __init__(self, teams: TeamStore, keys: KeyStore, recorder: AdminChangeRecorder | None = None):
        self.teams = teams
        self.keys = keys
        self.recorder = recorder or NoopAdminChangeRecorder()

    # --- permission checks -------------------------------------------------------------------
    @staticmethod
    def require_platform_admin(actor: Principal) -> None:
        if not actor.has(Role.PLATFORM_ADMIN):
            raise PermissionDenied("This action needs the platform_admin role.")

    @staticmethod
    def can_manage_team(actor: Principal, team: str) -> bool:
        return actor.has(Role.PLATFORM_ADMIN) or (actor.has(Role.TEAM_ADMIN) and actor.team == team)

    def require_team_manager(self, actor: Principal, team: str) -> None:
        if not self.can_manage_team(actor, team):
            raise PermissionDenied("This action needs platform_admin, or team_admin of this team.")

    # --- teams -------------------------------------------------------------------------------
    async def create_team(self, actor: Principal, name: str, display_name: str = "", capture_level: str = "full") -> TeamRecord:
        self.require_platform_admin(actor)
        team = await run_in_threadpool(self.teams.create, name, display_name, capture_level)
        await self.recorder.record_admin_change(actor, "team.create", f"team:{name}", None, team.to_dict())
        return team

    async def list_teams(self, actor: Principal) -> list[TeamRecord]:
        """All teams for a platform admin, its own team for a team admin."""
        if actor.has(Role.PLATFORM_ADMIN):
            return await run_in_threadpool(self.teams.list)
        if actor.has(Role.TEAM_ADMIN):
            return await run_in_threadpool(self.teams.list, [actor.team])
        raise PermissionDenied("This action needs platform_admin or team_admin.")

    async def set_team_disabled(self, actor: Principal, name: str, disabled: bool) -> TeamRecord:
        self.require_platform_admin(actor)
        before, after = await run_in_threadpool(self.teams.set_disabled, name, disabled)
        action = "team.disable" if disabled else "team.enable"
        await self.recorder.record_admin_change(actor, action, f"team:{name}", before.to_dict(), after.to_dict())
        return after

    # --- keys --------------------------------------------------------------------------------
    async def create_key(
        self,
        actor: Principal,
        team: str,
        role: Role | str = Role.USER,
        *,
        description: str = "",
        expires_at: datetime | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key: (record, key text shown once). Raises PermissionDenied, TeamNotFound, InvalidIdentityInput."""
        role = Role(role)
        self.require_team_manager(actor, team)
        if not actor.has(Role.PLATFORM_ADMIN) and role not in TEAM_ADMIN_GRANTABLE:
            raise PermissionDenied(f"A team admin cannot create {role.value} keys.")
        record, text = await run_in_threadpool(
            lambda: self.keys.create(team, role, description=description, created_by=actor.subject, expires_at=expires_at)
        )
        await self.recorder.record_admin_change(actor, "key.create", f"key:{record.id}", None, record.to_dict())
        return record, text

    async def list_keys(self, actor: Principal, team: str) -> list[KeyRecord]:
        self.require_team_manager(actor, team)
        if await run_in_threadpool(self.teams.get, team) is None:
            raise TeamNotFound(team)
        return await run_in_threadpool(self.keys.list, team)

    async def revoke_key(self, actor: Principal, key_id: str) -> KeyRecord:
        """Revokes a key. A team admin asking about another team's key gets KeyNotFound (no existence leak)."""
        if not actor.has_any((Role.PLATFORM_ADMIN, Role.TEAM_ADMIN)):
            raise PermissionDenied("This action needs platform_admin, or team_admin of the key's team.")
        current = await run_in_threadpool(self.keys.get, key_id)
        if current is None or not self.can_manage_team(actor, current.team):
            raise KeyNotFound(key_id)
        before, after = await run_in_threadpool(self.keys.revoke, key_id)
        await self.recorder.record_admin_change(actor, "key.revoke", f"key:{key_id}", before.to_dict(), after.to_dict())
        return after
