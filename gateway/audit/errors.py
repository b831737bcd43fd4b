"""Typed errors of the audit log; the gateway maps AuditUnavailable to 503."""
from __future__ import annotations


class AuditError(Exception):
    """Base class of every audit-log error."""


class AuditInputError(AuditError, ValueError):
    """What the caller asked to record cannot be recorded as given (a bug in the caller, not an outage)."""


class AuditUnavailable(AuditError):
    """The record could not be made durable (database down and no spool configured, or the spool failed).

    Nothing may be served for a request whose record raised this: the gateway answers 503.
    """


class AuditClosed(AuditUnavailable):
    """The audit log was closed (the gateway is shutting down)."""


class AuditQueryError(AuditError, ValueError):
    """An invalid filter, cursor or id in a read of the log (HTTP 400)."""


class SigningKeyError(AuditError):
    """The checkpoint signing key or a trusted public key cannot be loaded."""
