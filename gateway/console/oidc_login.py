"""Sign-in through the hospital's OpenID provider: the authorization code flow with PKCE (S256).

``start`` gives the provider's authorization URL and a pending login (state, code verifier); the
browser comes back with ``code`` and ``state``; ``finish`` checks the state, redeems the code with the
verifier and the client's secret, checks the ID token (signature by a key of the issuer, issuer,
audience = the console's client id, expiry, the login's nonce, the same subject as the access token)
and returns the access token. The gateway then authenticates that token like any bearer token
(issuer, audience, signature, claims to team and roles): what the console may do is what the token
may do.
"""
from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jws, jwt
from joserfc.errors import JoseError

from gateway.auth.errors import IdentityProviderUnavailable
from gateway.auth.oidc import ClaimMapper
from gateway.auth.oidc_keys import ProviderKeys
from gateway.auth.settings import ASYMMETRIC_ALGORITHMS, OIDCSettings
from gateway.console.sessions import SessionStore

PENDING_TTL_S = 600.0


class SignInFailed(Exception):
    """The provider refused, or the answer did not match the login started here."""


class OIDCLogin:
    def __init__(self, settings: OIDCSettings, store: SessionStore, keys: ProviderKeys | None = None):
        if not settings.client_id:
            raise ValueError("the console's OIDC sign-in needs auth.oidc.client_id (WARD_OIDC_CLIENT_ID)")
        self.settings = settings
        self.keys = keys or ProviderKeys(settings)
        self.store = store  # keeps the logins in flight (any gateway replica may get the callback)
        self._metadata: dict[str, Any] | None = None

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (fetched once). Raises SignInFailed when unreachable."""
        if self._metadata is None:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                async with httpx.AsyncClient(timeout=self.settings.http_timeout_s) as http:
                    response = await http.get(url)
                    response.raise_for_status()
                    meta = response.json()
                meta["authorization_endpoint"], meta["token_endpoint"]  # noqa: B018 (both must be there)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                raise SignInFailed(f"the identity provider's metadata could not be read ({type(exc).__name__})") from None
            self._metadata = meta
        return self._metadata

    def _client(self, redirect_uri: str) -> AsyncOAuth2Client:
        secret = self.settings.client_secret.get_secret_value() if self.settings.client_secret else None
        scope = " ".join(dict.fromkeys(["openid", *self.settings.scopes]))
        return AsyncOAuth2Client(
            client_id=self.settings.client_id,
            client_secret=secret,
            scope=scope,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic" if secret else "none",
            timeout=self.settings.http_timeout_s,
        )

    async def start(self, redirect_uri: str) -> tuple[str, str]:
        """The provider's authorization URL to send the browser to, and the login's state (which the
        browser keeps in a cookie until it returns)."""
        meta = await self.metadata()
        verifier = generate_token(64)
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(24)
        async with self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(
                meta["authorization_endpoint"], state=state, code_verifier=verifier,
                nonce=nonce, resource=self.settings.audience[0],
            )
        await self.store.save_login(state, {"verifier": verifier, "redirect_uri": redirect_uri, "nonce": nonce},
                                    PENDING_TTL_S)
        return url, state

    async def finish(self, state: str | None, code: str | None, bound_state: str | None) -> str:
        """The access token for a returning browser. ``bound_state`` is the state its login cookie holds:
        a code delivered to another browser than the one that started the login is refused."""
        if not state or not code or not bound_state or not secrets.compare_digest(state, bound_state):
            raise SignInFailed("the sign-in does not match one started in this browser")
        pending = await self.store.take_login(state)
        if pending is None:
            raise SignInFailed("the sign-in has expired; start again")
        meta = await self.metadata()
        try:
            async with self._client(pending["redirect_uri"]) as client:
                token = await client.fetch_token(
                    meta["token_endpoint"], code=code, code_verifier=pending["verifier"],
                    resource=self.settings.audience[0],
                )
        except Exception as exc:  # authlib raises OAuthError, httpx its own: both mean no sign-in
            raise SignInFailed(f"the identity provider refused the sign-in ({type(exc).__name__})") from None
        access = token.get("access_token")
        if not isinstance(access, str) or not access:
            raise SignInFailed("the identity provider returned no access token")
        claims = await self.verify_id_token(token.get("id_token"), pending.get("nonce"))
        if claims.get("sub") != _unverified_claims(access).get("sub"):
            raise SignInFailed("the ID token and the access token name different subjects")
        return access

    async def verify_id_token(self, id_token: Any, nonce: Any) -> dict[str, Any]:
        """The ID token's claims, checked as OpenID Connect Core 3.1.3.7 asks of a confidential client;
        raises SignInFailed for any defect (the sign-in is refused, nothing else is said)."""
        if not isinstance(id_token, str) or not id_token or not isinstance(nonce, str) or not nonce:
            raise SignInFailed("the identity provider returned no ID token")
        try:
            header = jws.extract_compact(id_token.encode("ascii")).headers()
            alg, kid = header.get("alg"), header.get("kid")
            if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS or (kid is not None and not isinstance(kid, str)):
                raise SignInFailed("the ID token's signing algorithm is not accepted")
            key = await self.keys.key_for(kid, alg)
            if key is None:
                raise SignInFailed("the ID token was not signed by a key of the issuer")
            claims = jwt.decode(id_token, key, algorithms=[alg]).claims
            jwt.JWTClaimsRegistry(
                leeway=self.settings.leeway_s,
                iss={"essential": True, "value": self.settings.issuer},
                aud={"essential": True, "value": self.settings.client_id},
                exp={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(claims)
        except IdentityProviderUnavailable:
            raise SignInFailed("the identity provider's keys could not be read") from None
        except (JoseError, ValueError, UnicodeError) as exc:
            claim = getattr(exc, "claim", None)
            raise SignInFailed(f"the ID token's '{claim}' claim is not accepted" if claim
                               else "the ID token is not valid") from None
        return claims

    def teams_of(self, token: str) -> list[str]:
        """The Ward teams a token names, sorted. Only for a token the gateway has just verified (and
        refused as naming several teams): every request made with it is verified again anyway."""
        claims = _unverified_claims(token)
        return sorted(ClaimMapper(self.settings).teams(claims)) if claims else []


def _unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's payload without checking it (for comparing with claims verified elsewhere), or {}."""
    try:
        claims = json.loads(jws.extract_compact(token.encode("ascii")).payload)
    except (JoseError, ValueError, UnicodeError):
        return {}
    return claims if isinstance(claims, dict) else {}
