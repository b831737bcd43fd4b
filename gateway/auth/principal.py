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
    SECURITY_OFFICER = "security_officer"  # grants and revokes auditor keys, nothing else


class AuthMethod(str, Enum):
    API_KEY = "api_key"
    OIDC = "oidc"
    MTLS = "mtls"
    LOCAL = "local"  # an operator on the gateway's host, through the `ward` CLI


# What each granted role implies. Admins may also run inference; the auditor and the security officer
# are kept apart on purpose (separation of duties): the auditor reads the audit log and can do nothing
# else, the security officer decides who the auditors are and can do nothing else.
ROLE_IMPLIES: dict[Role, frozenset[Role]] = {
    Role.USER: frozenset({Role.USER}),
    Role.TEAM_ADMIN: frozenset({Role.TEAM_ADMIN, Role.USER}),
    Role.PLATFORM_ADMIN: frozenset({Role.PLATFORM_ADMIN, Role.TEAM_ADMIN, Role.USER}),
    Role.AUDITOR: frozenset({Role.AUDITOR}),
    Role.SECURITY_OFFICER: frozenset({Role.SECURITY_OFFICER}),
}

# Roles that read prompts or decide who may: never held together with an administering role by one
# principal, so nobody who runs the platform can also read what patients' clinicians sent to it.
OVERSIGHT_ROLES = frozenset({Role.AUDITOR, Role.SECURITY_OFFICER})
ADMINISTERING_ROLES = frozenset({Role.PLATFORM_ADMIN, Role.TEAM_ADMIN})
# Roles only the host (the `ward keys` CLI holding the audit signing key), the identity provider or a
# certificate mapping in the gateway's configuration can grant; never an administrator through the API.
HOST_GRANTED_ROLES = frozenset({Role.SECURITY_OFFICER})

# The built-in team of platform administrators (the bootstrap admin key belongs to it).
PLATFORM_TEAM = "platform"


def expand_roles(granted: Iterable[Role | str]) -> frozenset[Role]:
    """The effective roles of granted ones (e.g. team_admin also grants user). Raises ValueError on an unknown role."""
    effective: set[Role] = set()
    for role in granted:
        effective |= ROLE_IMPLIES[Role(role)]
    return frozenset(effective)


def conflicting_roles(roles: Iterable[Role | str]) -> tuple[Role, Role] | None:
    """An (oversight, administering) pair that separation of duties forbids in one principal, or None.

    ``roles`` may be granted or effective roles. An auditor or security officer who also administers
    the platform or a team could grant itself, or read, what it administers.
    """
    held = {Role(r) for r in roles}
    for oversight in sorted(held & OVERSIGHT_ROLES, key=lambda r: r.value):
        for admin in sorted(held & ADMINISTERING_ROLES, key=lambda r: r.value):
            return oversight, admin
    return None


def check_separation_of_duties(roles: Iterable[Role | str]) -> None:
    """Raises ValueError naming the two roles when ``roles`` break separation of duties."""
    pair = conflicting_roles(roles)
    if pair is not None:
        raise ValueError(
            f"the roles {pair[0].value} and {pair[1].value} cannot be held by one identity (separation of "
            "duties): give each its own credential"
        )


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
