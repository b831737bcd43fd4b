"""Who may read which part of the log.

- auditor: every record, with content (prompts and answers at the capture level kept), every kind;
- platform_admin: every team's request and admin records, metadata only;
- team_admin: its own team's request and admin records, metadata only;
- anyone else (users, security officers): nothing (PermissionDenied, HTTP 403).
Metadata only means no prompt, no response and no hash of either (reader._strip_content). Reads of the
log and of the admin API (access records) are visible to auditors only: the auditors watch the admins.
"""
from __future__ import annotations

from gateway.audit.entries import EntryKind
from gateway.audit.reader import ReadScope
from gateway.auth.errors import PermissionDenied
from gateway.auth.principal import Principal, Role

_ADMIN_KINDS = frozenset({"request", EntryKind.ADMIN.value})


def scope_for(principal: Principal) -> ReadScope:
    """The part of the log principal may read. Raises PermissionDenied when none."""
    if principal.has(Role.AUDITOR):
        return ReadScope(teams=None, content=True, kinds=None)
    if principal.has(Role.PLATFORM_ADMIN):
        return ReadScope(teams=None, content=False, kinds=_ADMIN_KINDS)
    if principal.has(Role.TEAM_ADMIN):
        return ReadScope(teams=frozenset({principal.team}), content=False, kinds=_ADMIN_KINDS)
    raise PermissionDenied("Reading the audit log needs the auditor role (or team_admin for the team's metadata).")
