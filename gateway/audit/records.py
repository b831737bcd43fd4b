"""What the gateway tells the log about a request, an admin change or a read of the log, as entry drafts."""
from __future__ import annotations

import getpass
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from gateway.audit.capture import CaptureLevel, Redactor, capture_request, capture_response
from gateway.audit.entries import EntryDraft, EntryKind
from gateway.audit.errors import AuditInputError
from gateway.auth.principal import Principal


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Actor:
    """Who did something, as the log keeps it (a snapshot of a Principal, or a local operator)."""

    subject: str | None
    team: str | None
    auth_method: str | None
    key_id: str | None = None
    cert_subject: str | None = None
    roles: tuple[str, ...] = ()

    @classmethod
    def from_principal(cls, principal: Principal) -> Actor:
        return cls(
            subject=principal.subject,
            team=principal.team,
            auth_method=_enum_value(principal.auth_method),
            key_id=principal.key_id,
            cert_subject=principal.cert_subject,
            roles=tuple(sorted(_enum_value(r) for r in principal.roles)),
        )

    @classmethod
    def local_operator(cls) -> Actor:
        """The operator running a `ward` command on this host (OS user and host name)."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        return cls(subject=f"local:{user}@{socket.gethostname()}", team=None, auth_method="local")

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "team": self.team,
            "auth_method": self.auth_method,
            "key_id": self.key_id,
            "cert_subject": self.cert_subject,
            "roles": list(self.roles),
        }


def _enum_value(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def as_actor(who: Principal | Actor | None) -> Actor | None:
    if who is None or isinstance(who, Actor):
        return who
    return Actor.from_principal(who)


class RequestStatus(str, Enum):
    OK = "ok"  # answered in full
    ERROR = "error"  # failed after it was accepted (bad input, worker error, ...)
    CANCELLED = "cancelled"  # the client went away or the request was aborted
    REJECTED = "rejected"  # refused before any work: authentication, permission or quota


@dataclass
class RequestStart:
    """What is known when a request arrives (or, for a stream, when its first byte is about to go)."""

    request_id: str
    endpoint: str  # e.g. "/v1/chat/completions"
    received_at: datetime = field(default_factory=utcnow)
    principal: Principal | Actor | None = None  # None: not authenticated (e.g. a 401)
    auth_method: str | None = None  # the method tried, when principal is None
    client_address: str | None = None
    model: str | None = None
    worker: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # sampling and other request parameters
    prompt: Any = None  # chat messages (list of dicts) or completion text
    capture_level: CaptureLevel | str | None = None  # None: the team's configured level


@dataclass
class RequestEnd:
    """How a request ended."""

    status: RequestStatus | str
    http_status: int | None = None
    finished_at: datetime = field(default_factory=utcnow)
    first_token_at: datetime | None = None
    response: Any = None  # the answer's text (or choices), as sent
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None  # message sent to the client
    error_code: str | None = None
    worker: str | None = None  # when only known at the end


@dataclass
class OpenRequest:
    """A stream's open record; pass it to AuditLog.complete. Fields are filled once the open is durable."""

    request_id: str
    entry_id: str | None = None
    team: str | None = None
    subject: str | None = None
    model: str | None = None
    capture_level: CaptureLevel | None = None
    seq: int | None = None
    completed: bool = False


# --- drafts -------------------------------------------------------------------------------------

def _start_fields(start: RequestStart, level: CaptureLevel, redactor: Redactor) -> dict[str, Any]:
    if not start.request_id or not isinstance(start.request_id, str):
        raise AuditInputError("request_id must be a non-empty string")
    if not isinstance(start.params, dict):
        raise AuditInputError("params must be a dict")
    actor = as_actor(start.principal)
    principal = actor.to_json() if actor else {"subject": None, "team": None, "auth_method": start.auth_method}
    return {
        "request_id": start.request_id,
        "principal": principal,
        "client_address": start.client_address,
        "endpoint": start.endpoint,
        "model": start.model,
        "worker": start.worker,
        "received_at": start.received_at,
        "capture_level": level.value,
        **capture_request(level, redactor, start.prompt, start.params),
    }


def _end_fields(end: RequestEnd, level: CaptureLevel, redactor: Redactor) -> dict[str, Any]:
    try:
        status = RequestStatus(end.status).value
    except ValueError:
        raise AuditInputError(f"unknown request status {end.status!r}") from None
    for name in ("prompt_tokens", "completion_tokens"):
        value = getattr(end, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise AuditInputError(f"{name} must be a non-negative integer")
    fields: dict[str, Any] = {
        "status": status,
        "http_status": end.http_status,
        "first_token_at": end.first_token_at,
        "finished_at": end.finished_at,
        "finish_reason": end.finish_reason,
        "prompt_tokens": end.prompt_tokens,
        "completion_tokens": end.completion_tokens,
        "error": None if end.error is None and end.error_code is None else {"message": end.error, "code": end.error_code},
        **capture_response(level, redactor, end.response),
    }
    if end.worker is not None:
        fields["worker"] = end.worker
    return fields


def _identity(start: RequestStart) -> tuple[str | None, str | None]:
    actor = as_actor(start.principal)
    return (actor.team, actor.subject) if actor else (None, None)


def request_draft(start: RequestStart, end: RequestEnd, level: CaptureLevel, redactor: Redactor) -> EntryDraft:
    """One entry for a whole request."""
    team, subject = _identity(start)
    payload = {**_start_fields(start, level, redactor), **_end_fields(end, level, redactor)}
    return EntryDraft.build(
        EntryKind.REQUEST,
        start.received_at,
        payload,
        request_id=start.request_id,
        team=team,
        subject=subject,
        model=start.model,
        status=payload["status"],
        http_status=end.http_status,
    )


def open_draft(start: RequestStart, level: CaptureLevel, redactor: Redactor, handle: OpenRequest) -> EntryDraft:
    """The open entry of a stream; fills handle with what its completion needs."""
    team, subject = _identity(start)
    draft = EntryDraft.build(
        EntryKind.REQUEST_OPEN,
        start.received_at,
        _start_fields(start, level, redactor),
        request_id=start.request_id,
        team=team,
        subject=subject,
        model=start.model,
    )
    handle.entry_id, handle.team, handle.subject, handle.model, handle.capture_level = (
        draft.entry_id,
        team,
        subject,
        start.model,
        level,
    )
    return draft


def complete_draft(handle: OpenRequest, end: RequestEnd, redactor: Redactor) -> EntryDraft:
    """The completion entry of a stream (at the capture level its open used)."""
    if handle.entry_id is None or handle.capture_level is None:
        raise AuditInputError("this request was never opened (or its open failed)")
    payload = {"request_id": handle.request_id, "open_entry_id": handle.entry_id, **_end_fields(end, handle.capture_level, redactor)}
    return EntryDraft.build(
        EntryKind.REQUEST_COMPLETE,
        end.finished_at,
        payload,
        request_id=handle.request_id,
        team=handle.team,
        subject=handle.subject,
        model=handle.model,
        status=payload["status"],
        http_status=end.http_status,
    )


# Field names that must never reach the log in an admin change (secrets are not evidence).
_SECRET_KEY = re.compile(r"(?i)(secret|password|passwd|private_key|key_text|credential)")


def _reject_secrets(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if _SECRET_KEY.search(str(key)):
                raise AuditInputError(f"{where} holds a secret-looking field {key!r}; record ids, never secrets")
            _reject_secrets(inner, where)
    elif isinstance(value, list | tuple):
        for inner in value:
            _reject_secrets(inner, where)


def admin_draft(
    actor: Actor,
    action: str,
    target: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    *,
    team: str | None = None,
    occurred_at: datetime | None = None,
    request_id: str | None = None,
) -> EntryDraft:
    """An admin change: who (actor) did what (action, e.g. "key.revoke") to which target (e.g. "key:abc").
    ``request_id``: the admin API request that made it (None for the CLI and file reloads)."""
    if not action or not target:
        raise AuditInputError("an admin change needs an action and a target")
    _reject_secrets(before, "before")
    _reject_secrets(after, "after")
    if team is None and target.startswith("team:"):
        team = target.removeprefix("team:")
    if team is None:
        team = (after or {}).get("team") or (before or {}).get("team")
    return EntryDraft.build(
        EntryKind.ADMIN,
        occurred_at or utcnow(),
        {"actor": actor.to_json(), "action": action, "target": target, "before": before, "after": after},
        team=team if isinstance(team, str) else None,
        subject=actor.subject,
        status="ok",
        request_id=request_id,
    )


def access_draft(
    actor: Actor,
    action: str,
    query: dict[str, Any],
    *,
    allowed: bool,
    record_ids: list[str] | None = None,
    count: int | None = None,
    through_seq: int | None = None,
    client_address: str | None = None,
    request_id: str | None = None,
    http_status: int | None = None,
) -> EntryDraft:
    """A read of the log or of the admin API: who asked for what (query), whether it was allowed, and
    what came back. ``request_id`` is the ``x-request-id`` the reader received (None from the CLI)."""
    return EntryDraft.build(
        EntryKind.ACCESS,
        utcnow(),
        {
            "actor": actor.to_json(),
            "action": action,
            "query": query,
            "allowed": allowed,
            "record_ids": record_ids,
            "count": count,
            "through_seq": through_seq,
            "client_address": client_address,
        },
        team=actor.team,
        subject=actor.subject,
        status="ok" if allowed else "denied",
        request_id=request_id,
        http_status=http_status,
    )
