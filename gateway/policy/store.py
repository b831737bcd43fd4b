"""Models' approval statuses and teams' model allow-lists in the gateway database (synchronous
SQLAlchemy; async callers use a thread)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.auth.records import as_utc, utcnow
from gateway.auth.stores import TeamNotFound
from gateway.db.models_identity import Team
from gateway.db.models_policy import ModelApproval, TeamModelAccess
from gateway.identifiers import MODEL_NAME_MAX, is_model_name
from gateway.policy.model_access import ModelStatus

NOTE_MAX = 500
MAX_ALLOWED_MODELS = 1000


class InvalidPolicyInput(ValueError):
    """A model name, status, note or allow-list Ward does not accept (HTTP 400 / CLI exit 2)."""


def check_model_name(name: object) -> str:
    if not is_model_name(name):
        raise InvalidPolicyInput(f"a model name is 1 to {MODEL_NAME_MAX} printable characters")
    return name


def check_allow_list(models: object) -> list[str]:
    """A sorted, duplicate-free list of valid model names."""
    if not isinstance(models, list | tuple):
        raise InvalidPolicyInput("allowed_models must be a list of model names, or null")
    if len(models) > MAX_ALLOWED_MODELS:
        raise InvalidPolicyInput(f"allowed_models holds at most {MAX_ALLOWED_MODELS} names")
    return sorted({check_model_name(m) for m in models})


@dataclass(frozen=True)
class ModelStatusRecord:
    model: str
    status: ModelStatus
    note: str
    updated_at: datetime
    updated_by: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {**data, "status": self.status.value, "updated_at": self.updated_at.isoformat()}


@dataclass(frozen=True)
class PolicySnapshot:
    """Everything the request path needs, read in one go: statuses by model, allow-lists by team."""

    statuses: dict[str, ModelStatus] = field(default_factory=dict)
    allow_lists: dict[str, frozenset[str]] = field(default_factory=dict)


def _status_record(row: ModelApproval) -> ModelStatusRecord:
    return ModelStatusRecord(row.model, ModelStatus(row.status), row.note, as_utc(row.updated_at), row.updated_by)


class ModelPolicyStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def snapshot(self) -> PolicySnapshot:
        with Session(self.engine) as s:
            statuses = {row.model: ModelStatus(row.status) for row in s.scalars(select(ModelApproval))}
            lists = {row.team: frozenset(row.allowed_models) for row in s.scalars(select(TeamModelAccess))}
        return PolicySnapshot(statuses, lists)

    def statuses(self) -> list[ModelStatusRecord]:
        with Session(self.engine) as s:
            return [_status_record(r) for r in s.scalars(select(ModelApproval).order_by(ModelApproval.model))]

    def status(self, model: str) -> ModelStatusRecord | None:
        with Session(self.engine) as s:
            row = s.get(ModelApproval, model)
            return _status_record(row) if row else None

    def put_status(self, model: str, status: ModelStatus | None, note: str, *, by: str) -> ModelStatusRecord | None:
        """Records (or with None, removes) a model's status; returns the previous record."""
        check_model_name(model)
        if len(note) > NOTE_MAX:
            raise InvalidPolicyInput(f"a note is at most {NOTE_MAX} characters")
        with Session(self.engine) as s, s.begin():
            row = s.get(ModelApproval, model, with_for_update=True)
            previous = _status_record(row) if row else None
            if status is None:
                if row is not None:
                    s.delete(row)
                return previous
            if row is None:
                row = ModelApproval(model=model)
                s.add(row)
            row.status, row.note = ModelStatus(status).value, note
            row.updated_at, row.updated_by = utcnow(), by[:200]
            return previous

    def allow_list(self, team: str) -> list[str] | None:
        """The team's allow-list (None: it has none). Raises TeamNotFound."""
        with Session(self.engine) as s:
            if s.get(Team, team) is None:
                raise TeamNotFound(team)
            row = s.get(TeamModelAccess, team)
            return sorted(row.allowed_models) if row else None

    def put_allow_list(self, team: str, models: list[str] | None, *, by: str) -> list[str] | None:
        """Replaces (or with None, removes) a team's allow-list; returns the previous one. Raises
        TeamNotFound, InvalidPolicyInput."""
        models = None if models is None else check_allow_list(models)
        with Session(self.engine) as s, s.begin():
            if s.get(Team, team) is None:
                raise TeamNotFound(team)
            row = s.get(TeamModelAccess, team, with_for_update=True)
            previous = sorted(row.allowed_models) if row else None
            if models is None:
                if row is not None:
                    s.delete(row)
                return previous
            if row is None:
                row = TeamModelAccess(team=team)
                s.add(row)
            row.allowed_models = models
            row.updated_at, row.updated_by = utcnow(), by[:200]
            return previous
