"""Prometheus metrics of the audit writer (names under ``ward_audit_``).

- ``ward_audit_write_latency_seconds{destination}``: how long a request waited for its audit entry
  to become durable, from being queued to committed (``database``) or fsync'd (``spool``, while the
  database is down). Every answer waits for this, so it is part of every request's latency.
- ``ward_audit_write_failures_total``: entries that could not be made durable; each one is a request
  that was refused with 503 (the gateway serves nothing it cannot record).
- ``ward_audit_spool_pending``: 1 while entries wait in the local spool for the database.

The metrics live in no registry of their own; the gateway adds this collector to its registry
(``gateway.governance``), so several gateways in one process (tests) never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# Group commits take about a millisecond on a local disk and tens over a network; an outage shows
# as the database's connect timeout.
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class AuditMetrics(Collector):
    """What the audit writer observes; ``spool_pending`` is read at scrape time."""

    def __init__(self, spool_pending: Callable[[], bool] = lambda: False) -> None:
        self._spool_pending = spool_pending
        self.write_latency = Histogram(
            "ward_audit_write_latency_seconds",
            "Time from queueing an audit entry to its being durable, by where it went (database or spool).",
            ["destination"],
            buckets=WRITE_BUCKETS,
            registry=None,
        )
        self.write_failures = Counter(
            "ward_audit_write_failures",
            "Audit entries that could not be made durable (their requests were refused with 503).",
            registry=None,
        )
        # Both series exist from the start, kept: every request observes one.
        self._to_database = self.write_latency.labels("database")
        self._to_spool = self.write_latency.labels("spool")

    def observe_written(self, seconds: float, *, spooled: bool) -> None:
        (self._to_spool if spooled else self._to_database).observe(seconds)

    def observe_failed(self) -> None:
        self.write_failures.inc()

    def collect(self) -> Iterable[Metric]:
        yield from self.write_latency.collect()
        yield from self.write_failures.collect()
        pending = GaugeMetricFamily(
            "ward_audit_spool_pending", "1 while audit entries wait in the local spool for the database."
        )
        pending.add_metric([], 1.0 if self._spool_pending() else 0.0)
        yield pending
