"""The /admin API: teams and API keys (platform_admin everywhere; team_admin for its own team).

Thin routes over IdentityAdmin, which holds the permission rules and reports each change to the audit
seam. Errors leave in OpenAI's shape.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from gateway.auth.admin_service import IdentityAdmin
from gateway.auth.api_key_auth import ApiKeyAuthenticator
from gateway.auth.dependencies import CurrentPrincipal, current_principal
from gateway.auth.http_errors import openai_error
from gateway.auth.principal import Role
from gateway.auth.records import InvalidIdentityInput
from gateway.auth.stores import KeyNotFound, TeamExists, TeamNotFound
from gateway.db.models_identity import DESCRIPTION_MAX, DISPLAY_NAME_MAX
from gateway.http.query_params import declared_query_only
from gateway.identifiers import TEAM_NAME_MAX, TEAM_NAME_PATTERN, KeyId, TeamName


TeamPath = Annotated[TeamName, Path(description="team name")]
KeyIdPath = Annotated[KeyId, Path(description="API key id")]


class CreateTeam(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The length here, the pattern in the team store (a 400 from this router, mounted anywhere).
    name: str = Field(min_length=1, max_length=TEAM_NAME_MAX, json_schema_extra={"pattern": TEAM_NAME_PATTERN})
    display_name: str = Field(default="", max_length=DISPLAY_NAME_MAX)
    capture_level: Literal["full", "redacted", "metadata"] = "full"


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role = Role.USER
    description: str = Field(default="", max_length=DESCRIPTION_MAX)
    expires_at: datetime | None = None  # naive values are taken as UTC


def _not_found(what: str, param: str) -> JSONResponse:
    return openai_error(404, f"{what} not found.", "invalid_request_error", "not_found", param)


def build_admin_router(admin: IdentityAdmin, api_keys: ApiKeyAuthenticator | None = None) -> APIRouter:
    """The /admin router. api_keys, when given, forgets a revoked key at once on this gateway."""
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[declared_query_only(current_principal)])

    @router.post("/teams", status_code=201)
    async def create_team(body: CreateTeam, principal: CurrentPrincipal) -> Any:
        try:
            team = await admin.create_team(principal, body.name, body.display_name, body.capture_level)
        except InvalidIdentityInput as exc:
            return openai_error(400, str(exc), "invalid_request_error", "invalid_value", "name")
        except TeamExists:
            return openai_error(409, f"Team {body.name!r} exists already.", "invalid_request_error", "team_exists", "name")
        return team.to_dict()

    @router.get("/teams")
    async def list_teams(principal: CurrentPrincipal) -> Any:
        return {"object": "list", "data": [t.to_dict() for t in await admin.list_teams(principal)]}

    @router.post("/teams/{team}/keys", status_code=201)
    async def create_key(team: TeamPath, body: CreateKey, principal: CurrentPrincipal) -> Any:
        try:
            record, text = await admin.create_key(
                principal, team, body.role, description=body.description, expires_at=body.expires_at
            )
        except TeamNotFound:
            return _not_found("Team", "team")
        except InvalidIdentityInput as exc:
            return openai_error(400, str(exc), "invalid_request_error", "invalid_value", "expires_at")
        # the only time the key text leaves the gateway
        return {**record.to_dict(), "key": text}

    @router.get("/teams/{team}/keys")
    async def list_keys(team: TeamPath, principal: CurrentPrincipal) -> Any:
        try:
            records = await admin.list_keys(principal, team)
        except TeamNotFound:
            return _not_found("Team", "team")
        return {"object": "list", "data": [r.to_dict() for r in records]}

    @router.delete("/keys/{key_id}")
    async def revoke_key(key_id: KeyIdPath, principal: CurrentPrincipal) -> Any:
        try:
            record = await admin.revoke_key(principal, key_id)
        except KeyNotFound:
            return _not_found("API key", "key_id")
        if api_keys is not None:
            api_keys.forget(key_id)
        return record.to_dict()

    return router
