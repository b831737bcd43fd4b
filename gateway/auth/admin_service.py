"""Identity administration with its permission rules, shared by the /admin API and the `ward` CLI.

Rules: a platform_admin manages every team and the `user`, `team_admin` and `platform_admin` keys of
every team; a team_admin manages keys of its own team only and may mint only `user` and `team_admin`
keys. Separation of duties: `auditor` keys are minted only by a security_officer (or by an operator on
the gateway host, AuthMethod.LOCAL, whose `ward keys` command holds the audit log's signing key), and
`security_officer` keys only by such an operator; no administrator can grant either. Anyone who may
administer a key may revoke it; a platform_admin may revoke every key (removing access grants nothing,
and the revocation is in the log). Each change is reported to the AdminChangeRecorder after it is
committed.
"""
from __future__ import annotations

from datetime import datetime

from starlette.concurrency import run_in_threadpool

from gateway.auth.admin_audit import AdminChangeRecorder, NoopAdminChangeRecorder
from gateway.auth.errors import PermissionDenied
from gateway.auth.principal import OVERSIGHT_ROLES, AuthMethod, Principal, Role
from gateway.auth.records import KeyRecord, TeamRecord
from gateway.auth.stores import KeyNotFound, KeyStore, TeamNotFound, TeamStore

# roles a team admin may hand out within its team
TEAM_ADMIN_GRANTABLE = frozenset({Role.USER, Role.TEAM_ADMIN})
# roles a security officer may hand out (and revoke), in any team
SECURITY_OFFICER_GRANTABLE = frozenset({Role.AUDITOR})


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

    @staticmethod
    def require_grant(actor: Principal, team: str, role: Role) -> None:
        """Raises PermissionDenied unless ``actor`` may mint a ``role`` key in ``team``."""
        if role in OVERSIGHT_ROLES:
            if actor.auth_method is AuthMethod.LOCAL:
                return  # the gateway host's operator, holding the audit signing key (see `ward keys`)
            if role in SECURITY_OFFICER_GRANTABLE and actor.has(Role.SECURITY_OFFICER):
                return
            who = "a security_officer" if role in SECURITY_OFFICER_GRANTABLE else "nobody through the API"
            raise PermissionDenied(
                f"{role.value} keys are granted by {who} (or with `ward keys create` on the gateway host): "
                "separation of duties keeps this right away from administrators.",
                code="separation_of_duties",
            )
        if not IdentityAdmin.can_manage_team(actor, team):
            raise PermissionDenied("This action needs platform_admin, or team_admin of this team.")
        if not actor.has(Role.PLATFORM_ADMIN) and role not in TEAM_ADMIN_GRANTABLE:
            raise PermissionDenied(f"A team admin cannot create {role.value} keys.")

    @staticmethod
    def may_revoke(actor: Principal, key: KeyRecord) -> bool:
        role = Role(key.role)
        if actor.has(Role.PLATFORM_ADMIN) or actor.auth_method is AuthMethod.LOCAL:
            return True
        if actor.has(Role.SECURITY_OFFICER):
            return role in SECURITY_OFFICER_GRANTABLE
        return actor.has(Role.TEAM_ADMIN) and actor.team == key.team and role in TEAM_ADMIN_GRANTABLE

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
        self.require_grant(actor, team, role)
        record, text = await run_in_threadpool(
            lambda: self.keys.create(team, role, description=description, created_by=actor.subject, expires_at=expires_at)
        )
        await self.recorder.record_admin_change(actor, "key.create", f"key:{record.id}", None, record.to_dict())
        return record, text

    async def list_keys(self, actor: Principal, team: str) -> list[KeyRecord]:
        """The team's keys; a security officer sees only the keys it may administer (auditor keys)."""
        officer = actor.has(Role.SECURITY_OFFICER) and not self.can_manage_team(actor, team)
        if not officer:
            self.require_team_manager(actor, team)
        if await run_in_threadpool(self.teams.get, team) is None:
            raise TeamNotFound(team)
        records = await run_in_threadpool(self.keys.list, team)
        if officer:
            records = [r for r in records if Role(r.role) in SECURITY_OFFICER_GRANTABLE]
        return records

    async def revoke_key(self, actor: Principal, key_id: str) -> KeyRecord:
        """Revokes a key. A caller who may not administer the key gets KeyNotFound (no existence leak)."""
        if not actor.has_any((Role.PLATFORM_ADMIN, Role.TEAM_ADMIN, Role.SECURITY_OFFICER)) and actor.auth_method is not AuthMethod.LOCAL:
            raise PermissionDenied("This action needs platform_admin, security_officer, or team_admin of the key's team.")
        current = await run_in_threadpool(self.keys.get, key_id)
        if current is None or not self.may_revoke(actor, current):
            raise KeyNotFound(key_id)
        before, after = await run_in_threadpool(self.keys.revoke, key_id)
        await self.recorder.record_admin_change(actor, "key.revoke", f"key:{key_id}", before.to_dict(), after.to_dict())
        return after
