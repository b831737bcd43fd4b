"""Settings of the quota layer (section `quota` of the gateway config). Owned by gateway/quota."""
from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.quota.limits import LimitKind


class OutagePolicy(str, Enum):
    """What a limit does while the shared store is unreachable."""

    FAIL_CLOSED = "fail_closed"  # refuse requests this limit applies to with 503
    FAIL_OPEN = "fail_open"  # admit as if the limit were not set
    LOCAL = "local"  # enforce a conservative share (limit / gateway_replicas) in this process


class OutagePolicies(BaseModel):
    """One policy per limit kind. Budgets cannot be kept locally (the settled totals live in the store)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: OutagePolicy = OutagePolicy.LOCAL
    tokens_per_minute: OutagePolicy = OutagePolicy.LOCAL
    max_concurrent: OutagePolicy = OutagePolicy.LOCAL
    tokens_per_day: OutagePolicy = OutagePolicy.FAIL_CLOSED
    tokens_per_month: OutagePolicy = OutagePolicy.FAIL_CLOSED

    @model_validator(mode="after")
    def _budgets_cannot_be_local(self) -> OutagePolicies:
        for kind in (LimitKind.TOKENS_PER_DAY, LimitKind.TOKENS_PER_MONTH):
            if self.of(kind) is OutagePolicy.LOCAL:
                raise ValueError(f"{kind.value}: a budget cannot be kept locally; use fail_closed or fail_open")
        return self

    def of(self, kind: LimitKind) -> OutagePolicy:
        return getattr(self, kind.value)


class QuotaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # redis://... ; None: the in-process store (one gateway). Env: WARD_REDIS_URL
    redis_url: str | None = Field(default_factory=lambda: os.environ.get("WARD_REDIS_URL") or None)
    # The URL names one node of a Redis Cluster.
    redis_cluster: bool = False
    # The YAML file of limits (see docs/quotas.md); None: limits come from the admin API only.
    config_file: Path | None = None
    # In-process store only: where admin-set limits survive restarts; None: they live in memory.
    overrides_file: Path | None = None
    # Prefix of every Redis key; all keys of one team share its hash tag.
    key_prefix: str = Field(default="ward:quota", min_length=1)
    # How often the file is checked for changes, and how often admin-set limits are re-read from Redis.
    reload_check_s: float = Field(default=1.0, gt=0)
    override_refresh_s: float = Field(default=1.0, gt=0)
    # A reservation never settled (crashed gateway) is freed after this long; keep it above the
    # longest request the gateway allows.
    reservation_ttl_s: float = Field(default=900.0, gt=0)
    # Connect and read timeout of every Redis call.
    redis_timeout_s: float = Field(default=0.25, gt=0)
    # The breaker opens after this many consecutive store failures, and probes again after reset_s.
    breaker_failure_threshold: int = Field(default=3, ge=1)
    breaker_reset_s: float = Field(default=2.0, gt=0)
    # Gateway processes sharing the store: during an outage each enforces limit // gateway_replicas.
    gateway_replicas: int = Field(default=1, ge=1)
    outage_policy: OutagePolicies = Field(default_factory=OutagePolicies)
    # Settlements kept in memory while the store is down, replayed when it is back.
    max_pending_settlements: int = Field(default=100_000, ge=0)
    usage_retention_days: int = Field(default=400, ge=1)
