"""Quotas, the audit log and the admin policy, built from the gateway's settings and wired for ``create_app``.

``build_governance`` returns everything the served app needs from these layers:

- ``hooks``: ``HookChain([QuotaHooks, AuditHooks])``. Quotas admit before dispatch and settle at the
  end; the audit hooks come last, so no later hook can turn a recorded outcome into another one. The
  chain starts the audit log before the quota service and stops it after (``HookChain``).
- ``policy``: the ``TeamPolicy`` (``create_app(policy=...)``): which models a team may use (the model
  approval policy) and the scheduling class and weight its Generate calls carry (the quota layer).
- ``routers``: the quota admin API (``/admin/teams/{team}/quotas``, ``/scheduling``, ``/usage``), the
  model approval API (``/admin/models``, ``/admin/teams/{team}/models``) and the auditor API
  (``/audit/...``), all behind the identity layer's ``current_principal``.
- ``middleware``: ``AuditedAdminReads``: every ``/admin`` and ``/audit`` answer carries
  ``x-request-id`` and every admin read is recorded before it is sent.
- ``error_converters``: the quota and audit errors as OpenAI-shaped 429 / 503 / 400.
- ``collectors``: the quota and audit-writer metrics, for the app's own Prometheus registry.

The audit log lives in the gateway database unless ``audit.database_url`` says otherwise, so the
teams' capture levels are read where the identity layer keeps them. Quota, scheduling and model policy
changes made through the admin API or by a reload of the quota file are written to the same log.
"""
from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from gateway.audit.admin_reads import AuditedAdminReads
from gateway.audit.errors import AuditQueryError, AuditUnavailable
from gateway.audit.hooks import AuditHooks
from gateway.audit.quota_changes import AuditedQuotaChanges
from gateway.audit.router import create_audit_router
from gateway.audit.service import AuditServices, build_audit_services
from gateway.auth.dependencies import current_principal
from gateway.auth.stores import TeamStore
from gateway.http.errors import InvalidRequest, OpenAIError, ServiceUnavailable
from gateway.db import create_db_engine
from gateway.hooks import HookChain
from gateway.policy.router import make_policy_admin_router
from gateway.policy.service import ModelPolicy
from gateway.policy.store import ModelPolicyStore
from gateway.policy.team_policy import GovernedTeamPolicy
from gateway.quota.admin_router import make_quota_admin_router
from gateway.quota.factory import build_quota_service
from gateway.quota.hooks import QuotaHooks, quota_error_converters
from gateway.quota.metrics import QuotaMetricsCollector
from gateway.quota.scheduling_store import SchedulingStore
from gateway.quota.service import QuotaService
from gateway.settings import GatewaySettings


@dataclass
class Governance:
    """The quota, audit and policy layers of one gateway process, ready to hand to ``create_app``."""

    audit: AuditServices
    quotas: QuotaService
    policy: GovernedTeamPolicy
    hooks: HookChain
    routers: list[APIRouter]
    error_converters: dict[type[Exception], Callable[[Exception], OpenAIError]]
    collectors: list[Collector]
    # (middleware class, kwargs) pairs for app.add_middleware
    middleware: list[tuple[type, dict]]


def build_governance(
    settings: GatewaySettings,
    *,
    database_url: str,
    data_dir: str | os.PathLike | None = None,
    engine: Engine | None = None,
    teams: TeamStore | None = None,
) -> Governance:
    """Builds the layers (migrates the audit database, loads or creates the signing key, reads the
    quota file). Nothing runs until the app starts the hook chain and the policy.

    ``database_url`` is the gateway database (already migrated), used by the audit log when
    ``audit.database_url`` is unset; ``engine`` an engine on it (made when not given) for the teams'
    scheduling and the model policy. ``teams``, when given, limits the quota admin API to registered
    teams (404 otherwise). Raises SigningKeyError, QuotaConfigError, or the database's error when it
    is unreachable.
    """
    audit_settings = settings.audit
    if audit_settings.database_url is None:
        audit_settings = audit_settings.model_copy(update={"database_url": database_url})
    audit = build_audit_services(audit_settings, data_dir if data_dir is not None else settings.data_dir)
    engine = engine if engine is not None else create_db_engine(database_url)
    try:
        quotas = build_quota_service(
            settings.quota, audit=AuditedQuotaChanges(audit.log), scheduling=SchedulingStore(engine)
        )
    except BaseException:
        audit.engine.dispose()
        raise
    models = ModelPolicy(ModelPolicyStore(engine), recorder=audit.log, refresh_s=settings.quota.override_refresh_s)
    hooks = HookChain([QuotaHooks(quotas), AuditHooks(audit.log)])
    routers = [
        make_quota_admin_router(
            principal=current_principal,
            service=lambda: quotas,
            team_exists=(lambda: _team_exists(teams)) if teams is not None else None,
        ),
        make_policy_admin_router(principal=current_principal, policy=lambda: models),
        create_audit_router(principal=current_principal),
    ]
    return Governance(
        audit=audit,
        quotas=quotas,
        policy=GovernedTeamPolicy(models, quotas),
        hooks=hooks,
        routers=routers,
        error_converters={**quota_error_converters(), **audit_error_converters()},
        collectors=[QuotaMetricsCollector(), audit.log.metrics],
        middleware=[(AuditedAdminReads, {"recorder": audit.log})],
    )


def _team_exists(teams: TeamStore) -> Callable[[str], Awaitable[bool]]:
    async def exists(team: str) -> bool:
        return await run_in_threadpool(teams.get, team) is not None

    return exists


def audit_error_converters() -> dict[type[Exception], Callable[[Any], OpenAIError]]:
    """The audit layer's errors outside the request hooks (admin changes, auditor reads) in OpenAI's shape."""
    # AuditInputError is left to the generic handler: it means a caller's bug (a 500), not bad input.
    return {
        AuditUnavailable: _audit_unavailable,
        AuditQueryError: lambda exc: InvalidRequest(str(exc), code="invalid_query"),
    }


def _audit_unavailable(exc: AuditUnavailable) -> OpenAIError:
    return ServiceUnavailable("The audit log is unavailable. Please retry.", code="audit_unavailable")
