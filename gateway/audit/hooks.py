"""The audit log at the gateway's request hooks (gateway.hooks.RequestHooks): one record per request.

- ``on_start`` (a stream is about to start): the open entry, durable before the stream's first byte.
- ``before_finish`` (the answer is known, its last byte not sent): the completion (streams) or the
  whole record (everything else), durable before the last byte or the body goes out.
- ``on_failure`` (any rejection or failure, 401 and client disconnects included): the completion of
  an opened stream, or a whole record of the failed request.

An audit write that cannot be made durable becomes a 503 (``audit_unavailable``): nothing is served
unaudited. Put these hooks last in a HookChain, so that no later hook can turn a recorded success
into an error.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

from gateway.audit.errors import AuditError, AuditUnavailable
from gateway.audit.log import AuditLog
from gateway.audit.records import RequestEnd, RequestStart, RequestStatus, as_actor
from gateway.http.request_context import RequestContext
from gateway.http.errors import ServiceUnavailable
from gateway.hooks import NoopHooks

log = logging.getLogger(__name__)

OPEN_KEY = "audit.open"  # ctx.extra key of a stream's OpenRequest
OPENING_KEY = "audit.opening"  # ctx.extra key of a stream's open entry on its way (an asyncio task)
FAILED_KEY = "audit.failed"  # set when this request fails because its record could not be written
REJECTION_STATUSES = frozenset({401, 403, 429})  # refused by identity or quota before any work
PROMPT_FIELDS = frozenset({"messages", "prompt", "input"})  # kept as the prompt, not as parameters


def _time(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)


def _params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if hasattr(params, "model_dump"):
        return params.model_dump(mode="json", exclude_none=True, exclude=PROMPT_FIELDS)
    if isinstance(params, dict):
        return {k: v for k, v in params.items() if k not in PROMPT_FIELDS}
    return {"value": repr(params)}


def request_start(ctx: RequestContext) -> RequestStart:
    """What the log keeps about how a request came in."""
    return RequestStart(
        request_id=ctx.request_id,
        endpoint=ctx.endpoint,
        received_at=_time(ctx.received_at),
        # The log's snapshot of the principal, taken once: the draft reads it three times.
        principal=as_actor(ctx.principal),
        client_address=ctx.client_address,
        model=ctx.model,
        worker=ctx.worker,
        params=_params(ctx.params),
        prompt=ctx.prompt,
    )


def _response(ctx: RequestContext) -> Any:
    if not ctx.num_choices:
        return None
    texts = [ctx.response_text(i) for i in range(ctx.num_choices)]
    return texts[0] if len(texts) == 1 else texts


def request_end(ctx: RequestContext, status: RequestStatus, http_status: int | None) -> RequestEnd:
    """What the log keeps about how a request ended."""
    reasons = [r for r in ctx.finish_reasons if r]
    error = ctx.error
    return RequestEnd(
        status=status,
        http_status=http_status,
        finished_at=_time(ctx.finished_at) or datetime.now(timezone.utc),
        first_token_at=_time(ctx.first_token_at),
        response=_response(ctx),
        finish_reason=(reasons[0] if len(set(reasons)) == 1 else ",".join(reasons)) if reasons else None,
        prompt_tokens=ctx.prompt_tokens,
        completion_tokens=ctx.completion_tokens if ctx.num_choices else None,
        error=error.message if error is not None else None,
        error_code=error.code if error is not None else None,
        worker=ctx.worker,
    )


def _failure_status(ctx: RequestContext) -> RequestStatus:
    if ctx.cancelled:
        return RequestStatus.CANCELLED
    if ctx.status_code in REJECTION_STATUSES:
        return RequestStatus.REJECTED
    return RequestStatus.ERROR


def _unavailable(error: AuditUnavailable) -> ServiceUnavailable:
    log.error("audit log unavailable, refusing to serve: %s", error)
    return ServiceUnavailable("The audit log is unavailable; the request was not served. Please retry.", code="audit_unavailable")


class AuditHooks(NoopHooks):
    """Request hooks writing to an AuditLog; starts and closes it with the app (startup/shutdown)."""

    def __init__(self, audit_log: AuditLog) -> None:
        self.log = audit_log

    async def startup(self) -> None:
        await self.log.start()

    async def shutdown(self) -> None:
        await self.log.close()

    async def on_start(self, ctx: RequestContext) -> None:
        if not ctx.stream:
            return  # one entry at the end is enough: nothing reaches the client before it
        # Committed while the worker starts on the prompt; the stream's first byte waits for it
        # (before_response). A task of its own: the request being cancelled does not stop it.
        ctx.extra[OPENING_KEY] = asyncio.ensure_future(self.log.open(request_start(ctx)))

    async def before_response(self, ctx: RequestContext) -> None:
        await self._opened(ctx)

    async def _opened(self, ctx: RequestContext) -> None:
        """Waits for the stream's open entry begun in on_start (once); 503 if it could not be written."""
        opening = ctx.extra.pop(OPENING_KEY, None)
        if opening is None:
            return
        try:
            ctx.extra[OPEN_KEY] = await opening
        except AuditUnavailable as error:
            ctx.extra[FAILED_KEY] = True
            raise _unavailable(error) from None

    async def before_finish(self, ctx: RequestContext) -> None:
        await self._opened(ctx)
        end = request_end(ctx, RequestStatus.OK, 200)
        handle = ctx.extra.get(OPEN_KEY)
        try:
            if handle is not None:
                await self.log.complete(handle, end, alone=ctx.alone)
            else:
                await self.log.record_request(request_start(ctx), end, alone=ctx.alone)
        except AuditUnavailable as error:
            ctx.extra[FAILED_KEY] = True
            raise _unavailable(error) from None

    async def on_failure(self, ctx: RequestContext) -> None:
        try:
            await self._opened(ctx)  # an open entry on its way is completed below, not duplicated
        except ServiceUnavailable:
            pass  # FAILED_KEY is set: nothing more can be written
        if ctx.extra.get(FAILED_KEY):
            return  # the database is down; that is why this request fails
        end = request_end(ctx, _failure_status(ctx), ctx.status_code)
        handle = ctx.extra.get(OPEN_KEY)
        try:
            if handle is not None:
                if not handle.completed:
                    await self.log.complete(handle, end)
            else:
                await self.log.record_request(request_start(ctx), end)
        except AuditError as error:
            log.error("audit record of failed request %s not written: %s", ctx.request_id, error)
