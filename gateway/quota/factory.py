"""Builds the QuotaService a gateway process uses, from its settings."""
from __future__ import annotations

from gateway.quota.audit import QuotaAuditSink
from gateway.quota.config_file import QuotaConfigFile, StaticQuotaConfig
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.redis_store import RedisQuotaStore
from gateway.quota.scheduling_store import SchedulingStore
from gateway.quota.service import QuotaService
from gateway.quota.settings import QuotaSettings
from gateway.quota.store import QuotaStore


def build_quota_store(settings: QuotaSettings) -> QuotaStore:
    """Redis when ``redis_url`` (or $WARD_REDIS_URL) is set, else the in-process store of one gateway."""
    if settings.redis_url:
        return RedisQuotaStore.from_url(
            settings.redis_url,
            timeout_s=settings.redis_timeout_s,
            cluster=settings.redis_cluster,
            key_prefix=settings.key_prefix,
            usage_retention_days=settings.usage_retention_days,
        )
    return InMemoryQuotaStore(overrides_path=settings.overrides_file)


def build_quota_service(
    settings: QuotaSettings, *, audit: QuotaAuditSink | None = None, scheduling: SchedulingStore | None = None
) -> QuotaService:
    """The service with its store, its configuration source and (given the gateway database's
    ``SchedulingStore``) the admin-set scheduling of teams. Raises QuotaConfigError when the quota
    file is set but missing or invalid, so a gateway never starts on a configuration it cannot read."""
    if settings.config_file is not None:
        config = QuotaConfigFile(settings.config_file, check_interval_s=settings.reload_check_s)
    else:
        config = StaticQuotaConfig()
    return QuotaService(build_quota_store(settings), config, settings, audit=audit, scheduling=scheduling)
