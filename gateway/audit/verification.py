"""Verifying the log from the auditor API: the last result, and a run on demand.

- ``GET /audit/verification`` → the last run's result in this gateway (``null`` before the first run)
- ``POST /audit/verification`` → verifies the whole chain now (the same check as ``ward audit
  verify``: hashes, links, signed checkpoints and head, with the gateway's trusted public keys)
- ``GET /audit/checkpoints`` → the signed checkpoints as JSON Lines (what ``ward audit checkpoints``
  writes): kept beside an export, they let ``ward audit verify --checkpoints`` show later that the
  log still holds what was exported

Auditors only; each call, allowed or refused, is an ``access`` entry in the log.
"""
# No `from __future__ import annotations`: FastAPI must see the dependency aliases as objects.
import asyncio
import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from gateway.audit.admin_reads import mark_access_recorded
from gateway.audit.canonical import utc_iso
from gateway.audit.service import AuditServices
from gateway.audit.signing import TrustedKeys
from gateway.audit.verify import VerifyReport, read_checkpoints, verify_chain
from gateway.auth.errors import PermissionDenied
from gateway.auth.principal import Principal, Role
from gateway.http.query_params import declared_query_only


def report_view(report: VerifyReport, started: datetime, finished: datetime) -> dict[str, Any]:
    first = report.first_problem
    return {
        "object": "audit.verification",
        "ok": report.ok,
        "started_at": utc_iso(started),
        "finished_at": utc_iso(finished),
        "entries": report.entries,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "checkpoints_checked": report.checkpoints_checked,
        "head_signed": report.head_checked,
        "first_problem": first.describe() if first else None,
        "problems": len(report.problems) + report.truncated_problems,
        "notes": list(report.notes),
    }


def make_verification_router(
    *, principal: Callable[..., Any], services: Callable[..., AuditServices], trusted: TrustedKeys
) -> APIRouter:
    router = APIRouter(prefix="/audit", tags=["audit"], dependencies=[declared_query_only(principal)])
    Caller = Annotated[Principal, Depends(principal)]
    Services = Annotated[AuditServices, Depends(services)]
    last: dict[str, Any] = {}
    running = asyncio.Lock()

    async def authorize(who: Principal, svc: AuditServices, request: Request, action: str) -> None:
        if who.has(Role.AUDITOR):
            return
        await svc.log.record_access(who, action, {}, allowed=False, http_status=403,
                                    client_address=request.client.host if request.client else None)
        mark_access_recorded(request)
        raise PermissionDenied("Verifying the audit log needs the auditor role.")

    @router.get("/verification")
    async def last_result(request: Request, who: Caller, svc: Services) -> dict:
        await authorize(who, svc, request, "verification.read")
        await svc.log.record_access(who, "verification.read", {}, allowed=True,
                                    client_address=request.client.host if request.client else None)
        mark_access_recorded(request)
        return {"object": "audit.verification.last", "last": last.get("report")}

    @router.post("/verification")
    async def run(request: Request, who: Caller, svc: Services) -> dict:
        await authorize(who, svc, request, "verification.run")
        async with running:  # one run at a time: it reads the whole log
            started = datetime.now(timezone.utc)
            report = await run_in_threadpool(verify_chain, svc.engine, trusted)
            view = report_view(report, started, datetime.now(timezone.utc))
            view["by"] = who.subject
            last["report"] = view
        await svc.log.record_access(who, "verification.run", {}, allowed=True, count=report.entries,
                                    through_seq=report.last_seq,
                                    client_address=request.client.host if request.client else None)
        mark_access_recorded(request)
        return view

    @router.get("/checkpoints")
    async def checkpoints(request: Request, who: Caller, svc: Services) -> Response:
        await authorize(who, svc, request, "checkpoints.export")

        def read() -> list[dict]:
            with svc.engine.connect() as conn:
                return [cp.to_json() for cp in read_checkpoints(conn)]

        found = await run_in_threadpool(read)
        through = found[-1]["seq"] if found else 0
        await svc.log.record_access(who, "checkpoints.export", {}, allowed=True, count=len(found), through_seq=through,
                                    client_address=request.client.host if request.client else None)
        mark_access_recorded(request)
        body = "".join(json.dumps(cp, sort_keys=True) + "\n" for cp in found)
        disposition = {"Content-Disposition": f'attachment; filename="audit-checkpoints-through-{through}.jsonl"'}
        return Response(body, media_type="application/x-ndjson", headers=disposition)

    return router
