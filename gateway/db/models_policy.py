"""Admin policy: teams' scheduling class and weight, teams' model allow-lists, models' approval status.

A missing row means "nothing set by an admin": the quota file (scheduling), no allow-list (models), no
recorded status (a model nobody ruled on). Rows hold the newest state; every change is in the audit log.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from gateway.db.base import Base
from gateway.identifiers import MODEL_NAME_MAX


class TeamSchedulingPolicy(Base):
    __tablename__ = "team_scheduling"

    team: Mapped[str] = mapped_column(ForeignKey("teams.name"), primary_key=True)
    # NULL: the quota file's value (or its defaults) applies to that field
    priority: Mapped[int | None] = mapped_column(Integer, nullable=True)
    weight: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str] = mapped_column(String(200), default="")


class TeamModelAccess(Base):
    __tablename__ = "team_model_access"

    team: Mapped[str] = mapped_column(ForeignKey("teams.name"), primary_key=True)
    # the models the team may use (sorted names); an empty list allows none
    allowed_models: Mapped[list] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str] = mapped_column(String(200), default="")


class ModelApproval(Base):
    __tablename__ = "model_approvals"

    model: Mapped[str] = mapped_column(String(MODEL_NAME_MAX), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))  # approved, pilot or retired
    note: Mapped[str] = mapped_column(String(500), default="")  # e.g. the board's decision reference
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str] = mapped_column(String(200), default="")
