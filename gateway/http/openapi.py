"""The gateway's OpenAPI document (``GET /openapi.json``): Ward's own routes as they really answer.

FastAPI's generated schema is corrected where the gateway differs from FastAPI's defaults:

- the OpenAI routes parse their bodies themselves (after authentication), so their request bodies
  are declared here (:func:`json_body`) from the same pydantic models;
- invalid input is a 400 in OpenAI's error shape, never FastAPI's 422, and every operation lists
  the error statuses it can answer with that shape;
- streamed answers are ``text/event-stream``; metrics and audit exports have their own media types;
- every route except the operational ones takes a bearer credential (API key or OIDC token).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

ERROR_SCHEMA = "ErrorResponse"
_ERROR = {
    "type": "object",
    "description": "OpenAI's error shape.",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERROR_STATUSES = {
    "400": "Invalid request (malformed JSON, a wrong type or value, an unsupported feature)",
    "401": "No valid credential",
    "403": "The credential's roles or team do not allow this",
    "404": "No such route, model, team, key or record",
    "413": "The request body is larger than the gateway's limit",
    "429": "A quota refused the request (Retry-After says when to try again)",
    "500": "The gateway or a worker failed",
    "503": "No worker, quota store or audit log available, or the gateway is shutting down (Retry-After)",
}
OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
STREAMING_OPERATIONS = frozenset({("/v1/chat/completions", "post"), ("/v1/completions", "post")})
MEDIA_TYPES = {
    ("/metrics", "get"): {"text/plain": {"schema": {"type": "string"}}},
    ("/audit/export", "get"): {
        "application/x-ndjson": {"schema": {"type": "string"}},
        "text/csv": {"schema": {"type": "string"}},
    },
    ("/audit/checkpoints", "get"): {"application/x-ndjson": {"schema": {"type": "string"}}},
}

_BODY_MODELS: dict[str, type[BaseModel]] = {}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that parses ``model`` from its JSON body itself."""
    _BODY_MODELS[model.__name__] = model
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def gateway_openapi(app: FastAPI) -> dict[str, Any]:
    """The schema of ``app`` (built once, then cached on the app)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=_version(),
            description="Ward's OpenAI-compatible API, its admin and auditor APIs, and its operational routes.",
            routes=app.routes,
        )
        _correct(schema)
        app.openapi_schema = schema
    return app.openapi_schema


def _version() -> str:
    try:
        return importlib.metadata.version("ward")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _correct(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas[ERROR_SCHEMA] = _ERROR
    for model in _BODY_MODELS.values():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
        schemas.update(body.pop("$defs", {}))
        schemas[model.__name__] = body
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "A Ward API key or an OIDC access token"}
    }
    error = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if (path, method) in MEDIA_TYPES:
                _success(responses)["content"] = MEDIA_TYPES[(path, method)]
            if (path, method) in STREAMING_OPERATIONS:
                _success(responses).setdefault("content", {})["text/event-stream"] = {
                    "schema": {"type": "string", "description": "server-sent events, `data: [DONE]` last"}
                }
            if path in OPERATIONAL_PATHS:
                operation["security"] = []
                if path == "/readyz":
                    responses["503"] = {"description": "Not ready (no ready worker for a model), or draining"}
                continue
            operation["security"] = [{"bearer": []}]
            for status, description in _ERROR_STATUSES.items():
                responses.setdefault(status, {"description": description, "content": error})
            responses.setdefault("default", {"description": "Any other error, in OpenAI's shape", "content": error})


def _success(responses: dict[str, Any]) -> dict[str, Any]:
    for status in ("200", "201"):
        if status in responses:
            return responses[status]
    return responses.setdefault("200", {"description": "Successful Response"})
