"""Settings of the quota layer (section `quota` of the gateway config). Owned by gateway/quota."""
from __future__ import annotations

from pydantic import BaseModel


class QuotaSettings(BaseModel):
    # redis://... ; None: the in-process store (one gateway). Env: WARD_REDIS_URL
    redis_url: str | None = None
