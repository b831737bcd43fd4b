"""Teams and API keys."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base
from gateway.identifiers import KEY_ID_MAX, TEAM_NAME_MAX

# Free text of teams and keys; the stores refuse longer values (PostgreSQL would, SQLite would not).
DISPLAY_NAME_MAX = 200
DESCRIPTION_MAX = 200


class Team(Base):
    __tablename__ = "teams"

    name: Mapped[str] = mapped_column(String(TEAM_NAME_MAX), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(DISPLAY_NAME_MAX), default="")
    # audit capture level for the team's prompts and responses: full, redacted or metadata
    capture_level: Mapped[str] = mapped_column(String(16), default="full")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    __tablename__ = "api_keys"

    # public identifier, also embedded in the key text; the secret part is stored only as a hash
    id: Mapped[str] = mapped_column(String(KEY_ID_MAX), primary_key=True)
    team: Mapped[str] = mapped_column(ForeignKey("teams.name"), index=True)
    role: Mapped[str] = mapped_column(String(32), default="user")
    secret_hash: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(String(DESCRIPTION_MAX), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(200), default="")
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
