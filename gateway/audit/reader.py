"""Reading the log as logical records: one per request (a stream's open and completion merged), one per
admin change, read of the log or purge. Filtered, scoped to what the reader may see, cursor-paginated.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, exists, func, literal, not_, or_, select

from gateway.audit.canonical import as_utc, utc_iso
from gateway.audit.capture import scalar_params
from gateway.audit.chain import ENTRIES, HEAD
from gateway.audit.entries import REQUEST_KINDS, EntryKind
from gateway.audit.errors import AuditQueryError
from gateway.db.models_audit import CHAIN_HEAD_ID

# What a reader asks for with kind=...: "request" covers the three request entry kinds.
RECORD_KINDS = ("request", EntryKind.ADMIN.value, EntryKind.ACCESS.value, EntryKind.PURGE.value)
MAX_PAGE = 1000
# Every status a record can have, besides an HTTP code.
RECORD_STATUSES = ("ok", "error", "cancelled", "rejected", "incomplete", "denied")

# Every request record has these fields (None when unknown, e.g. the end of an incomplete stream).
REQUEST_FIELDS = (
    "principal", "client_address", "endpoint", "model", "worker", "received_at", "capture_level", "params", "prompt",
    "status", "http_status", "first_token_at", "finished_at", "finish_reason", "prompt_tokens", "completion_tokens",
    "error", "response",
)  # fmt: skip


@dataclass(frozen=True)
class RecordFilter:
    since: datetime | None = None  # occurred (received) at or after
    until: datetime | None = None  # occurred before
    team: str | None = None
    subject: str | None = None
    model: str | None = None
    status: str | None = None  # ok, error, cancelled, rejected, incomplete, denied, or an HTTP code such as 429
    kind: str | None = None  # one of RECORD_KINDS
    # words in the stored record (prompts and answers as far as the capture level kept them); readers
    # with the content right only
    text: str | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in RECORD_KINDS:
            raise AuditQueryError(f"kind must be one of {', '.join(RECORD_KINDS)}")
        # A misspelt status would match nothing and read as "no such records"; refuse it instead.
        if self.status is not None and self.status not in RECORD_STATUSES and not _is_http_status(self.status):
            raise AuditQueryError(f"status must be one of {', '.join(RECORD_STATUSES)}, or an HTTP code (100-599)")
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                raise AuditQueryError(f"{name} must carry a timezone (e.g. 2025-01-31T00:00:00Z)")
            # SQLite keeps UTC wall-clock text and drops a bound's offset, so bounds are compared in UTC.
            try:
                object.__setattr__(self, name, as_utc(moment))
            except OverflowError:
                raise AuditQueryError(f"{name} is outside the years 1-9999 in UTC") from None

    def to_json(self) -> dict[str, Any]:
        return {k: (utc_iso(v) if isinstance(v, datetime) else v) for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class ReadScope:
    """What one reader may see: which teams (None: all), whether content, which kinds (None: all)."""

    teams: frozenset[str] | None
    content: bool
    kinds: frozenset[str] | None


@dataclass
class RecordPage:
    records: list[dict[str, Any]]
    next_cursor: str | None


def _is_http_status(text: str) -> bool:
    return len(text) == 3 and text.isascii() and text.isdigit() and 100 <= int(text) <= 599


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        label, _, value = text.partition(":")
        if label != "seq" or not value.isdigit():
            raise ValueError
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise AuditQueryError("invalid cursor") from None


class AuditReader:
    """Read-only queries over the log. Thread-safe; call from a worker thread."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def head_seq(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(HEAD.c.last_seq).where(HEAD.c.id == CHAIN_HEAD_ID)).scalar_one()

    def list_records(self, flt: RecordFilter, scope: ReadScope, *, cursor: str | None = None, limit: int = 100) -> RecordPage:
        """One page of records in log order, after cursor. Raises AuditQueryError."""
        if not 1 <= limit <= MAX_PAGE:
            raise AuditQueryError(f"limit must be between 1 and {MAX_PAGE}")
        query = self._query(flt, scope)
        if cursor is not None:
            query = query.where(self._o.c.seq > decode_cursor(cursor))
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit + 1)).all()
        records = [self._record(row, scope) for row in rows[:limit]]
        next_cursor = encode_cursor(rows[limit - 1].o_seq) if len(rows) > limit else None
        return RecordPage(records, next_cursor)

    def get_record(self, record_id: str, scope: ReadScope) -> dict[str, Any] | None:
        """The record with this id (request id, or entry id for other kinds), if the scope may see it."""
        o = self._o
        query = self._query(RecordFilter(), scope).where(
            or_(and_(o.c.request_id == record_id, o.c.kind.in_(REQUEST_KINDS)), o.c.entry_id == record_id)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query.limit(1)).first()
        return None if row is None else self._record(row, scope)

    def iter_records(self, flt: RecordFilter, scope: ReadScope, *, through_seq: int, page: int = 500) -> Iterator[dict[str, Any]]:
        """Every matching record up to through_seq (an export's fixed end), page by page."""
        after = 0
        while True:
            query = self._query(flt, scope).where(self._o.c.seq > after, self._o.c.seq <= through_seq)
            with self.engine.connect() as conn:
                rows = conn.execute(query.limit(page)).all()
            for row in rows:
                yield self._record(row, scope)
            if len(rows) < page:
                return
            after = rows[-1].o_seq

    # --- SQL -----------------------------------------------------------------------------------
    _o = ENTRIES.alias("o")
    _c = ENTRIES.alias("c")

    def _query(self, flt: RecordFilter, scope: ReadScope):
        o, c = self._o, self._c
        opened = ENTRIES.alias("x")
        # A completion stands alone only when its open is gone (purged); otherwise it merges into it.
        orphan_completion = and_(
            o.c.kind == EntryKind.REQUEST_COMPLETE.value,
            not_(exists().where(opened.c.request_id == o.c.request_id, opened.c.kind == EntryKind.REQUEST_OPEN.value)),
        )
        status = func.coalesce(c.c.status, o.c.status, literal("incomplete"))
        http_status = func.coalesce(c.c.http_status, o.c.http_status)
        query = (
            select(
                *[col.label(f"o_{col.name}") for col in o.c],
                *[col.label(f"c_{col.name}") for col in c.c],
            )
            .select_from(
                o.outerjoin(
                    c,
                    and_(
                        o.c.kind == EntryKind.REQUEST_OPEN.value,
                        c.c.kind == EntryKind.REQUEST_COMPLETE.value,
                        c.c.request_id == o.c.request_id,
                    ),
                )
            )
            .where(or_(o.c.kind != EntryKind.REQUEST_COMPLETE.value, orphan_completion))
            .order_by(o.c.seq)
        )
        kinds = self._kinds(flt.kind, scope)
        if kinds is not None:
            query = query.where(o.c.kind.in_(kinds))
        if scope.teams is not None:
            query = query.where(o.c.team.in_(sorted(scope.teams)))
        if flt.team is not None:
            query = query.where(o.c.team == flt.team)
        if flt.subject is not None:
            query = query.where(o.c.subject == flt.subject)
        if flt.model is not None:
            query = query.where(o.c.model == flt.model)
        if flt.since is not None:
            query = query.where(o.c.occurred_at >= flt.since)
        if flt.until is not None:
            query = query.where(o.c.occurred_at < flt.until)
        if flt.status is not None:
            query = query.where(http_status == int(flt.status) if flt.status.isdigit() else status == flt.status)
        if flt.text:
            if not scope.content:
                raise AuditQueryError("searching the records' text needs the auditor role")
            needle = flt.text.lower()
            query = query.where(or_(func.lower(o.c.data).contains(needle, autoescape=True),
                                    func.lower(c.c.data).contains(needle, autoescape=True)))
        return query

    @staticmethod
    def _kinds(kind: str | None, scope: ReadScope) -> list[str] | None:
        wanted: set[str] | None
        if kind is None:
            wanted = None
        elif kind == "request":
            wanted = set(REQUEST_KINDS)
        else:
            wanted = {kind}
        if scope.kinds is not None:
            allowed = set()
            for k in scope.kinds:
                allowed |= set(REQUEST_KINDS) if k == "request" else {k}
            wanted = allowed if wanted is None else wanted & allowed
        return None if wanted is None else sorted(wanted)

    # --- records -------------------------------------------------------------------------------
    @staticmethod
    def _record(row, scope: ReadScope) -> dict[str, Any]:
        entries = [_entry_ref(row.o_seq, row.o_kind, row.o_entry_hash, row.o_recorded_at)]
        data = json.loads(row.o_data)
        if row.o_kind not in REQUEST_KINDS:
            record = {
                "id": row.o_entry_id,
                "kind": row.o_kind,
                "status": row.o_status,
                "team": row.o_team,
                "subject": row.o_subject,
                "occurred_at": utc_iso(as_utc(row.o_occurred_at)),
                "request_id": row.o_request_id,  # the admin or audit API request it answers, if any
                "http_status": row.o_http_status,
                "data": data,
                "entries": entries,
            }
            return record
        if row.c_seq is not None:
            data.update(json.loads(row.c_data))
            entries.append(_entry_ref(row.c_seq, row.c_kind, row.c_entry_hash, row.c_recorded_at))
        complete = row.o_kind != EntryKind.REQUEST_OPEN.value or row.c_seq is not None
        record = {
            "id": row.o_request_id,
            "kind": "request",
            "complete": complete,
            **dict.fromkeys(REQUEST_FIELDS),
            **data,
            "status": data.get("status") if complete else "incomplete",
            "team": row.o_team,
            "subject": row.o_subject,
            "model": row.o_model,
            "entries": entries,
        }
        record.pop("request_id", None)
        record.pop("open_entry_id", None)
        if not scope.content:
            _strip_content(record)
        return record


def _entry_ref(seq: int, kind: str, digest: str, recorded_at: datetime) -> dict[str, Any]:
    """Where a record's entry sits in the chain (for checking it against an export or a verify run)."""
    return {"seq": seq, "kind": kind, "entry_hash": digest, "recorded_at": utc_iso(as_utc(recorded_at))}


def _strip_content(record: dict[str, Any]) -> None:
    """Metadata only: no prompt, no response, not even their hashes, and numeric parameters only.

    An unkeyed hash of a short answer ("yes", "positive") is its content to anyone who can guess and
    hash candidates, so readers without the content right get neither the text nor its digest.
    """
    for name in ("prompt", "response"):
        record.pop(name, None)
        record.pop(f"{name}_sha256", None)
    record["params"] = scalar_params(record.get("params") or {})
