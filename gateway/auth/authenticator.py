"""The seam between the gateway and the identity layer."""
from __future__ import annotations

from typing import Protocol

from starlette.requests import Request

from gateway.auth.principal import Principal


class Authenticator(Protocol):
    """Turns an HTTP request into a Principal, or raises AuthenticationError (401) / PermissionDenied (403)."""

    async def authenticate(self, request: Request) -> Principal: ...
