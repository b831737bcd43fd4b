"""Settings of the audit log (section `audit` of the gateway config). Owned by gateway/audit."""
from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CaptureLevelName = Literal["full", "redacted", "metadata"]

# Six years (45 CFR 164.316(b)(2)) counted generously: 6 x 365 days plus two leap days.
SIX_YEARS_DAYS = 6 * 365 + 2


class RedactionPattern(BaseModel):
    """One class of identifier masked at the `redacted` capture level."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=40)
    pattern: str  # a Python regular expression; every match is replaced
    replacement: str = ""  # empty: "[<NAME>]"

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return pattern

    def mask(self) -> str:
        return self.replacement or f"[{self.name.upper()}]"


# Ordered: longer, more specific identifiers first so a date inside an MRN-like run is not split.
DEFAULT_REDACTION_PATTERNS: tuple[RedactionPattern, ...] = (
    RedactionPattern(name="email", pattern=r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    RedactionPattern(name="ssn", pattern=r"\b\d{3}-\d{2}-\d{4}\b"),
    RedactionPattern(
        name="mrn",
        pattern=r"(?i)\b(?:MRN|medical record(?: number| no\.?)?|patient (?:id|no\.?|number))\s*[:#]?\s*[A-Z0-9-]{4,}\b",
    ),
    RedactionPattern(
        name="date",
        pattern=(
            r"\b(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4}"
            r"|\d{1,2}\s+(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?\s+\d{4}"
            r"|(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?\s+\d{1,2},?\s+\d{4})\b"
        ),
    ),
    # A bare run of 6+ digits: a record, account or member number (or an unformatted phone number).
    RedactionPattern(name="number", pattern=r"\b\d{6,}\b"),
    RedactionPattern(
        name="phone",
        pattern=r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\d{2,4})[\s.-]?\d{3,4}[\s.-]?\d{3,4}(?!\w)",
    ),
)


# What the gateway reads for audit.signing_key_path (its nested settings from the environment); the
# admin commands read it too, so one run beside a gateway signs with the gateway's key.
SIGNING_KEY_ENV = "WARD_AUDIT__SIGNING_KEY_PATH"


def signing_key_path(flag: str | None) -> str | None:
    """The audit signing key a command uses: its ``--signing-key``, else $WARD_AUDIT__SIGNING_KEY_PATH,
    else None (the data directory's key)."""
    return flag or os.environ.get(SIGNING_KEY_ENV) or None


class AuditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None: $WARD_DATABASE_URL, else SQLite in the data directory
    database_url: str | None = None
    # Ed25519 private key (PEM, PKCS#8) that signs checkpoints and the chain head.
    # None: <data dir>/audit/checkpoint-key.pem, generated on first use (public key beside it, .pub.pem).
    signing_key_path: str | None = None
    # Extra public keys (PEM files) trusted by `ward audit verify`, e.g. those of retired signing keys.
    trusted_public_keys: list[str] = Field(default_factory=list)
    # A signed checkpoint after this many records, or this many seconds since the last one (whichever first).
    checkpoint_every_records: int = Field(1000, ge=1, le=10_000_000)
    checkpoint_every_s: float = Field(300.0, gt=0, le=86_400)
    # Database down: "fail_closed" refuses the request (503); "spool" writes the record to a local
    # fsync'd append-only file and drains it into the database when it is back.
    on_database_outage: Literal["fail_closed", "spool"] = "fail_closed"
    spool_dir: str | None = None  # None: <data dir>/audit/spool
    spool_drain_interval_s: float = Field(2.0, gt=0, le=3600)
    # Most entries one group commit writes; concurrent requests share a transaction up to this.
    max_batch: int = Field(512, ge=1, le=100_000)
    # Longest a write may wait for the database (lock and statement) before it counts as an outage.
    write_timeout_s: float = Field(5.0, gt=0, le=600)
    retention_days: int = Field(SIX_YEARS_DAYS, ge=1)
    # Capture level for teams the database does not name, and for requests with no team (e.g. 401).
    default_capture_level: CaptureLevelName = "full"
    unauthenticated_capture_level: CaptureLevelName = "metadata"
    capture_cache_ttl_s: float = Field(5.0, ge=0, le=3600)
    redaction_patterns: list[RedactionPattern] = Field(default_factory=lambda: list(DEFAULT_REDACTION_PATTERNS))
