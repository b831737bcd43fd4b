"""Every error leaves in OpenAI's shape, with its status, and is reported to the request hooks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from gateway.auth.errors import AuthenticationError, IdentityProviderUnavailable, PermissionDenied
from gateway.auth.http_errors import www_authenticate
from gateway.http.errors import (
    InvalidRequest,
    OpenAIError,
    PermissionDeniedError,
    ServiceUnavailable,
    Unauthorized,
    WorkerFailed,
)
from gateway.http.plumbing import context_for, json_response

log = logging.getLogger("ward.gateway")

_HTTP_ERROR_TYPES = {401: "invalid_request_error", 403: "invalid_request_error", 404: "invalid_request_error"}
_HTTP_ERROR_CODES = {413: "request_too_large"}  # the body limit (gateway.http.body_limit)


async def error_response(request: Request, error: OpenAIError) -> Response:
    """Reports ``error`` as the request's outcome (hooks, metrics) and renders it."""
    ctx = context_for(request)
    await request.app.state.ward.lifecycle.fail(ctx, error)
    return json_response(ctx, error.body(), status_code=error.status_code, headers=error.headers)


async def refuse_before_app(scope: Scope, receive: Receive, send: Send, error: OpenAIError) -> None:
    """Answers ``error`` from a middleware, before routing: reported (hooks, metrics) under the route
    the request was meant for, like any other failure, then sent."""
    request = Request(scope, receive)
    ctx = context_for(request)
    ctx.endpoint = _route_template(scope) or ctx.endpoint
    services = getattr(request.app.state, "ward", None)
    if services is not None:
        await services.lifecycle.fail(ctx, error)
    response = json_response(ctx, error.body(), status_code=error.status_code, headers=error.headers)
    await response(scope, receive, send)


def _route_template(scope: Scope) -> str | None:
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", None)
    return None


async def _openai_error(request: Request, exc: OpenAIError) -> Response:
    return await error_response(request, exc)


async def _authentication_error(request: Request, exc: AuthenticationError) -> Response:
    # RFC 6750 challenge, with error="invalid_token" when a presented credential was rejected.
    error = Unauthorized(exc.message, code=exc.code, headers={"www-authenticate": www_authenticate(exc)})
    return await error_response(request, error)


async def _permission_denied(request: Request, exc: PermissionDenied) -> Response:
    return await error_response(request, PermissionDeniedError(exc.message, code=exc.code))


async def _identity_provider_unavailable(request: Request, exc: IdentityProviderUnavailable) -> Response:
    # The caller's token may be fine: the keys to check it could not be fetched. Retry shortly.
    return await error_response(request, ServiceUnavailable(exc.message, code=exc.code, retry_after_s=5))


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    # FastAPI's own validation (query/path parameters of mounted routers): 400, never 422.
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    message = str(first.get("msg", "Invalid request.")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        error = InvalidRequest("We could not parse the JSON body of your request.", code="invalid_json")
    else:
        error = InvalidRequest(
            f"Invalid value for '{param}': {message}" if param else message, param=param, code="invalid_value"
        )
    return await error_response(request, error)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    status = exc.status_code
    if status == 422:
        status = 400
    message = str(exc.detail)
    if status in (404, 405) and "route" not in request.scope:  # no route matched: say which URL, as OpenAI does
        message = f"Invalid URL ({request.method} {request.url.path})"
    error = OpenAIError(
        message,
        status_code=status,
        error_type=_HTTP_ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
        code=_HTTP_ERROR_CODES.get(status),
        headers=exc.headers,
    )
    return await error_response(request, error)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return await error_response(
        request, WorkerFailed("The gateway failed to process the request.", code="internal_error")
    )


ErrorConverter = Callable[[Exception], OpenAIError]


def _converted(convert: ErrorConverter):
    async def handler(request: Request, exc: Exception) -> Response:
        return await error_response(request, convert(exc))

    return handler


def install_error_handlers(app: FastAPI, converters: Mapping[type[Exception], ErrorConverter] | None = None) -> None:
    """OpenAI-shaped handlers for the gateway's errors; ``converters`` turn other layers' exception
    types (e.g. a quota layer's) into OpenAIErrors, so hooks and metrics see those failures too."""
    app.add_exception_handler(OpenAIError, _openai_error)
    app.add_exception_handler(AuthenticationError, _authentication_error)
    app.add_exception_handler(PermissionDenied, _permission_denied)
    app.add_exception_handler(IdentityProviderUnavailable, _identity_provider_unavailable)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    for exc_type, convert in (converters or {}).items():
        app.add_exception_handler(exc_type, _converted(convert))
