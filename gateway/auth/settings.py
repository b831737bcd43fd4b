"""Settings of the identity layer (section `auth` of the gateway config). Owned by gateway/auth."""
from __future__ import annotations

from pydantic import BaseModel


class AuthSettings(BaseModel):
    # API key that bootstraps a platform admin (ward up --admin-key); None: none is configured
    admin_key: str | None = None
