"""The minimal authenticator: static API keys from the settings, each mapped to a team.

Keys are kept only as SHA-256 digests and every presented key is compared against all of them in
constant time. The identity layer's authenticator (OIDC, database-backed keys, mTLS) replaces this
one through ``create_app(authenticator=...)``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from starlette.requests import Request

from gateway.auth.errors import AuthenticationError
from gateway.auth.principal import AuthMethod, Principal, Role
from gateway.auth.team_directory import TeamDirectory

ADMIN_TEAM = "admin"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class StaticKeyAuthenticator:
    """Authenticates ``Authorization: Bearer <key>`` against a fixed key -> team mapping."""

    def __init__(self, keys: Mapping[str, str], *, admin_key: str | None = None, teams: TeamDirectory | None = None) -> None:
        """``keys`` maps API keys to team names; ``admin_key`` (optional) is a platform admin's key;
        ``teams`` (with the identity layer) refuses a key whose team is unknown or disabled (403)."""
        self._teams = teams
        self._entries: list[tuple[bytes, Principal]] = []
        for key, team in keys.items():
            self._entries.append((_digest(key), self._principal(key, team, frozenset({Role.USER}))))
        if admin_key:
            roles = frozenset({Role.USER, Role.PLATFORM_ADMIN})
            self._entries.append((_digest(admin_key), self._principal(admin_key, ADMIN_TEAM, roles)))

    @staticmethod
    def _principal(key: str, team: str, roles: frozenset[Role]) -> Principal:
        key_id = "static:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
        return Principal(subject=key_id, team=team, roles=roles, auth_method=AuthMethod.API_KEY, key_id=key_id)

    async def authenticate(self, request: Request) -> Principal:
        token = bearer_token(request)
        if token is None:
            raise AuthenticationError(
                "You didn't provide an API key. Send it in the Authorization header: `Bearer <key>`.",
                code="missing_api_key",
            )
        presented = _digest(token)
        found: Principal | None = None
        for digest, principal in self._entries:  # no early exit: timing does not reveal which key matched
            if hmac.compare_digest(presented, digest):
                found = principal
        if found is None:
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        if self._teams is not None:
            await self._teams.require_active(found.team)  # `ward teams disable` cuts off config keys too
        return found
