"""FastAPI dependencies: the request's Principal and role requirements.

The Authenticator is found where the gateway app keeps it (`app.state.ward.authenticator`, set by
gateway.app.create_app), else at `app.state.authenticator` (small apps, tests). A request is
authenticated at most once here; the Principal is kept on `request.state.principal`.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from gateway.audit.correlation import CURRENT_REQUEST_ID
from gateway.auth.authenticator import Authenticator
from gateway.auth.errors import PermissionDenied
from gateway.auth.principal import Principal, Role
from gateway.http.plumbing import context_for


def app_authenticator(request: Request) -> Authenticator:
    services = getattr(request.app.state, "ward", None)
    if services is not None:
        return services.authenticator
    return request.app.state.authenticator


async def current_principal(request: Request) -> Principal:
    """The authenticated caller; raises AuthenticationError (401) or PermissionDenied (403).

    The caller is also bound to the request's context: its audit records (a refusal, a change, a read)
    name this principal and the request's id, which the response carries as ``x-request-id``.
    """
    principal = getattr(request.state, "principal", None)
    if principal is None:
        principal = await app_authenticator(request).authenticate(request)
        request.state.principal = principal
    ctx = context_for(request)
    ctx.principal = principal
    CURRENT_REQUEST_ID.set(ctx.request_id)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_roles(*roles: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency admitting a caller holding any of `roles` (effective roles, see expand_roles).

    Inference routes use require_roles(Role.USER), audit routes require_roles(Role.AUDITOR).
    """
    if not roles:
        raise ValueError("require_roles needs at least one role")
    needed = frozenset(Role(r) for r in roles)
    names = " or ".join(sorted(r.value for r in needed))

    async def dependency(principal: CurrentPrincipal) -> Principal:
        if not principal.has_any(needed):
            raise PermissionDenied(f"This route needs the {names} role.")
        return principal

    dependency.__name__ = f"require_{'_or_'.join(sorted(r.value for r in needed))}"
    return dependency
