"""Settings of the identity layer (section `auth` of the gateway config). Owned by gateway/auth.

Environment variables WARD_OIDC_ISSUER, WARD_OIDC_AUDIENCE (comma-separated for several),
WARD_OIDC_TEAM_CLAIM and WARD_OIDC_ROLES_CLAIM override the `auth.oidc` values of the config file,
so `ward up` and `ward gateway` read them alike.
"""
from __future__ import annotations

import ipaddress
import os
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.auth.principal import OVERSIGHT_ROLES, Role, check_separation_of_duties

# Only signature algorithms with a public/private key pair: a resource server must never accept
# `none`, nor HS* (an attacker could sign with the published public key as the HMAC secret).
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"}
)

OIDC_ENV = {
    "issuer": "WARD_OIDC_ISSUER",
    "audience": "WARD_OIDC_AUDIENCE",
    "team_claim": "WARD_OIDC_TEAM_CLAIM",
    "roles_claim": "WARD_OIDC_ROLES_CLAIM",
    "client_id": "WARD_OIDC_CLIENT_ID",
    "client_secret": "WARD_OIDC_CLIENT_SECRET",
}


def is_loopback_host(host: str | None) -> bool:
    """True for localhost and loopback IP literals (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_provider_url(url: str, what: str) -> str:
    """Accepts https URLs, and http only on a loopback host (tests, development). Raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return url
    raise ValueError(f"{what} must be an https URL (http is accepted only on a loopback address): {url!r}")


class OIDCSettings(BaseModel):
    """OpenID Connect resource server: which issuer's access tokens are accepted and how claims map."""

    model_config = ConfigDict(extra="forbid")


    issuer: str
    audience: list[str] = Field(min_length=1)
    # claim holding the caller's team (a string or a list, e.g. `groups`); dotted paths reach nested claims
    team_claim: str = "groups"
    # IdP value -> Ward team; empty: the claim value is the team name itself
    team_map: dict[str, str] = Field(default_factory=dict)
    # claim holding roles (e.g. `roles`, or `realm_access.roles` on Keycloak)
    roles_claim: str = "roles"
    # IdP value -> Ward role; empty: values that are Ward role names are taken as they are
    role_map: dict[str, Role] = Field(default_factory=dict)
    # roles of a token that carries none the mapping knows
    default_roles: list[Role] = Field(default_factory=lambda: [Role.USER])
    # None: the asymmetric algorithms of the provider's keys
    algorithms: list[str] | None = None
    leeway_s: int = Field(default=30, ge=0, le=300)
    # an unknown `kid` triggers a JWKS re-fetch at most this often (rotation without restart, no flood)
    jwks_refresh_min_interval_s: float = Field(default=30.0, ge=0.0)
    # cached keys are re-fetched after this long even without an unknown kid (retired keys drop out)
    jwks_max_age_s: float = Field(default=3600.0, gt=0.0)
    http_timeout_s: float = Field(default=5.0, gt=0.0)
    # the web console's sign-in (authorization code + PKCE); unset: the console offers API keys only
    client_id: str | None = None
    client_secret: SecretStr | None = None
    # requested at sign-in besides `openid` (the scope that makes the provider issue the access token)
    scopes: list[str] = Field(default_factory=list)

    @field_validator("issuer")
    @classmethod
    def _issuer_scheme(cls, v: str) -> str:
        # kept verbatim: the token's `iss` must equal it exactly
        return check_provider_url(v, "auth.oidc.issuer")

    @field_validator("audience", mode="before")
    @classmethod
    def _audience_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [a.strip() for a in v.split(",") if a.strip()]
        return v

    @field_validator("default_roles")
    @classmethod
    def _no_oversight_by_default(cls, v: list[Role]) -> list[Role]:
        # Every token without a known role claim gets these: reading or granting access to the audit
        # log must be an explicit grant of the identity provider, never a default.
        oversight = sorted(r.value for r in set(v) & OVERSIGHT_ROLES)
        if oversight:
            raise ValueError(f"auth.oidc.default_roles cannot include {', '.join(oversight)}: grant it in the identity provider")
        check_separation_of_duties(v)
        return v

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            bad = sorted(set(v) - ASYMMETRIC_ALGORITHMS)
            if bad or not v:
                raise ValueError(f"auth.oidc.algorithms accepts only asymmetric algorithms, not {bad or 'an empty list'}")
        return v


class CertIdentity(BaseModel):
    """Maps a client certificate to a service principal. Exactly one match field is set."""

    model_config = ConfigDict(extra="forbid")


    subject: str | None = None  # the RFC 4514 subject, e.g. "CN=lab-system,O=General Hospital"
    san_dns: str | None = None
    san_uri: str | None = None  # e.g. a SPIFFE id
    san_email: str | None = None
    team: str
    roles: list[Role] = Field(default_factory=lambda: [Role.USER])
    name: str | None = None  # the principal's subject; default: the matched value

    @field_validator("subject")
    @classmethod
    def _subject_is_a_name(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from gateway.auth.mtls import normalize_subject  # the one place that knows RFC 4514

        try:
            return normalize_subject(v)
        except ValueError:
            raise ValueError(f"not an RFC 4514 subject: {v!r} (e.g. 'CN=lab-system,O=General Hospital')") from None

    @model_validator(mode="after")
    def _one_match(self) -> "CertIdentity":
        given = [f for f in ("subject", "san_dns", "san_uri", "san_email") if getattr(self, f)]
        if len(given) != 1:
            raise ValueError("a certificate identity needs exactly one of subject, san_dns, san_uri, san_email")
        check_separation_of_duties(self.roles)
        return self


class MTLSSettings(BaseModel):
    """Client certificates as credentials: presented to the gateway's own TLS, or forwarded by an ingress."""

    model_config = ConfigDict(extra="forbid")


    identities: list[CertIdentity] = Field(default_factory=list)
    # header in which a trusted ingress forwards the client certificate (URL-encoded PEM, base64 DER
    # or Envoy's x-forwarded-client-cert); None: forwarded certificates are never read
    forwarded_cert_header: str | None = None
    # peers allowed to send that header; from any other address it is ignored and stripped
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(default_factory=list)
    # when set, a forwarded certificate must also be issued by this CA and be within its validity (defence in depth)
    forwarded_cert_ca_file: str | None = None

    @field_validator("forwarded_cert_header")
    @classmethod
    def _lower(cls, v: str | None) -> str | None:
        return v.lower() if v else v


class TLSServerSettings(BaseModel):
    """The gateway terminating TLS itself (`--tls-cert --tls-key --client-ca`)."""

    model_config = ConfigDict(extra="forbid")


    cert_file: str
    key_file: str
    # CA whose client certificates are accepted; None: no client certificates asked for
    client_ca_file: str | None = None
    # required: the handshake fails without a certificate from client_ca_file; optional: tokens and keys
    # still work without one
    client_cert: Literal["required", "optional"] = "required"


class WorkerTLSSettings(BaseModel):
    """TLS from the gateway to workers: the workers' CA and the gateway's client certificate."""

    model_config = ConfigDict(extra="forbid")


    ca_file: str
    cert_file: str
    key_file: str
    # name to check the worker certificate against, when it differs from the dialled host
    server_name: str | None = None


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # API key that bootstraps a platform admin (ward up --admin-key); None: none is configured
    admin_key: str | None = None
    # seconds a key lookup is cached; revocation takes effect on every gateway within this time
    api_key_cache_ttl_s: float = Field(default=2.0, ge=0.0, le=2.0)
    # seconds a team's existence and enabled state are cached
    team_cache_ttl_s: float = Field(default=2.0, ge=0.0, le=10.0)
    oidc: OIDCSettings | None = None
    mtls: MTLSSettings = Field(default_factory=MTLSSettings)
    tls: TLSServerSettings | None = None
    worker_tls: WorkerTLSSettings | None = None
    # allow plaintext gRPC to workers on non-loopback addresses (never in production)
    insecure_worker_channel: bool = False

    @field_validator("admin_key")
    @classmethod
    def _admin_key_strength(cls, v: str | None) -> str | None:
        if v is not None and len(v) < 24:
            raise ValueError("auth.admin_key must be at least 24 characters (use a generated key)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _oidc_from_env(cls, data: Any) -> Any:
        env = {field: os.environ[var] for field, var in OIDC_ENV.items() if os.environ.get(var)}
        if not env or not isinstance(data, dict):
            return data
        data = dict(data)
        current = data.get("oidc")
        if isinstance(current, OIDCSettings):
            current = current.model_dump()
        data["oidc"] = {**(current or {}), **env}
        return data
