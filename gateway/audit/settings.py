"""Settings of the audit log (section `audit` of the gateway config). Owned by gateway/audit."""
from __future__ import annotations

from pydantic import BaseModel


class AuditSettings(BaseModel):
    # None: $WARD_DATABASE_URL, else SQLite in the data directory
    database_url: str | None = None
