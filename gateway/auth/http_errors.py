"""OpenAI-shaped HTTP responses for identity errors (401 with WWW-Authenticate, 403, 503)."""
from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.auth.errors import AuthenticationError, IdentityProviderUnavailable, PermissionDenied

REALM = "ward"


def openai_error(status: int, message: str, err_type: str, code: str | None, param: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def www_authenticate(exc: AuthenticationError) -> str:
    """RFC 6750 challenge; the error description is our fixed message, never the credential."""
    value = f'Bearer realm="{REALM}"'
    if exc.bearer_error:
        description = exc.message.replace('"', "'")
        value += f', error="{exc.bearer_error}", error_description="{description}"'
    return value


def auth_error_response(exc: Exception) -> JSONResponse:
    if isinstance(exc, AuthenticationError):
        return openai_error(401, exc.message, "authentication_error", exc.code, headers={"WWW-Authenticate": www_authenticate(exc)})
    if isinstance(exc, PermissionDenied):
        return openai_error(403, exc.message, "permission_error", exc.code)
    if isinstance(exc, IdentityProviderUnavailable):
        return openai_error(503, exc.message, "service_unavailable", exc.code, headers={"Retry-After": "5"})
    raise TypeError(f"not an identity error: {type(exc).__name__}")


async def _handler(_request: Request, exc: Exception) -> JSONResponse:
    return auth_error_response(exc)


def install_auth_error_handlers(app: FastAPI) -> None:
    """Registers the identity error handlers on an app (the gateway may register its own equivalents)."""
    for exc_type in (AuthenticationError, PermissionDenied, IdentityProviderUnavailable):
        app.add_exception_handler(exc_type, _handler)
