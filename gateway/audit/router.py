"""The auditor API: list, fetch and export records. Kept apart from the app; mount it with::

    app.include_router(create_audit_router(principal=authenticate))

``principal`` is the app's dependency that yields the caller's ``Principal`` (it raises
AuthenticationError for a bad credential). ``services`` yields the ``AuditServices``; by default
it reads ``request.app.state.audit_services``. Who may see what is decided by access.scope_for;
a refusal raises gateway.auth.errors.PermissionDenied, which the app's handlers turn into 403.

Every read, allowed or refused, is appended to the log (kind ``access``: who, what query, which
records) before any record leaves; if that cannot be made durable, the read fails with 503.

Endpoints:
- ``GET /audit/records?since&until&team&subject&model&status&kind&text&cursor&limit`` → ``{"data": [...], "next_cursor"}``
- ``GET /audit/records/{id}`` → one record (id: the request id, or the entry id of other kinds)
- ``GET /audit/export?format=jsonl|csv&signed&<same filters>`` → a streamed file of every matching record
  (``signed=true``: JSON Lines ending with the audit key's signature, see gateway.audit.export)
"""
# No `from __future__ import annotations` here: FastAPI must see the closure-built dependency
# annotations (Caller, Services, ...) as objects, not as strings it would look up in module globals.
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from gateway.audit.access import scope_for
from gateway.audit.admin_reads import mark_access_recorded
from gateway.audit.errors import AuditQueryError, AuditUnavailable
from gateway.audit.export import MEDIA_TYPES, export_lines, export_selection, signed_jsonl
from gateway.audit.reader import MAX_PAGE, ReadScope, RecordFilter
from gateway.audit.service import AuditServices
from gateway.auth.errors import PermissionDenied
from gateway.auth.principal import Principal
from gateway.http.query_params import IsoDateTime, declared_query_only
from gateway.identifiers import MODEL_NAME_MAX, REQUEST_ID_MAX, SUBJECT_MAX, TEAM_NAME_MAX


def services_from_app_state(request: Request) -> AuditServices:
    """The default services dependency: ``request.app.state.audit_services``."""
    services = getattr(request.app.state, "audit_services", None)
    if services is None:
        raise AuditUnavailable("the audit log is not configured on this gateway")
    return services


def _error(status: int, message: str, *, type_: str, code: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status)


def _unavailable(error: AuditUnavailable) -> JSONResponse:
    return _error(503, f"The audit log is unavailable: {error}", type_="service_unavailable", code="audit_unavailable")


def _filters(
    since: Annotated[IsoDateTime | None, Query(description="records received at or after (ISO-8601 with zone)")] = None,
    until: Annotated[IsoDateTime | None, Query(description="records received before")] = None,
    team: Annotated[str | None, Query(max_length=TEAM_NAME_MAX)] = None,
    subject: Annotated[str | None, Query(max_length=SUBJECT_MAX)] = None,
    model: Annotated[str | None, Query(max_length=MODEL_NAME_MAX)] = None,
    status: Annotated[str | None, Query(description="ok, error, cancelled, rejected, incomplete, denied, or an HTTP code")] = None,
    kind: Annotated[str | None, Query(description="request, admin, access or purge")] = None,
    text: Annotated[str | None, Query(max_length=200, description="words in the record's stored text (auditors)")] = None,
) -> dict[str, Any]:
    return {"since": since, "until": until, "team": team, "subject": subject, "model": model, "status": status, "kind": kind,
            "text": text}


def create_audit_router(
    *,
    principal: Callable[..., Any],
    services: Callable[..., AuditServices] = services_from_app_state,
    prefix: str = "/audit",
) -> APIRouter:
    """The auditor router; principal and services are FastAPI dependencies (see the module docstring)."""
    router = APIRouter(prefix=prefix, tags=["audit"], dependencies=[declared_query_only(principal)])
    Caller = Annotated[Principal, Depends(principal)]
    Services = Annotated[AuditServices, Depends(services)]
    Filters = Annotated[dict[str, Any], Depends(_filters)]

    async def authorize(who: Principal, svc: AuditServices, request: Request, action: str, query: dict) -> ReadScope:
        try:
            return scope_for(who)
        except PermissionDenied:
            # A refused attempt is evidence too.
            await svc.log.record_access(who, action, query, allowed=False, client_address=_client(request), http_status=403)
            mark_access_recorded(request)
            raise

    @router.get("/records")
    async def list_records(
        request: Request,
        who: Caller,
        svc: Services,
        filters: Filters,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ):
        query = {**_jsonable(filters), "cursor": cursor, "limit": limit}
        try:
            scope = await authorize(who, svc, request, "list", query)
            page = await run_in_threadpool(svc.reader.list_records, RecordFilter(**filters), scope, cursor=cursor, limit=limit)
            returned = [r["id"] for r in page.records]
            await svc.log.record_access(who, "list", query, allowed=True, record_ids=returned, client_address=_client(request))
            mark_access_recorded(request)
        except AuditQueryError as error:
            return _error(400, str(error), type_="invalid_request_error", code="invalid_query")
        except AuditUnavailable as error:
            return _unavailable(error)
        return {"object": "list", "data": page.records, "next_cursor": page.next_cursor}

    @router.get("/records/{record_id}")
    async def get_record(
        request: Request, record_id: Annotated[str, Path(max_length=REQUEST_ID_MAX)], who: Caller, svc: Services
    ):
        query = {"id": record_id}
        try:
            scope = await authorize(who, svc, request, "get", query)
            record = await run_in_threadpool(svc.reader.get_record, record_id, scope)
            found = [record["id"]] if record else []
            await svc.log.record_access(who, "get", query, allowed=True, record_ids=found, client_address=_client(request))
            mark_access_recorded(request)
        except AuditUnavailable as error:
            return _unavailable(error)
        if record is None:
            return _error(404, f"No audit record {record_id!r}.", type_="invalid_request_error", code="record_not_found", param="id")
        return record

    @router.get("/export")
    async def export(
        request: Request,
        who: Caller,
        svc: Services,
        filters: Filters,
        format: Literal["jsonl", "csv"] = "jsonl",
        signed: Annotated[bool, Query(description="end a JSON Lines export with the audit key's signature")] = False,
    ):
        query = {**_jsonable(filters), "format": format, **({"signed": True} if signed else {})}
        if signed and format != "jsonl":
            return _error(400, "Only JSON Lines exports are signed.", type_="invalid_request_error", code="invalid_value",
                          param="signed")
        try:
            scope = await authorize(who, svc, request, "export", query)
            flt = RecordFilter(**filters)
            if flt.text and not scope.content:
                raise AuditQueryError("searching the records' text needs the auditor role")
            # The export is fixed to the log as it stands now, and that bound is what gets recorded.
            through = await run_in_threadpool(svc.reader.head_seq)
            await svc.log.record_access(who, "export", query, allowed=True, through_seq=through, client_address=_client(request))
            mark_access_recorded(request)
        except AuditQueryError as error:
            return _error(400, str(error), type_="invalid_request_error", code="invalid_query")
        except AuditUnavailable as error:
            return _unavailable(error)
        records = svc.reader.iter_records(flt, scope, through_seq=through)
        if signed:
            lines = signed_jsonl(records, svc.log.store.signer, through, export_selection(flt, scope))
        else:
            lines = export_lines(records, format)
        filename = f"audit-through-{through}{'-signed' if signed else ''}.{format}"
        disposition = {"Content-Disposition": f'attachment; filename="{filename}"'}
        return StreamingResponse(lines, media_type=MEDIA_TYPES[format], headers=disposition)

    return router


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _jsonable(filters: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in filters.items() if v is not None}
