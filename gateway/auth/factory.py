"""Builds the identity layer from settings: the Authenticator and the admin router for the gateway app."""
from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter
from sqlalchemy import Engine

from gateway.auth.admin_api import build_admin_router
from gateway.auth.admin_audit import AdminChangeRecorder
from gateway.auth.admin_service import IdentityAdmin
from gateway.auth.api_key_auth import ApiKeyAuthenticator
from gateway.auth.composite import WardAuthenticator
from gateway.auth.mtls import ForwardedCertHeaderGuard, MTLSAuthenticator
from gateway.auth.oidc import OIDCAuthenticator
from gateway.auth.principal import PLATFORM_TEAM, Role
from gateway.auth.settings import AuthSettings
from gateway.auth.stores import KeyStore, TeamStore
from gateway.auth.team_directory import TeamDirectory

BOOTSTRAP_KEY_DESCRIPTION = "bootstrap platform admin"


@dataclass
class Identity:
    """What the gateway app needs from the identity layer."""

    authenticator: WardAuthenticator
    admin: IdentityAdmin
    routers: list[APIRouter]
    # (middleware class, kwargs) pairs for app.add_middleware
    middleware: list[tuple[type, dict]] = field(default_factory=list)

    async def aclose(self) -> None:
        await self.authenticator.aclose()


def build_identity(settings: AuthSettings, db_engine: Engine, recorder: AdminChangeRecorder | None = None) -> Identity:
    """Wires the identity layer on an already migrated database (gateway.db.upgrade_to_head).

    Creates the built-in `platform` team if missing (idempotent). The app must store
    `identity.authenticator` at `app.state.authenticator`, include `identity.routers` and add
    `identity.middleware`.
    """
    teams, keys = TeamStore(db_engine), KeyStore(db_engine)
    teams.ensure(PLATFORM_TEAM, "Platform administrators")
    api_keys = ApiKeyAuthenticator(keys, settings.api_key_cache_ttl_s, settings.admin_key)
    mtls_settings = settings.mtls
    uses_certs = bool(mtls_settings.identities)
    authenticator = WardAuthenticator(
        api_keys=api_keys,
        teams=TeamDirectory(teams, settings.team_cache_ttl_s),
        oidc=OIDCAuthenticator(settings.oidc) if settings.oidc else None,
        mtls=MTLSAuthenticator(mtls_settings) if uses_certs else None,
    )
    admin = IdentityAdmin(teams, keys, recorder)
    middleware: list[tuple[type, dict]] = []
    if mtls_settings.forwarded_cert_header:
        middleware.append(
            (ForwardedCertHeaderGuard, {"header": mtls_settings.forwarded_cert_header, "trusted_proxies": mtls_settings.trusted_proxies})
        )
    return Identity(authenticator, admin, [build_admin_router(admin, api_keys)], middleware)


def ensure_bootstrap_admin_key(db_engine: Engine) -> str | None:
    """For `ward up` without --admin-key: creates a platform-admin key once and returns its text to print.

    Returns None when an active bootstrap key exists already (its text was shown when it was made;
    `ward keys create --team platform --role platform_admin` makes another).
    """
    teams, keys = TeamStore(db_engine), KeyStore(db_engine)
    teams.ensure(PLATFORM_TEAM, "Platform administrators")
    if keys.find_active(PLATFORM_TEAM, Role.PLATFORM_ADMIN, BOOTSTRAP_KEY_DESCRIPTION) is not None:
        return None
    _, text = keys.create(PLATFORM_TEAM, Role.PLATFORM_ADMIN, description=BOOTSTRAP_KEY_DESCRIPTION, created_by="ward up")
    return text
