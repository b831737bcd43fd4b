"""The audit writer's metrics: write latency per destination, failures, and the spool's state
(gateway.audit.metrics), read from a Prometheus registry as the gateway's /metrics serves them."""
from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from gateway.audit.chain import ChainStore, CheckpointPolicy
from gateway.audit.errors import AuditUnavailable
from gateway.audit.log import AuditLog
from gateway.audit.service import create_audit_engine
from gateway.audit.spool import Spool
from gateway.audit.team_levels import FixedCaptureLevels
from gateway.db.engine import upgrade_to_head
from test_audit_support import request_end, request_start, run_with_log, signer  # noqa: F401


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'ward.db'}"
    upgrade_to_head(url)
    return url


def sqlite_log(url: str, signer, spool: Spool | None = None) -> AuditLog:
    # A short write timeout: a locked database is an outage within 0.3 s.
    store = ChainStore(create_audit_engine(url), signer, CheckpointPolicy(), write_timeout_s=0.3)
    return AuditLog(store, capture_levels=FixedCaptureLevels(), spool=spool, drain_interval_s=0.1)


def registry_of(log: AuditLog) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(log.metrics)
    return registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_every_durable_entry_observes_how_long_it_waited(sqlite_url, signer):
    log = sqlite_log(sqlite_url, signer)
    registry = registry_of(log)

    async def body(log):
        for i in range(3):
            await log.record_request(request_start(i), request_end(i))

    started = time.perf_counter()
    run_with_log(log, body)
    elapsed = time.perf_counter() - started
    assert value(registry, "ward_audit_write_latency_seconds_count", destination="database") == 3
    total = value(registry, "ward_audit_write_latency_seconds_sum", destination="database")
    assert 0 < total <= elapsed
    assert value(registry, "ward_audit_write_latency_seconds_count", destination="spool") == 0
    assert value(registry, "ward_audit_write_failures_total") == 0
    assert value(registry, "ward_audit_spool_pending") == 0


def test_an_entry_that_cannot_be_made_durable_is_a_write_failure(sqlite_url, signer):
    log = sqlite_log(sqlite_url, signer)
    registry = registry_of(log)
    blocker = create_audit_engine(sqlite_url).connect()

    async def body(log):
        blocker.exec_driver_sql("BEGIN EXCLUSIVE")  # another process holds the database
        with pytest.raises(AuditUnavailable):
            await log.record_request(request_start(1), request_end(1))
        blocker.rollback()
        await log.record_request(request_start(2), request_end(2))

    try:
        run_with_log(log, body)
    finally:
        blocker.close()
    assert value(registry, "ward_audit_write_failures_total") == 1
    assert value(registry, "ward_audit_write_latency_seconds_count", destination="database") == 1


def test_spooled_entries_are_timed_apart_and_the_spool_shows_until_drained(sqlite_url, signer, tmp_path):
    log = sqlite_log(sqlite_url, signer, spool=Spool(tmp_path / "spool"))
    registry = registry_of(log)
    blocker = create_audit_engine(sqlite_url).connect()

    async def body(log):
        blocker.exec_driver_sql("BEGIN EXCLUSIVE")
        ref = await log.record_request(request_start(1), request_end(1))
        assert ref.spooled
        assert value(registry, "ward_audit_spool_pending") == 1
        assert value(registry, "ward_audit_write_latency_seconds_count", destination="spool") == 1
        blocker.rollback()
        deadline = time.monotonic() + 10
        while value(registry, "ward_audit_spool_pending") == 1:
            assert time.monotonic() < deadline, "the spool was never drained"
            await asyncio.sleep(0.05)

    try:
        run_with_log(log, body)
    finally:
        blocker.close()
    assert value(registry, "ward_audit_write_failures_total") == 0
