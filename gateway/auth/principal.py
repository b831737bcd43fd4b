"""The one identity model every route sees, however the caller authenticated."""
from __future__ import annotations

from collections.abc import Iterable
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
    LOCAL = "local"  # an operator on the gateway's host, through the `ward` CLI


# What each granted role implies. Admins may also run inference; the auditor is kept apart on
# purpose (separation of duties): it reads the audit log and can do nothing else.
ROLE_IMPLIES: dict[Role, frozenset[Role]] = {
    Role.USER: frozenset({Role.USER}),
    Role.TEAM_ADMIN: frozenset({Role.TEAM_ADMIN, Role.USER}),
    Role.PLATFORM_ADMIN: frozenset({Role.PLATFORM_ADMIN, Role.TEAM_ADMIN, Role.USER}),
    Role.AUDITOR: frozenset({Role.AUDITOR}),
}

# The built-in team of platform administrators (the bootstrap admin key belongs to it).
PLATFORM_TEAM = "platform"


def expand_roles(granted: Iterable[Role | str]) -> frozenset[Role]:
    """The effective roles of granted ones (e.g. team_admin also grants user). Raises ValueError on an unknown role."""
    effective: set[Role] = set()
    for role in granted:
        effective |= ROLE_IMPLIES[Role(role)]
    return frozenset(effective)


@dataclass(frozen=True)
class Principal:
    subject: str  # key id, token `sub`, or certificate subject
    team: str
    roles: frozenset[Role]  # effective roles (see expand_roles)
    auth_method: AuthMethod
    key_id: str | None = None
    cert_subject: str | None = None
    claims: dict = field(default_factory=dict, compare=False, hash=False)

    def has(self, role: Role) -> bool:
        return role in self.roles

    def has_any(self, roles: Iterable[Role]) -> bool:
        return any(role in self.roles for role in roles)

    @property
    def cache_salt(self) -> str:
        """The engine's prefix-cache salt for this principal's requests (GenerateRequest.cache_salt).

        One salt per team: a team reuses its own cached prefixes and can never hit, or time,
        another team's blocks.
        """
        return cache_salt_for_team(self.team)


def cache_salt_for_team(team: str) -> str:
    """The prefix-cache salt of a team; never empty, so a salted request never matches an unsalted one."""
    return f"team:{team}"
