"""Usage over time, from the audit log: requests, tokens, refusals and latency per time bucket.

``GET /admin/usage/series?since&until&bucket=hour|day&team&model`` → ``{"data": [{"start", "team",
"model", "requests", "prompt_tokens", "completion_tokens", "refusals", "errors", "latency_ms_p50",
"latency_ms_max"}]}``. Platform admins see every team (or one, with ``team``); a team admin sees only
its own team. Only the records' header and counters are read, never their content. Like every admin
read, the request itself is recorded (gateway.audit.admin_reads).
"""
# No `from __future__ import annotations`: FastAPI must see the dependency aliases as objects.
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import Engine, select
from starlette.concurrency import run_in_threadpool

from gateway.audit.canonical import as_utc, utc_iso
from gateway.audit.chain import ENTRIES
from gateway.audit.entries import EntryKind
from gateway.auth.errors import PermissionDenied
from gateway.auth.principal import Principal, Role
from gateway.http.errors import InvalidRequest, ServiceUnavailable
from gateway.http.query_params import IsoDateTime, declared_query_only
from gateway.identifiers import MODEL_NAME_MAX, TEAM_NAME_MAX

BUCKETS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
MAX_BUCKETS = 24 * 93  # a quarter by the hour
ENDED = (EntryKind.REQUEST.value, EntryKind.REQUEST_COMPLETE.value)


@dataclass
class _Cell:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    refusals: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "refusals": self.refusals,
            "errors": self.errors,
            "latency_ms_p50": round(statistics.median(lat), 1) if lat else None,
            "latency_ms_max": round(max(lat), 1) if lat else None,
        }


def _floor(moment: datetime, bucket: str) -> datetime:
    moment = moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if bucket == "day" else moment


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


def usage_series(engine: Engine, since: datetime, until: datetime, bucket: str,
                 team: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
    """Rows per (bucket start, team, model), oldest first, for requests that ended in [since, until)."""
    e = ENTRIES.c
    query = select(e.kind, e.occurred_at, e.request_id, e.team, e.model, e.status, e.http_status, e.data).where(
        e.kind.in_(ENDED), e.occurred_at >= since, e.occurred_at < until
    )
    if team is not None:
        query = query.where(e.team == team)
    if model is not None:
        query = query.where(e.model == model)
    cells: dict[tuple[datetime, str, str], _Cell] = {}
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(e.seq)).all()
        streamed = [r.request_id for r in rows if r.kind == EntryKind.REQUEST_COMPLETE.value and r.request_id]
        opened: dict[str, datetime] = {}
        for start in range(0, len(streamed), 500):
            chunk = streamed[start:start + 500]
            found = conn.execute(select(e.request_id, e.occurred_at).where(
                e.kind == EntryKind.REQUEST_OPEN.value, e.request_id.in_(chunk)))
            opened.update({r.request_id: as_utc(r.occurred_at) for r in found})
    for row in rows:
        data = json.loads(row.data)
        ended = as_utc(row.occurred_at)
        cell = cells.setdefault((_floor(ended, bucket), row.team or "", row.model or ""), _Cell())
        cell.requests += 1
        cell.prompt_tokens += data.get("prompt_tokens") or 0
        cell.completion_tokens += data.get("completion_tokens") or 0
        if row.status == "rejected":
            cell.refusals += 1
        elif row.status == "error":
            cell.errors += 1
        received = _parse_time(data.get("received_at")) or opened.get(row.request_id)
        finished = _parse_time(data.get("finished_at"))
        if row.status == "ok" and received is not None and finished is not None:
            cell.latencies_ms.append(max(0.0, (finished - received).total_seconds() * 1000))
    return [{"start": utc_iso(start), "team": t or None, "model": m or None, **cell.as_dict()}
            for (start, t, m), cell in sorted(cells.items())]


def make_usage_series_router(*, principal: Callable[..., Any], engine: Callable[..., Engine]) -> APIRouter:
    """``principal`` and ``engine`` are dependencies: the caller and the audit database's engine."""
    router = APIRouter(prefix="/admin/usage", tags=["admin: usage"], dependencies=[declared_query_only(principal)])
    PrincipalDep = Annotated[Principal, Depends(principal)]
    EngineDep = Annotated[Engine, Depends(engine)]

    @router.get("/series")
    async def series(
        who: PrincipalDep,
        audit_engine: EngineDep,
        since: Annotated[IsoDateTime | None, Query(description="start (default: `until` minus 24 buckets)")] = None,
        until: Annotated[IsoDateTime | None, Query(description="end, excluded (default: now)")] = None,
        bucket: Literal["hour", "day"] = "hour",
        team: Annotated[str | None, Query(max_length=TEAM_NAME_MAX)] = None,
        model: Annotated[str | None, Query(max_length=MODEL_NAME_MAX)] = None,
    ) -> dict:
        if not who.has(Role.PLATFORM_ADMIN):
            if not who.has(Role.TEAM_ADMIN):
                raise PermissionDenied("Reading usage needs platform_admin, or team_admin of the team.")
            if team is not None and team != who.team:
                raise PermissionDenied("A team admin reads its own team's usage only.")
            team = who.team
        try:
            end = as_utc(until) if until else datetime.now(timezone.utc)
            start = as_utc(since) if since else _floor(end, bucket) - 23 * BUCKETS[bucket]
        except OverflowError:  # a moment near the calendar's ends
            start = end = datetime.now(timezone.utc)
        if start >= end or (end - start) / BUCKETS[bucket] > MAX_BUCKETS:
            raise InvalidRequest(f"`since` must be before `until`, at most {MAX_BUCKETS} {bucket}s apart.",
                                 code="invalid_value", param="since")
        try:
            rows = await run_in_threadpool(usage_series, audit_engine, start, end, bucket, team, model)
        except Exception as exc:  # the audit database is down
            raise ServiceUnavailable("The audit log is unavailable. Please retry.", code="audit_unavailable") from exc
        return {"object": "list", "since": utc_iso(start), "until": utc_iso(end), "bucket": bucket, "data": rows}

    return router


def engine_from_app_state(request: Request) -> Engine:
    services = getattr(request.app.state, "audit_services", None)
    if services is None:
        raise ServiceUnavailable("The audit log is not configured on this gateway.", code="audit_unavailable")
    return services.engine
