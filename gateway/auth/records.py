"""Plain views of the teams and api_keys rows, safe to pass around and to serialise (no secret hash)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from gateway.identifiers import TEAM_NAME_RULE, is_team_name

CAPTURE_LEVELS = ("full", "redacted", "metadata")


class InvalidIdentityInput(ValueError):
    """A team name, role, capture level or expiry that Ward does not accept (HTTP 400 / CLI exit 2)."""


def check_team_name(name: str) -> str:
    if not is_team_name(name):
        raise InvalidIdentityInput(f"invalid team name {name!r}: use {TEAM_NAME_RULE}")
    return name


def as_utc(value: datetime | None) -> datetime | None:
    """Timezone-aware UTC datetime (SQLite hands back naive values, which Ward always writes in UTC)."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in d.items()}


@dataclass(frozen=True)
class TeamRecord:
    name: str
    display_name: str
    capture_level: str
    disabled: bool
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class KeyRecord:
    id: str
    team: str
    role: str
    description: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None

    def is_active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))
