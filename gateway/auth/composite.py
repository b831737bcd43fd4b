"""Ward's Authenticator: picks the credential a request carries and returns its Principal.

Order: an `Authorization: Bearer` credential wins (bootstrap admin key, Ward API key `ward-...`, or a
JWT access token when OIDC is configured); without one, a client certificate (own TLS or a trusted
proxy's header); without any, 401. Tokens and certificates must name a team Ward knows and has enabled.
"""
from __future__ import annotations

from starlette.requests import Request

from gateway.auth.api_key_auth import ApiKeyAuthenticator
from gateway.auth.api_key_format import looks_like_ward_key
from gateway.auth.errors import AuthenticationError
from gateway.auth.mtls import MTLSAuthenticator
from gateway.auth.oidc import TEAM_SELECT_HEADER, OIDCAuthenticator
from gateway.auth.principal import Principal
from gateway.auth.team_directory import TeamDirectory


class WardAuthenticator:
    """Implements gateway.auth.authenticator.Authenticator."""

    def __init__(
        self,
        api_keys: ApiKeyAuthenticator,
        teams: TeamDirectory,
        oidc: OIDCAuthenticator | None = None,
        mtls: MTLSAuthenticator | None = None,
    ):
        self.api_keys = api_keys
        self.teams = teams
        self.oidc = oidc
        self.mtls = mtls

    async def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, credential = header.partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                raise AuthenticationError(
                    "Send credentials as 'Authorization: Bearer <API key or access token>'.",
                    code="invalid_authorization_header",
                    bearer_error="invalid_request",
                )
            return await self._bearer(credential, request)
        if self.mtls is not None:
            principal = await self.mtls.authenticate(request)
            if principal is not None:
                await self.teams.require_active(principal.team)
                return principal
        raise AuthenticationError(
            "Missing credentials: send 'Authorization: Bearer <API key or access token>'.", code="missing_credentials"
        )

    async def _bearer(self, credential: str, request: Request) -> Principal:
        if looks_like_ward_key(credential) or self.api_keys.is_admin_key(credential):
            return await self.api_keys.authenticate_key(credential)
        if self.oidc is not None and credential.count(".") == 2:
            principal = await self.oidc.authenticate_token(credential, request.headers.get(TEAM_SELECT_HEADER))
            await self.teams.require_active(principal.team)
            return principal
        raise AuthenticationError("Invalid API key or access token.", code="invalid_api_key", bearer_error="invalid_token")

    async def aclose(self) -> None:
        """Closes the OpenID provider's HTTP client."""
        if self.oidc is not None:
            await self.oidc.aclose()

    async def shutdown(self) -> None:
        """Called by the gateway app when it stops (gateway.app lifecycle)."""
        await self.aclose()
