"""The model approval admin API.

| route | who |
| --- | --- |
| ``GET /admin/models`` | platform_admin, team_admin: every served or ruled-on model and its status |
| ``PUT /admin/models/{model}`` ``{status, note?}`` | platform_admin (audited ``model.status``) |
| ``DELETE /admin/models/{model}`` | platform_admin: no status, the model is unreviewed (``model.status_clear``) |
| ``GET /admin/teams/{team}/models`` | platform_admin, team_admin of the team: allow-list and usable models |
| ``PUT /admin/teams/{team}/models`` ``{allowed_models: [...] or null}`` | platform_admin (``team.models``) |
| ``DELETE /admin/teams/{team}/models`` | platform_admin: no allow-list (every approved model) |

Errors leave through the app's handlers in OpenAI's shape: 400 ``invalid_value``, 403
``permission_denied``, 404 ``not_found`` (no such team), 503 ``policy_unavailable``.
"""
# No `from __future__ import annotations` here: FastAPI must see the dependency aliases defined inside
# make_policy_admin_router as objects, not as strings it would look up in this module's globals.
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth.principal import Principal
from gateway.auth.stores import TeamNotFound
from gateway.http.errors import InvalidRequest, NotFound, ServiceUnavailable
from gateway.http.query_params import declared_query_only
from gateway.identifiers import ModelName, TeamName
from gateway.policy.model_access import ModelStatus
from gateway.policy.service import ModelPolicy, PolicyUnavailable
from gateway.policy.store import NOTE_MAX, InvalidPolicyInput

T = TypeVar("T")
TeamPath = Annotated[TeamName, Path(description="team name")]
ModelPath = Annotated[ModelName, Path(description="model name")]


class ModelStatusBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: ModelStatus
    note: str = Field(default="", max_length=NOTE_MAX)  # e.g. the board's decision reference


class TeamModelsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # the models the team may use; null: no allow-list (every approved model); []: none
    allowed_models: list[ModelName] | None


def _served(request: Request) -> list[str]:
    services = getattr(request.app.state, "ward", None)
    return list(services.pool.models()) if services is not None else []


async def _answer(call: Awaitable[T]) -> T:
    try:
        return await call
    except TeamNotFound:
        raise NotFound("Team not found.", param="team", code="not_found") from None
    except InvalidPolicyInput as exc:
        raise InvalidRequest(str(exc), code="invalid_value") from None
    except PolicyUnavailable as exc:
        raise ServiceUnavailable(str(exc), code="policy_unavailable") from None


def make_policy_admin_router(*, principal: Callable[..., Any], policy: Callable[..., Any]) -> APIRouter:
    """``principal`` and ``policy`` are FastAPI dependencies returning a ``Principal`` and the process's
    ``ModelPolicy``."""
    router = APIRouter(prefix="/admin", tags=["admin: model approval"], dependencies=[declared_query_only(principal)])
    PrincipalDep = Annotated[Principal, Depends(principal)]
    PolicyDep = Annotated[ModelPolicy, Depends(policy)]

    @router.get("/models")
    async def list_model_statuses(request: Request, who: PrincipalDep, models: PolicyDep) -> dict:
        data = await _answer(models.model_statuses(who, _served(request)))
        return {"object": "list", "data": data}

    @router.put("/models/{model:path}")
    async def set_model_status(request: Request, model: ModelPath, body: ModelStatusBody, who: PrincipalDep, models: PolicyDep) -> dict:
        return await _answer(models.set_model_status(who, model, body.status, body.note, _served(request)))

    @router.delete("/models/{model:path}")
    async def clear_model_status(request: Request, model: ModelPath, who: PrincipalDep, models: PolicyDep) -> dict:
        return await _answer(models.set_model_status(who, model, None, "", _served(request)))

    @router.get("/teams/{team}/models")
    async def get_team_models(request: Request, team: TeamPath, who: PrincipalDep, models: PolicyDep) -> dict:
        return await _answer(models.team_models(who, team, _served(request)))

    @router.put("/teams/{team}/models")
    async def set_team_models(request: Request, team: TeamPath, body: TeamModelsBody, who: PrincipalDep, models: PolicyDep) -> dict:
        return await _answer(models.set_team_models(who, team, body.allowed_models, _served(request)))

    @router.delete("/teams/{team}/models")
    async def clear_team_models(request: Request, team: TeamPath, who: PrincipalDep, models: PolicyDep) -> dict:
        return await _answer(models.set_team_models(who, team, None, _served(request)))

    return router
