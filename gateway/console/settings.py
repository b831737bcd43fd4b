"""The web console's settings (``console:`` in the gateway config, WARD_CONSOLE__* in the environment)."""
from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ConsoleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # a session ends this long after sign-in, whatever happens (short-lived by design)
    session_ttl_s: int = Field(default=1800, ge=60, le=12 * 3600)
    # ... and after this long without a request
    idle_timeout_s: int = Field(default=900, ge=60, le=12 * 3600)
    # sessions held at once in the gateway process (without Redis); the oldest go first
    max_sessions: int = Field(default=10_000, ge=1)
    # single sign-ons started and not yet back from the provider, kept at once in either store (each
    # for 10 minutes at most); a new one pushes out the oldest, so no flood grows the store past this
    max_pending_sign_ins: int = Field(default=10_000, ge=1)
    # single sign-ons one client address (an IPv6 /64) may start per minute on each gateway process
    sign_in_starts_per_minute: int = Field(default=20, ge=1)
    # The address browsers use, e.g. https://ward.hospital.example, when a proxy or ingress (TLS ended
    # there, Host rewritten) stands in front: the provider's redirect URI, the origin changes must come
    # from and the cookies' Secure flag follow it instead of what the gateway sees.
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _an_origin(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query \
                or parts.fragment or parts.username:
            raise ValueError("public_url must be an origin such as https://ward.hospital.example (no path)")
        return f"{parts.scheme}://{parts.netloc}"
