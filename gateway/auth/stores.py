"""Teams and API keys in the gateway database (synchronous SQLAlchemy; async callers use a thread)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.auth.api_key_format import hash_secret, new_key, parse_key
from gateway.auth.principal import Role
from gateway.auth.records import (
    CAPTURE_LEVELS,
    InvalidIdentityInput,
    KeyRecord,
    TeamRecord,
    as_utc,
    check_free_text,
    check_team_name,
    utcnow,
)
from gateway.db.models_identity import DESCRIPTION_MAX, DISPLAY_NAME_MAX, ApiKey, Team


class TeamExists(Exception):
    """A team of that name exists already (HTTP 409)."""


class TeamNotFound(Exception):
    """No team of that name (HTTP 404)."""


class KeyNotFound(Exception):
    """No API key with that id (HTTP 404)."""


def _team_record(row: Team) -> TeamRecord:
    return TeamRecord(row.name, row.display_name, row.capture_level, bool(row.disabled), as_utc(row.created_at))


def _key_record(row: ApiKey) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        team=row.team,
        role=row.role,
        description=row.description,
        created_at=as_utc(row.created_at),
        created_by=row.created_by,
        expires_at=as_utc(row.expires_at),
        revoked_at=as_utc(row.revoked_at),
    )


@dataclass(frozen=True)
class KeyForAuth:
    """What authentication needs of a key row: its record, the stored hash and its team's state."""

    record: KeyRecord
    secret_hash: str
    team_disabled: bool


class TeamStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create(self, name: str, display_name: str = "", capture_level: str = "full") -> TeamRecord:
        """Adds a team; raises InvalidIdentityInput or TeamExists."""
        check_team_name(name)
        check_free_text("display_name", display_name, DISPLAY_NAME_MAX)
        if capture_level not in CAPTURE_LEVELS:
            raise InvalidIdentityInput(f"capture_level must be one of {', '.join(CAPTURE_LEVELS)}")
        row = Team(name=name, display_name=display_name, capture_level=capture_level, disabled=False, created_at=utcnow())
        try:
            with Session(self.engine) as s, s.begin():
                s.add(row)
                s.flush()
                return _team_record(row)
        except IntegrityError:
            raise TeamExists(name) from None

    def ensure(self, name: str, display_name: str = "") -> TeamRecord:
        """The team, created if missing (idempotent, safe when several gateways start at once)."""
        existing = self.get(name)
        if existing is not None:
            return existing
        try:
            return self.create(name, display_name)
        except TeamExists:
            return self.get(name)  # type: ignore[return-value]

    def get(self, name: str) -> TeamRecord | None:
        with Session(self.engine) as s:
            row = s.get(Team, name)
            return _team_record(row) if row else None

    def list(self, names: list[str] | None = None) -> list[TeamRecord]:
        with Session(self.engine) as s:
            q = select(Team).order_by(Team.name)
            if names is not None:
                q = q.where(Team.name.in_(names))
            return [_team_record(r) for r in s.scalars(q)]

    def set_disabled(self, name: str, disabled: bool) -> tuple[TeamRecord, TeamRecord]:
        """Disables or enables a team; returns (before, after). Raises TeamNotFound."""
        with Session(self.engine) as s, s.begin():
            row = s.get(Team, name, with_for_update=True)
            if row is None:
                raise TeamNotFound(name)
            before = _team_record(row)
            row.disabled = disabled
            s.flush()
            return before, _team_record(row)


class KeyStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create(
        self,
        team: str,
        role: Role | str = Role.USER,
        *,
        description: str = "",
        created_by: str = "",
        expires_at: datetime | None = None,
    ) -> tuple[KeyRecord, str]:
        """A new key for an existing team: (record, key text). The text is returned only here.

        Raises TeamNotFound or InvalidIdentityInput.
        """
        role = Role(role)
        check_free_text("description", description, DESCRIPTION_MAX)
        try:
            expires_at = as_utc(expires_at)
        except OverflowError:  # e.g. 9999-12-31T23:00-05:00: no such time in UTC
            raise InvalidIdentityInput("expires_at must be a time of the years 1-9999 in UTC") from None
        now = utcnow()
        if expires_at is not None and expires_at <= now:
            raise InvalidIdentityInput("expires_at must be in the future")
        key_id, key_text = new_key()
        secret = parse_key(key_text).secret  # type: ignore[union-attr]
        with Session(self.engine) as s, s.begin():
            if s.get(Team, team) is None:
                raise TeamNotFound(team)
            row = ApiKey(
                id=key_id,
                team=team,
                role=role.value,
                secret_hash=hash_secret(key_id, secret),
                description=description,
                created_at=now,
                created_by=created_by[:200],
                expires_at=expires_at,
                revoked_at=None,
            )
            s.add(row)
            s.flush()
            return _key_record(row), key_text

    def get(self, key_id: str) -> KeyRecord | None:
        with Session(self.engine) as s:
            row = s.get(ApiKey, key_id)
            return _key_record(row) if row else None

    def list(self, team: str | None = None, include_revoked: bool = True) -> list[KeyRecord]:
        with Session(self.engine) as s:
            q = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
            if team is not None:
                q = q.where(ApiKey.team == team)
            if not include_revoked:
                q = q.where(ApiKey.revoked_at.is_(None))
            return [_key_record(r) for r in s.scalars(q)]

    def revoke(self, key_id: str) -> tuple[KeyRecord, KeyRecord]:
        """Revokes a key (idempotent: a revoked key keeps its first revocation time); returns (before, after)."""
        with Session(self.engine) as s, s.begin():
            row = s.get(ApiKey, key_id, with_for_update=True)
            if row is None:
                raise KeyNotFound(key_id)
            before = _key_record(row)
            if row.revoked_at is None:
                s.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()))
                s.refresh(row)
            return before, _key_record(row)

    def lookup_for_auth(self, key_id: str) -> KeyForAuth | None:
        """The key row with its team's state, in one query (the authentication path)."""
        with Session(self.engine) as s:
            found = s.execute(
                select(ApiKey, Team.disabled).join(Team, Team.name == ApiKey.team).where(ApiKey.id == key_id)
            ).first()
            if found is None:
                return None
            row, disabled = found
            return KeyForAuth(_key_record(row), row.secret_hash, bool(disabled))

    def find_active(self, team: str, role: Role | str, description: str) -> KeyRecord | None:
        """An unrevoked, unexpired key of the team with this role and description (bootstrap idempotence)."""
        now = utcnow()
        for rec in self.list(team, include_revoked=False):
            if rec.role == Role(role).value and rec.description == description and rec.is_active(now):
                return rec
        return None
