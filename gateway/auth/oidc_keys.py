"""The OpenID provider's signing keys: discovery, a cached JWKS, and re-fetch on an unknown `kid`.

Rotation works without a restart: a token signed by a key we have not seen makes us fetch the JWKS
again, at most once per `jwks_refresh_min_interval_s`, so a flood of forged `kid`s cannot turn the
gateway into a load generator against the provider.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from gateway.auth.errors import IdentityProviderUnavailable
from gateway.auth.settings import ASYMMETRIC_ALGORITHMS, OIDCSettings, check_provider_url

log = logging.getLogger("ward.auth.oidc")

AsymmetricKey = RSAKey | ECKey | OKPKey
_ASYMMETRIC_KTY = {"RSA", "EC", "OKP"}
_DEFAULT_ALG = {"RSA": "RS256", "P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA"}


def _well_formed(jwk: Any) -> bool:
    """A JWK object whose named fields are strings where present; any other key is skipped, not fatal."""
    return isinstance(jwk, dict) and all(isinstance(jwk.get(name, ""), str) for name in ("kty", "alg", "crv", "kid", "use"))


def _json_object(resp: httpx.Response, what: str) -> dict[str, Any]:
    data = resp.json()
    if not isinstance(data, dict):
        raise ValueError(f"the provider's {what} is not a JSON object")
    return data


def _key_algorithms(jwk: dict[str, Any]) -> set[str]:
    """The algorithms a published key may be used with: its `alg`, else the usual one for its type."""
    if jwk.get("alg"):
        return {jwk["alg"]} & ASYMMETRIC_ALGORITHMS
    default = _DEFAULT_ALG.get(jwk.get("crv") or jwk.get("kty", ""))
    return {default} if default else set()


class ProviderKeys:
    """Discovery document and JWKS of one issuer, fetched lazily and cached."""

    def __init__(self, settings: OIDCSettings, client: httpx.AsyncClient | None = None, clock=time.monotonic):
        self.settings = settings
        self._client = client
        self._owns_client = client is None
        self._clock = clock
        self._lock = asyncio.Lock()
        self._jwks_uri: str | None = None
        self._metadata_algs: set[str] = set()
        self._keys: dict[str, tuple[AsymmetricKey, set[str]]] = {}  # kid -> (key, algorithms)
        self._fetched_at: float | None = None  # last successful JWKS fetch
        self._attempted_at: float | None = None  # last fetch attempt, successful or not
        self._last_attempt_failed = False

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.settings.http_timeout_s, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    @property
    def algorithms(self) -> set[str]:
        """The algorithms a token may use: configured ones, else those of the published keys."""
        if self.settings.algorithms:
            return set(self.settings.algorithms)
        published = set().union(*(algs for _, algs in self._keys.values())) if self._keys else set()
        return published or (self._metadata_algs & ASYMMETRIC_ALGORITHMS)

    async def key_for(self, kid: str | None, alg: str) -> AsymmetricKey | None:
        """The verification key for a token header, re-fetching the JWKS when the kid is unknown.

        None when no published key fits (the caller answers 401). Raises IdentityProviderUnavailable
        when the provider cannot be reached and no keys are cached, or no cached key fits: the token
        may be signed by a key the provider rotated in since, which only the provider can tell.
        """
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self.settings.jwks_max_age_s
        if (stale or self._find(kid, alg) is None) and self._may_attempt(now):
            await self._refresh()
        key = self._find(kid, alg)
        if self._fetched_at is None or (key is None and self._last_attempt_failed):
            raise IdentityProviderUnavailable()
        return key

    def _find(self, kid: str | None, alg: str) -> AsymmetricKey | None:
        if kid is not None:
            entry = self._keys.get(kid)
            return entry[0] if entry and alg in entry[1] else None
        # no kid: acceptable only when exactly one published key fits the algorithm
        fitting = [key for key, algs in self._keys.values() if alg in algs]
        return fitting[0] if len(fitting) == 1 else None

    def _may_attempt(self, now: float) -> bool:
        if self._attempted_at is None:
            return True
        # with no keys at all, retry soon (the provider may just be starting); else respect the interval
        interval = self.settings.jwks_refresh_min_interval_s
        if self._fetched_at is None:
            interval = min(1.0, interval)
        return now - self._attempted_at >= interval

    async def _refresh(self) -> None:
        started = self._clock()
        async with self._lock:
            # another request may have tried while we waited for the lock
            if self._attempted_at is not None and self._attempted_at >= started:
                return
            self._attempted_at = self._clock()
            try:
                if self._jwks_uri is None:
                    await self._discover()
                await self._fetch_jwks()
                self._last_attempt_failed = False
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                # keep serving with the cached keys, if any; the next attempt waits for the interval
                self._last_attempt_failed = True
                log.warning("could not refresh the OpenID provider's keys: %s", type(exc).__name__)

    async def _discover(self) -> None:
        issuer = self.settings.issuer
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        resp = await self.client.get(url)
        resp.raise_for_status()
        meta = _json_object(resp, "discovery document")
        if meta.get("issuer") != issuer:
            raise ValueError("discovery document names another issuer")
        self._jwks_uri = check_provider_url(str(meta["jwks_uri"]), "jwks_uri")
        algs = meta.get("id_token_signing_alg_values_supported")
        self._metadata_algs = {a for a in algs if isinstance(a, str)} if isinstance(algs, list) else set()

    async def _fetch_jwks(self) -> None:
        resp = await self.client.get(self._jwks_uri)  # type: ignore[arg-type]
        resp.raise_for_status()
        keys: dict[str, tuple[AsymmetricKey, set[str]]] = {}
        published = _json_object(resp, "JWKS").get("keys")
        if not isinstance(published, list):
            raise ValueError("the provider's JWKS has no list of keys")
        for i, jwk in enumerate(published):
            if not _well_formed(jwk):
                log.warning("ignoring a malformed key in the provider's JWKS")
                continue
            if jwk.get("kty") not in _ASYMMETRIC_KTY or jwk.get("use", "sig") != "sig":
                continue
            algs = _key_algorithms(jwk)
            if not algs:
                continue
            public = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")}
            try:
                key = KeySet.import_key_set({"keys": [public]}).keys[0]
            except Exception:  # a malformed key must not take the others down
                log.warning("ignoring a malformed key in the provider's JWKS")
                continue
            keys[jwk.get("kid") or f"#{i}"] = (key, algs)  # type: ignore[assignment]
        self._keys = keys
        self._fetched_at = self._clock()
        log.info("fetched %d signing keys from the OpenID provider", len(keys))
