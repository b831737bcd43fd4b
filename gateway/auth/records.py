"""Plain views of the teams and api_keys rows, safe to pass around and to serialise (no secret hash)."""
from __future__ import annotations

import unicodedata
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from gateway.identifiers import TEAM_NAME_RULE, is_team_name

CAPTURE_LEVELS = ("full", "redacted", "metadata")


class InvalidIdentityInput(ValueError):
    """A team name, role, capture level or expiry that Ward does not accept (HTTP 400 / CLI exit 2)."""


# Bidirectional overrides and isolates reorder what a terminal or a page shows (CVE-2021-42574).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_free_text(field: str, value: str, limit: int) -> str:
    """A display name or description: at most ``limit`` characters and no control characters, since
    ``ward teams list`` and ``ward keys list`` print it raw (an escape sequence would reach the
    operator's terminal, a newline would forge a line)."""
    if len(value) > limit:
        raise InvalidIdentityInput(f"{field} must be at most {limit} characters")
    for ch in value:
        if unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS:
            raise InvalidIdentityInput(f"{field} must not contain a control character (found U+{ord(ch):04X})")
    return value


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
