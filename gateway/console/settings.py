"""The web console's settings (``console:`` in the gateway config, WARD_CONSOLE__* in the environment)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ConsoleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # a session ends this long after sign-in, whatever happens (short-lived by design)
    session_ttl_s: int = Field(default=1800, ge=60, le=12 * 3600)
    # ... and after this long without a request
    idle_timeout_s: int = Field(default=900, ge=60, le=12 * 3600)
    # sign-ins (API key or identity provider) in flight or held at once; the oldest go first
    max_sessions: int = Field(default=10_000, ge=1)
