"""The request an admin change or a read belongs to, so its entry names the same ``x-request-id`` the
caller received. Set once per request where the caller is authenticated (``gateway.auth.dependencies``);
read where an entry is drafted, in the caller's own task (the log's writer runs elsewhere)."""
from __future__ import annotations

from contextvars import ContextVar

CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("ward_audit_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the HTTP request being served in this task, or None (a CLI command, a reload)."""
    return CURRENT_REQUEST_ID.get()
