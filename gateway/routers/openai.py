"""OpenAI-compatible routes under /v1. Each one authenticates, parses, checks that the caller's team
may use the model (403, or 404 on the model routes, as OpenAI answers for models a key cannot see),
and hands off to a service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.request_context import RequestContext
from gateway.http.errors import ModelNotFound
from gateway.http.plumbing import (
    authenticated_context,
    json_response,
    parse_body,
    serving_response,
    until_disconnected,
)
from gateway.http.openapi import json_body
from gateway.identifiers import MODEL_NAME_MAX, is_model_name
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.completions import CompletionRequest
from gateway.protocol.embeddings import EmbeddingRequest

router = APIRouter(prefix="/v1")

# The inference routes call authenticated_context themselves: as a FastAPI dependency it cost a
# few percent of the gateway's CPU per request in dependency solving, for nothing a route needs.
Context = Annotated[RequestContext, Depends(authenticated_context)]


def check_model_allowed(request: Request, ctx: RequestContext, model: str) -> None:
    """Raises the policy's 403 when the caller's team may not use ``model`` (audited as a refusal)."""
    ctx.model = model
    request.app.state.ward.policy.check_model(ctx.principal, model)


@router.post("/chat/completions", openapi_extra=json_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    ctx = await authenticated_context(request)
    body = await parse_body(request, ChatCompletionRequest)
    check_model_allowed(request, ctx, body.model)
    result = await until_disconnected(request, request.app.state.ward.chat.create(ctx, body))
    return serving_response(ctx, result)


@router.post("/completions", openapi_extra=json_body(CompletionRequest))
async def completions(request: Request) -> Response:
    ctx = await authenticated_context(request)
    body = await parse_body(request, CompletionRequest)
    check_model_allowed(request, ctx, body.model)
    result = await until_disconnected(request, request.app.state.ward.completions.create(ctx, body))
    return serving_response(ctx, result)


@router.post("/embeddings", openapi_extra=json_body(EmbeddingRequest))
async def embeddings(request: Request) -> Response:
    ctx = await authenticated_context(request)
    body = await parse_body(request, EmbeddingRequest)
    check_model_allowed(request, ctx, body.model)
    result = await until_disconnected(request, request.app.state.ward.embeddings.create(ctx, body))
    return serving_response(ctx, result)


# The model routes send nothing to a worker: of the hooks they call only the terminal ones
# (before_finish, or on_failure), so they are audited like every other request.
@router.get("/models")
async def list_models(request: Request, ctx: Context) -> Response:
    ward = request.app.state.ward
    names = ward.policy.visible_models(ctx.principal, ward.pool.models())
    body = {"object": "list", "data": [ward.model_card(name) for name in names]}
    await ward.lifecycle.finish(ctx)
    return json_response(ctx, body)


@router.get("/models/{model:path}")
async def retrieve_model(model: str, request: Request, ctx: Context) -> Response:
    ward = request.app.state.ward
    if not is_model_name(model):  # no model can have this name; the audit record keeps no such value
        raise ModelNotFound(model[:MODEL_NAME_MAX])
    ctx.model = model
    if not ward.pool.has_model(model) or not ward.policy.visible_models(ctx.principal, [model]):
        raise ModelNotFound(model)
    await ward.lifecycle.finish(ctx)
    return json_response(ctx, ward.model_card(model))
