"""API key authentication: parse, look up (cached briefly), verify the secret in constant time."""
from __future__ import annotations

import hashlib
import hmac

from starlette.concurrency import run_in_threadpool

from gateway.auth.api_key_format import parse_key, secret_matches
from gateway.auth.errors import AuthenticationError, PermissionDenied
from gateway.auth.principal import PLATFORM_TEAM, AuthMethod, Principal, Role, expand_roles
from gateway.auth.records import utcnow
from gateway.auth.stores import KeyForAuth, KeyStore
from gateway.auth.ttl_cache import TTLCache

_UNKNOWN = "unknown"  # cached "no such key id" marker

BOOTSTRAP_ADMIN_SUBJECT = "bootstrap-admin"


def _invalid(message: str = "Invalid API key.", code: str = "invalid_api_key") -> AuthenticationError:
    return AuthenticationError(message, code=code, bearer_error="invalid_token")


class ApiKeyAuthenticator:
    """Turns a Ward API key into a Principal.

    Lookups (found or not) are cached for `cache_ttl_s` (at most 2 s), so a revocation reaches every
    gateway within that time while the steady-state cost stays a dictionary lookup and one SHA-256.
    The secret is checked on every request, never cached as "valid".
    """

    def __init__(self, keys: KeyStore, cache_ttl_s: float = 2.0, admin_key: str | None = None):
        self.keys = keys
        self._cache: TTLCache[str, KeyForAuth | str] = TTLCache(cache_ttl_s)
        # The Principal of a cached lookup, built once per lookup (roles expanded, dataclass made),
        # not per request; it is reused only while that same lookup object is the cached one.
        self._principals: dict[str, tuple[KeyForAuth, Principal]] = {}
        self._admin_digest = hashlib.sha256(admin_key.encode()).digest() if admin_key else None

    def is_admin_key(self, text: str) -> bool:
        """Whether text is the configured bootstrap admin key (constant time)."""
        if self._admin_digest is None:
            return False
        return hmac.compare_digest(hashlib.sha256(text.encode()).digest(), self._admin_digest)

    @staticmethod
    def bootstrap_admin() -> Principal:
        return Principal(
            subject=BOOTSTRAP_ADMIN_SUBJECT,
            team=PLATFORM_TEAM,
            roles=expand_roles([Role.PLATFORM_ADMIN]),
            auth_method=AuthMethod.API_KEY,
        )

    def forget(self, key_id: str) -> None:
        """Drops a cached lookup (this gateway's own revocations take effect at once)."""
        self._cache.pop(key_id)
        self._principals.pop(key_id, None)

    async def authenticate_key(self, text: str) -> Principal:
        if self.is_admin_key(text):
            return self.bootstrap_admin()
        parsed = parse_key(text)
        if parsed is None:
            raise _invalid()
        entry = self._cache.get(parsed.key_id)
        if entry is None:
            entry = await run_in_threadpool(self.keys.lookup_for_auth, parsed.key_id) or _UNKNOWN
            self._cache.put(parsed.key_id, entry)
        if entry is _UNKNOWN or not secret_matches(parsed.key_id, parsed.secret, entry.secret_hash):  # type: ignore[union-attr]
            raise _invalid()
        record = entry.record  # type: ignore[union-attr]
        # only the holder of the secret gets past this point, so telling why is safe
        if record.revoked_at is not None:
            raise _invalid("This API key has been revoked.", code="revoked_api_key")
        if record.expires_at is not None and utcnow() >= record.expires_at:
            raise _invalid("This API key has expired.", code="expired_api_key")
        if entry.team_disabled:  # type: ignore[union-attr]
            raise PermissionDenied("The key's team is disabled.", code="team_disabled")
        built = self._principals.get(parsed.key_id)
        if built is not None and built[0] is entry:
            return built[1]
        principal = Principal(
            subject=record.id,
            team=record.team,
            roles=expand_roles([record.role]),
            auth_method=AuthMethod.API_KEY,
            key_id=record.id,
        )
        if len(self._principals) >= self._cache.max_entries:
            self._principals.clear()
        self._principals[parsed.key_id] = (entry, principal)  # type: ignore[assignment]
        return principal
