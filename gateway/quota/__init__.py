"""Per-team quotas: exact rate limits and token budgets, in Redis or in-process.

The gateway uses, per request::

    reserve = tokens_to_reserve(prompt_tokens, max_tokens, context_length)
    admission = await quotas.admit(principal.team, key_id=principal.key_id, model=model, reserve_tokens=reserve)
    ...  # dispatch; send admission.headers with the response
    await quotas.settle(admission, prompt_tokens=p, completion_tokens=c)   # also on cancel and error

``admit`` raises QuotaExceeded (429) or QuotaUnavailable (503); ``install_quota_error_handlers`` turns
them into OpenAI-shaped responses. A request admitted before its prompt was counted (a reservation the
prompt can only add to) is raised to the exact reservation with ``quotas.extend(admission,
reserve_tokens=...)``, which refuses and fails as ``admit`` does. ``make_quota_admin_router`` gives the admin endpoints.

A team's scheduling class and weight are quota configuration too (``scheduling``: the file's values,
admin-set ones in the gateway database through ``scheduling_store``); ``quotas.scheduling(team)`` gives
the policy in force for every Generate call. ``cli`` is ``ward quotas``.
"""
from gateway.quota.admin_router import make_quota_admin_router
from gateway.quota.audit import ChangeSource, LogAuditSink, QuotaAuditSink, QuotaChange, SchedulingChange
from gateway.quota.config import QuotaConfig, TeamQuotaConfig
from gateway.quota.config_file import QuotaConfigError, QuotaConfigFile, StaticQuotaConfig, parse_quota_config
from gateway.quota.errors import InvalidQuotaRequest, QuotaError, QuotaExceeded, QuotaStoreError, QuotaUnavailable
from gateway.quota.factory import build_quota_service, build_quota_store
from gateway.quota.http import install_quota_error_handlers, quota_exceeded_response, quota_unavailable_response
from gateway.quota.limits import LimitKind, QuotaLimits, Scope, ScopeKind
from gateway.quota.memory_store import InMemoryQuotaStore
from gateway.quota.redis_store import RedisQuotaStore
from gateway.quota.reservation import tokens_to_reserve
from gateway.quota.scheduling import SchedulingOverride, TeamScheduling
from gateway.quota.limits_in_force import ScopeView
from gateway.quota.service import Admission, QuotaService
from gateway.quota.settings import OutagePolicies, OutagePolicy, QuotaSettings
from gateway.quota.usage import UsageGroupBy, UsageRow

__all__ = [
    "Admission", "ChangeSource", "InMemoryQuotaStore", "InvalidQuotaRequest", "LimitKind", "LogAuditSink",
    "OutagePolicies", "OutagePolicy", "QuotaAuditSink", "QuotaChange", "QuotaConfig", "QuotaConfigError",
    "QuotaConfigFile", "QuotaError", "QuotaExceeded", "QuotaLimits", "QuotaService", "QuotaSettings",
    "QuotaStoreError", "QuotaUnavailable", "RedisQuotaStore", "SchedulingChange", "SchedulingOverride",
    "Scope", "ScopeKind", "ScopeView", "StaticQuotaConfig", "TeamQuotaConfig", "TeamScheduling", "UsageGroupBy", "UsageRow", "build_quota_service",
    "build_quota_store", "install_quota_error_handlers", "make_quota_admin_router", "parse_quota_config",
    "quota_exceeded_response", "quota_unavailable_response", "tokens_to_reserve",
]
