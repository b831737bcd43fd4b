"""Prometheus metrics of the quota layer (default registry, names under ward_quota_)."""
from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from prometheus_client import Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

ADMITTED = Counter(
    "ward_quota_admitted",
    "Requests admitted; mode is exact (the shared store) or degraded (outage policy, local limiter).",
    ["team", "mode"],
)
REJECTED = Counter("ward_quota_rejected", "Requests refused with 429, by the limit that refused them.", ["team", "limit_kind"])
UNAVAILABLE = Counter("ward_quota_unavailable", "Requests refused with 503: store down and a fail-closed limit in play.", ["team"])
REQUESTS = Counter("ward_quota_requests", "Requests settled (finished, cancelled or failed).", ["team"])
TOKENS = Counter("ward_quota_tokens", "Tokens settled, by type (prompt or completion).", ["team", "type"])
DEGRADED = Gauge("ward_quota_degraded", "1 while the quota store is unreachable and the outage policy applies.")
STORE_ERRORS = Counter("ward_quota_store_errors", "Failed calls to the quota store.", ["operation"])
PENDING_SETTLEMENTS = Gauge("ward_quota_pending_settlements", "Settlements waiting for the store to come back.")
DROPPED_SETTLEMENTS = Counter("ward_quota_dropped_settlements", "Settlements dropped because the pending queue was full.")
CONFIG_RELOADS = Counter("ward_quota_config_reloads", "Reloads of the quota file, accepted or rejected.", ["result"])

_ALL = (
    ADMITTED, REJECTED, UNAVAILABLE, REQUESTS, TOKENS, DEGRADED, STORE_ERRORS,
    PENDING_SETTLEMENTS, DROPPED_SETTLEMENTS, CONFIG_RELOADS,
)


class TeamSeries:
    """One team's per-request series, looked up once: ``labels()`` takes a lock and validates its
    arguments on every call, and every admitted request touches four of these."""

    __slots__ = ("admitted_exact", "requests", "prompt_tokens", "completion_tokens")

    def __init__(self, team: str) -> None:
        self.admitted_exact = ADMITTED.labels(team=team, mode="exact")
        self.requests = REQUESTS.labels(team=team)
        self.prompt_tokens = TOKENS.labels(team=team, type="prompt")
        self.completion_tokens = TOKENS.labels(team=team, type="completion")


@lru_cache(maxsize=4096)
def team_series(team: str) -> TeamSeries:
    return TeamSeries(team)


class QuotaMetricsCollector(Collector):
    """Serves the metrics above from another registry too, e.g. the gateway app's own:
    ``app_registry.register(QuotaMetricsCollector())``."""

    def collect(self) -> Iterable[Metric]:
        for metric in _ALL:
            yield from metric.collect()
