"""The one identity model every route sees, however the caller authenticated."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Role(str, Enum):
    USER = "user"  # inference
    TEAM_ADMIN = "team_admin"  # its own team's keys and usage
    PLATFORM_ADMIN = "platform_admin"  # teams, quotas and keys everywhere
    AUDITOR = "auditor"  # reads the audit log, nothing else


class AuthMethod(str, Enum):
    API_KEY = "api_key"
    OIDC = "oidc"
    MTLS = "mtls"


@dataclass(frozen=True)
class Principal:
    subject: str  # key id, token `sub`, or certificate subject
    team: str
    roles: frozenset[Role]
    auth_method: AuthMethod
    key_id: str | None = None
    cert_subject: str | None = None
    claims: dict = field(default_factory=dict, compare=False, hash=False)

    def has(self, role: Role) -> bool:
        return role in self.roles
