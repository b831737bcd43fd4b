"""The unit of the chain: an entry drafted by a writer, then placed (seq, prev hash) under the chain lock."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from gateway.audit.canonical import canonical_json, parse_utc_iso, utc_iso
from gateway.audit.errors import AuditInputError
from gateway.identifiers import MODEL_NAME_MAX, REQUEST_ID_MAX, SUBJECT_MAX, TEAM_NAME_MAX
from gateway.random_ids import new_uuid4


class EntryKind(str, Enum):
    REQUEST = "request"  # a whole request in one entry (non-streamed answers, rejections)
    REQUEST_OPEN = "request_open"  # a stream started; its record stays incomplete until...
    REQUEST_COMPLETE = "request_complete"  # ...the stream's end is recorded
    ADMIN = "admin"  # a change to teams, keys or quotas
    ACCESS = "access"  # someone read the audit log
    PURGE = "purge"  # expired entries were removed under the retention policy


REQUEST_KINDS = frozenset({EntryKind.REQUEST.value, EntryKind.REQUEST_OPEN.value, EntryKind.REQUEST_COMPLETE.value})

# Lengths of the indexed header columns (gateway/db/models_audit.py), from the identifiers' one definition.
_LIMITS = {
    "request_id": REQUEST_ID_MAX,
    "team": TEAM_NAME_MAX,
    "subject": SUBJECT_MAX,
    "model": MODEL_NAME_MAX,
    "status": 16,
}


@dataclass(frozen=True)
class EntryDraft:
    """Everything about an entry that its writer decides; the chain adds seq, recorded_at and hashes.

    ``data`` is canonical JSON text (see canonical.py); build drafts with :meth:`build`.
    """

    entry_id: str
    kind: str
    occurred_at: datetime
    data: str
    request_id: str | None = None
    team: str | None = None
    subject: str | None = None
    model: str | None = None
    status: str | None = None
    http_status: int | None = None

    @classmethod
    def build(
        cls,
        kind: EntryKind,
        occurred_at: datetime,
        payload: dict[str, Any],
        *,
        request_id: str | None = None,
        team: str | None = None,
        subject: str | None = None,
        model: str | None = None,
        status: str | None = None,
        http_status: int | None = None,
    ) -> EntryDraft:
        """A draft with a fresh entry id. Raises AuditInputError for a value the log cannot hold."""
        utc_iso(occurred_at)  # rejects naive datetimes early
        for name, value in (("request_id", request_id), ("team", team), ("subject", subject), ("model", model), ("status", status)):
            if value is not None and (not isinstance(value, str) or len(value) > _LIMITS[name]):
                raise AuditInputError(f"{name} must be a string of at most {_LIMITS[name]} characters")
        if http_status is not None and not (isinstance(http_status, int) and 100 <= http_status <= 599):
            raise AuditInputError(f"http_status {http_status!r} is not an HTTP status code")
        return cls(
            entry_id=new_uuid4(),
            kind=EntryKind(kind).value,
            occurred_at=occurred_at,
            data=canonical_json(payload),
            request_id=request_id,
            team=team,
            subject=subject,
            model=model,
            status=status,
            http_status=http_status,
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (the spool's line format)."""
        return {
            "entry_id": self.entry_id,
            "kind": self.kind,
            "occurred_at": utc_iso(self.occurred_at),
            "data": self.data,
            "request_id": self.request_id,
            "team": self.team,
            "subject": self.subject,
            "model": self.model,
            "status": self.status,
            "http_status": self.http_status,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EntryDraft:
        return cls(**{**obj, "occurred_at": parse_utc_iso(obj["occurred_at"])})


def entry_header(
    *,
    seq: int,
    entry_id: str,
    kind: str,
    recorded_at: datetime,
    occurred_at: datetime,
    request_id: str | None,
    team: str | None,
    subject: str | None,
    model: str | None,
    status: str | None,
    http_status: int | None,
) -> dict[str, Any]:
    """The hashed header: every column of an entry but data and the hashes."""
    return {
        "seq": seq,
        "entry_id": entry_id,
        "kind": kind,
        "recorded_at": utc_iso(recorded_at),
        "occurred_at": utc_iso(occurred_at),
        "request_id": request_id,
        "team": team,
        "subject": subject,
        "model": model,
        "status": status,
        "http_status": http_status,
    }


@dataclass(frozen=True)
class EntryRef:
    """Where an entry landed. ``seq`` and ``entry_hash`` are None while it waits in the spool."""

    entry_id: str
    seq: int | None = None
    entry_hash: str | None = None
    spooled: bool = False


@dataclass
class AppendResult:
    """What one locked append wrote."""

    refs: list[EntryRef] = field(default_factory=list)
    skipped: int = 0  # drafts already present (spool re-drain)
    checkpoint_seq: int | None = None
