"""OIDC resource server: validates bearer JWT access tokens of the configured issuer.

Checks, in order: the header's `alg` is one of the pinned asymmetric algorithms; a published key
matches the `kid` (with a JWKS re-fetch on an unknown one); the signature; then `iss`, `aud`, `exp`,
`nbf` and `iat` with a small leeway. Claims then map to a Ward team and roles.
"""
from __future__ import annotations

import logging
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import ExpiredTokenError, JoseError

from gateway.auth.errors import AuthenticationError, PermissionDenied
from gateway.auth.oidc_keys import ProviderKeys
from gateway.auth.principal import AuthMethod, Principal, Role, conflicting_roles, expand_roles
from gateway.auth.settings import ASYMMETRIC_ALGORITHMS, OIDCSettings
from gateway.identifiers import SUBJECT_MAX, is_subject

log = logging.getLogger("ward.auth.oidc")

# a caller whose token maps to several teams picks one with this header
TEAM_SELECT_HEADER = "x-ward-team"


def _invalid(message: str = "Invalid access token.") -> AuthenticationError:
    return AuthenticationError(message, code="invalid_token", bearer_error="invalid_token")


def claim_values(claims: dict[str, Any], path: str) -> list[str]:
    """String values of a claim given by a dotted path (`realm_access.roles`); a string gives one value."""
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return []
        node = node[part]
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [v for v in node if isinstance(v, str)]
    return []


class ClaimMapper:
    """Turns verified claims into (subject, team, roles) per the configured mapping."""

    def __init__(self, settings: OIDCSettings):
        self.settings = settings

    def subject(self, claims: dict[str, Any]) -> str:
        for name in ("sub", "client_id", "azp"):
            if isinstance(claims.get(name), str) and claims[name]:
                if not is_subject(claims[name]):  # the audit log keeps subjects of bounded length
                    raise _invalid(f"The access token's '{name}' claim is longer than {SUBJECT_MAX} characters.")
                return claims[name]
        raise _invalid("The access token names no subject.")

    def teams(self, claims: dict[str, Any]) -> list[str]:
        values = claim_values(claims, self.settings.team_claim)
        if self.settings.team_map:
            values = [self.settings.team_map[v] for v in values if v in self.settings.team_map]
        return list(dict.fromkeys(values))

    def team(self, claims: dict[str, Any], requested: str | None) -> str:
        teams = self.teams(claims)
        if not teams:
            raise PermissionDenied("The access token maps to no Ward team.", code="team_unknown")
        if requested is not None:
            if requested not in teams:
                raise PermissionDenied("The access token does not grant the requested team.", code="team_not_granted")
            return requested
        if len(teams) > 1:
            raise PermissionDenied(
                f"The access token maps to several teams; choose one with the {TEAM_SELECT_HEADER} header.",
                code="team_ambiguous",
            )
        return teams[0]

    def roles(self, claims: dict[str, Any]) -> frozenset[Role]:
        values = claim_values(claims, self.settings.roles_claim)
        if self.settings.role_map:
            granted = [self.settings.role_map[v] for v in values if v in self.settings.role_map]
        else:
            known = {r.value for r in Role}
            granted = [Role(v) for v in values if v in known]
        roles = granted or self.settings.default_roles
        pair = conflicting_roles(roles)
        if pair is not None:
            # The identity provider grants both; Ward refuses the combination rather than pick one.
            raise PermissionDenied(
                f"The access token grants both {pair[0].value} and {pair[1].value}; separation of duties "
                "needs a separate identity for each.",
                code="conflicting_roles",
            )
        return expand_roles(roles)


class OIDCAuthenticator:
    """Validates one access token and returns its Principal (team existence is checked by the caller)."""

    def __init__(self, settings: OIDCSettings, keys: ProviderKeys | None = None):
        self.settings = settings
        self.keys = keys or ProviderKeys(settings)
        self.mapper = ClaimMapper(settings)
        self._claims_registry = dict(
            iss={"essential": True, "value": settings.issuer},
            aud={"essential": True, "values": list(settings.audience)},
            exp={"essential": True},
        )

    async def aclose(self) -> None:
        await self.keys.aclose()

    async def verify(self, token: str) -> dict[str, Any]:
        """The verified claims of a token; raises AuthenticationError (401) for any defect."""
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError):
            raise _invalid() from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
            raise _invalid("The access token's signing algorithm is not accepted.")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _invalid()
        key = await self.keys.key_for(kid, alg)
        if key is None or alg not in self.keys.algorithms:
            raise _invalid("The access token was not signed by a key of the configured issuer.")
        try:
            verified = jwt.decode(token, key, algorithms=[alg])
        except (JoseError, ValueError):
            raise _invalid() from None
        registry = jwt.JWTClaimsRegistry(leeway=self.settings.leeway_s, **self._claims_registry)
        try:
            registry.validate(verified.claims)
        except ExpiredTokenError:
            raise _invalid("The access token has expired.") from None
        except JoseError as exc:
            claim = getattr(exc, "claim", None)
            raise _invalid(f"The access token's '{claim}' claim is not accepted." if claim else "Invalid access token.") from None
        return verified.claims

    async def authenticate_token(self, token: str, requested_team: str | None = None) -> Principal:
        claims = await self.verify(token)
        subject = self.mapper.subject(claims)
        return Principal(
            subject=subject,
            team=self.mapper.team(claims, requested_team),
            roles=self.mapper.roles(claims),
            auth_method=AuthMethod.OIDC,
            claims=claims,
        )
