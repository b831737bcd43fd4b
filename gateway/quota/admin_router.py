"""Admin endpoints for quotas, scheduling and usage, as an APIRouter independent of the app.

The app supplies two dependencies: one that yields the authenticated ``Principal`` and one that yields
the process's ``QuotaService``. Platform admins may read and change every team; team admins may read
their own team's limits, scheduling and usage, and change none of them (a team admin must not raise its
own team's class or weight). Register ``install_quota_error_handlers`` (gateway.quota.http) and a
handler for ``PermissionDenied`` on the app so errors leave in OpenAI's shape.
"""
# No `from __future__ import annotations` here: FastAPI must see the dependency aliases defined inside
# make_quota_admin_router as objects, not as strings it would look up in this module's globals.
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from gateway.auth.errors import PermissionDenied
from gateway.auth.principal import Principal, Role
from gateway.auth.stores import TeamNotFound
from gateway.http.errors import NotFound
from gateway.http.query_params import IsoDate, declared_query_only
from gateway.identifiers import KeyId, ModelName, TeamName
from gateway.quota.errors import InvalidQuotaRequest
from gateway.quota.limits import TEAM_SCOPE, QuotaLimits, Scope, ScopeKind
from gateway.quota.limits_in_force import ScopeView
from gateway.quota.scheduling import SchedulingOverride, SchedulingView
from gateway.quota.service import QuotaService
from gateway.quota.usage import UsageGroupBy

TeamPath = Annotated[TeamName, Path(description="team name")]
KeyIdQuery = Annotated[KeyId | None, Query(description="one API key's limits instead of the team's")]
ModelQuery = Annotated[ModelName | None, Query(description="the team's limits on one model")]
TeamExists = Callable[[str], Awaitable[bool]]


async def _no_team_check() -> None:
    return None


def make_quota_admin_router(
    *, principal: Callable[..., Any], service: Callable[..., Any], team_exists: Callable[..., Any] | None = None
) -> APIRouter:
    """Routes: GET/PUT/PATCH/DELETE /admin/teams/{team}/quotas, GET/PUT/DELETE
    /admin/teams/{team}/scheduling and GET /admin/teams/{team}/usage.

    ``principal`` and ``service`` are FastAPI dependencies (callables FastAPI can resolve) returning a
    ``Principal`` and a ``QuotaService``. ``team_exists``, when given, is a dependency returning an
    async ``team -> bool``: a team it does not know is a 404 (after the permission check).
    """
    router = APIRouter(prefix="/admin/teams", tags=["admin: quotas"], dependencies=[declared_query_only(principal)])
    PrincipalDep = Annotated[Principal, Depends(principal)]
    ServiceDep = Annotated[QuotaService, Depends(service)]
    KnownTeams = Annotated[TeamExists | None, Depends(team_exists or _no_team_check)]

    @router.get("/{team}/quotas")
    async def get_quotas(team: TeamPath, who: PrincipalDep, quotas: ServiceDep, known: KnownTeams) -> dict:
        """The limits in force for the team, its keys and its models, and where each comes from."""
        _require_reader(who, team)
        await _require_team(team, known)
        return team_quotas_view(team, await quotas.team_limits(team))

    @router.put("/{team}/quotas")
    async def put_quotas(
        team: TeamPath,
        limits: QuotaLimits,
        who: PrincipalDep,
        quotas: ServiceDep,
        known: KnownTeams,
        key_id: KeyIdQuery = None,
        model: ModelQuery = None,
    ) -> dict:
        """Replace the limits of the team (or of one key / model with ``?key_id=`` / ``?model=``).
        Every field left out or null is unlimited. The change is audited."""
        _require_platform_admin(who)
        await _require_team(team, known)
        await quotas.set_limits(team, limits, actor=who.subject, scope=_scope(key_id, model), principal=who)
        return team_quotas_view(team, await quotas.team_limits(team))

    @router.patch("/{team}/quotas")
    async def patch_quotas(
        team: TeamPath,
        changes: QuotaLimits,
        who: PrincipalDep,
        quotas: ServiceDep,
        known: KnownTeams,
        key_id: KeyIdQuery = None,
        model: ModelQuery = None,
    ) -> dict:
        """Change only the limits given (null: unlimited); the others keep the values in force, wherever
        they come from. The result is set as the scope's admin limits. Audited."""
        _require_platform_admin(who)
        await _require_team(team, known)
        scope = _scope(key_id, model)
        current = next((v.limits for v in await quotas.team_limits(team) if v.scope == scope), QuotaLimits())
        merged = QuotaLimits.model_validate(current.model_dump() | changes.model_dump(exclude_unset=True))
        await quotas.set_limits(team, merged, actor=who.subject, scope=scope, principal=who)
        return team_quotas_view(team, await quotas.team_limits(team))

    @router.delete("/{team}/quotas")
    async def delete_quotas(
        team: TeamPath,
        who: PrincipalDep,
        quotas: ServiceDep,
        known: KnownTeams,
        key_id: KeyIdQuery = None,
        model: ModelQuery = None,
    ) -> dict:
        """Drop limits set through the API, so the quota file (or its defaults) applies again. Audited."""
        _require_platform_admin(who)
        await _require_team(team, known)
        await quotas.clear_limits(team, actor=who.subject, scope=_scope(key_id, model), principal=who)
        return team_quotas_view(team, await quotas.team_limits(team))

    @router.get("/{team}/scheduling")
    async def get_scheduling(team: TeamPath, who: PrincipalDep, quotas: ServiceDep) -> dict:
        """The team's priority class and weight in force, and where each comes from."""
        _require_reader(who, team)
        return _scheduling_view(team, await _known_team(quotas.team_scheduling(team)))

    @router.put("/{team}/scheduling")
    async def put_scheduling(team: TeamPath, body: SchedulingOverride, who: PrincipalDep, quotas: ServiceDep) -> dict:
        """Set the team's class and/or weight; a field left out or null keeps the quota file's value
        (both left out: the same as DELETE). Platform admins only; audited."""
        if not who.has(Role.PLATFORM_ADMIN):
            raise PermissionDenied("Changing a team's priority class or weight needs the platform_admin role.")
        view = await _known_team(quotas.set_scheduling(team, body, actor=who.subject, principal=who))
        return _scheduling_view(team, view)

    @router.delete("/{team}/scheduling")
    async def delete_scheduling(team: TeamPath, who: PrincipalDep, quotas: ServiceDep) -> dict:
        """Drop the admin-set class and weight, so the quota file's (or its defaults) apply. Audited."""
        if not who.has(Role.PLATFORM_ADMIN):
            raise PermissionDenied("Changing a team's priority class or weight needs the platform_admin role.")
        view = await _known_team(quotas.set_scheduling(team, None, actor=who.subject, principal=who))
        return _scheduling_view(team, view)

    @router.get("/{team}/usage")
    async def get_usage(
        team: TeamPath,
        who: PrincipalDep,
        quotas: ServiceDep,
        known: KnownTeams,
        first_day: Annotated[IsoDate | None, Query(alias="from", description="first UTC day (default: 1st of `to`'s month)")] = None,
        last_day: Annotated[IsoDate | None, Query(alias="to", description="last UTC day, included (default: today)")] = None,
        group_by: UsageGroupBy = UsageGroupBy.DAY,
    ) -> dict:
        """Settled requests and tokens of the team per UTC day or per model."""
        _require_reader(who, team)
        await _require_team(team, known)
        last = last_day or dt.datetime.now(dt.timezone.utc).date()
        first = first_day or last.replace(day=1)
        rows = await quotas.usage(team, first, last, group_by)
        return {
            "object": "list",
            "team": team,
            "from": first.isoformat(),
            "to": last.isoformat(),
            "group_by": group_by.value,
            "data": [row.as_dict(group_by) for row in rows],
        }

    return router


async def _require_team(team: str, known: TeamExists | None) -> None:
    if known is not None and not await known(team):
        raise NotFound(f"Team {team!r} not found.", param="team", code="team_not_found")


def _require_platform_admin(who: Principal) -> None:
    if not who.has(Role.PLATFORM_ADMIN):
        raise PermissionDenied("Changing quotas needs the platform_admin role.")


def _require_reader(who: Principal, team: str) -> None:
    if who.has(Role.PLATFORM_ADMIN) or (who.has(Role.TEAM_ADMIN) and who.team == team):
        return
    raise PermissionDenied("Reading a team's quotas and usage needs platform_admin, or team_admin of that team.")


def _scope(key_id: str | None, model: str | None) -> Scope:
    if key_id is not None and model is not None:
        raise InvalidQuotaRequest("give at most one of `key_id` and `model`", param="model")
    if key_id is not None:
        return Scope(ScopeKind.KEY, key_id)
    if model is not None:
        return Scope(ScopeKind.MODEL, model)
    return TEAM_SCOPE


async def _known_team(call: Any) -> Any:
    try:
        return await call
    except TeamNotFound:
        raise NotFound("Team not found.", param="team", code="not_found") from None


def _scheduling_view(team: str, view: SchedulingView) -> dict:
    return {"object": "team.scheduling", "team": team, **view.as_dict()}


def team_quotas_view(team: str, views: list[ScopeView]) -> dict:
    """The body of GET /admin/teams/{team}/quotas (also `ward quotas show --json`)."""
    out: dict[str, Any] = {"object": "team.quotas", "team": team, "keys": {}, "models": {}}
    for view in views:
        entry = {"limits": view.limits.model_dump(), "source": view.source}
        if view.scope.kind is ScopeKind.TEAM:
            out.update(entry)
        else:
            out["keys" if view.scope.kind is ScopeKind.KEY else "models"][view.scope.name] = entry
    return out
