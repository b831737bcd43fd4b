"""Per-request plumbing between HTTP and serving: the RequestContext, identity, body parsing,
disconnect detection, JSON responses."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.errors import PermissionDenied
from gateway.auth.principal import Role
from gateway.http.delayed_watch import delayed_starts
from gateway.http.request_context import RequestContext
from gateway.http.errors import ClientDisconnected, InvalidRequest
from gateway.serving.sse import EventStream, dumps
from gateway.http.sse_response import EventStreamResponse

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

CONTEXT_KEY = "ward.context"
RECEIVED_KEY = "ward.received"  # perf_counter() at arrival, stamped by the body-limit middleware


def context_for(request: Request) -> RequestContext:
    """The request's RequestContext, created on first use (also for requests rejected early)."""
    scope = request.scope
    ctx = scope.get(CONTEXT_KEY)
    if ctx is None:
        route = scope.get("route")
        client = scope.get("client")
        ctx = RequestContext(
            request_id=RequestContext.new_id(),
            endpoint=getattr(route, "path", "unmatched"),
            client_address=client[0] if client else None,
        )
        received = scope.get(RECEIVED_KEY)
        if received is not None:
            ctx.received_at -= time.perf_counter() - received
            ctx.received_mono = received
        scope[CONTEXT_KEY] = ctx
    return ctx


async def authenticated_context(request: Request) -> RequestContext:
    """FastAPI dependency of the inference routes: the request's context with its principal.

    Raises the authenticator's errors (401, 403, 503), and PermissionDenied (403) for a principal
    without the ``user`` role: auditors read the audit log and nothing else (team and platform
    admins hold ``user`` through role expansion).
    """
    ctx = context_for(request)
    principal = await request.app.state.ward.authenticator.authenticate(request)
    ctx.principal = principal
    request.state.principal = principal  # gateway.auth.dependencies reuses it: one authentication per request
    if not principal.has(Role.USER):
        raise PermissionDenied("Inference needs the user, team_admin or platform_admin role.")
    return ctx


# pydantic's type errors, as OpenAI words the type it expected ("Invalid type for 'n': expected an
# integer, but got a string instead.").
_EXPECTED = {
    "int_type": "an integer",
    "bool_type": "a boolean",
    "float_type": "a number",
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _body_path(error: Mapping[str, Any], body: bytes) -> list[str]:
    """The error's ``loc`` as the body spells it, without the union members pydantic names in it
    ("str", a response_format's type): the keys and indexes that lead to the value it refused (for a
    missing field, to the object that lacks it, then the field)."""
    loc = error["loc"]
    missing = error["type"] == "missing"
    parts = loc[:-1] if missing else loc
    target = error.get("input")

    def walk(node: Any, i: int) -> list[str] | None:
        if i == len(parts):
            return [] if node == target else None
        part = parts[i]
        if (isinstance(node, dict) and part in node) or (
                isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)):
            rest = walk(node[part], i + 1)
            if rest is not None:
                return [str(part), *rest]
        return walk(node, i + 1)  # a union member's name, or a key the body does not have

    try:
        path = walk(json.loads(body), 0)
    except (ValueError, RecursionError):
        path = None
    if path is None:  # not found as sent (a NaN, say): pydantic's path as it is
        return [str(part) for part in loc]
    return [*path, str(loc[-1])] if missing else path


def _validation_error(exc: ValidationError, body: bytes) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    if error["type"] == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request. Send a valid JSON object.", code="invalid_json"
        )
    loc = _body_path(error, body)
    message = error["msg"].removeprefix("Value error, ")
    param = loc[0] if loc else None
    if error["type"] == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{'.'.join(loc)}'.", param=param, code="missing_required_parameter"
        )
    expected = _EXPECTED.get(error["type"])
    if expected is not None and loc:
        return InvalidRequest(
            f"Invalid type for '{'.'.join(loc)}': expected {expected}, but got {_json_type(error['input'])} instead.",
            param=param,
            code="invalid_type",
        )
    where = f"Invalid value for '{'.'.join(loc)}': " if loc else ""
    return InvalidRequest(f"{where}{message}", param=param, code="invalid_value")


async def parse_body(request: Request, model: type[M]) -> M:
    """The JSON body validated as ``model``; raises InvalidRequest (400) for anything malformed."""
    body = await request.body()
    if not body:
        raise InvalidRequest("The request body is empty. Send a JSON object.", code="invalid_json")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _validation_error(exc, body) from None


# A request still running after this long starts watching for its client's disconnect. Most answers
# of a fast worker come sooner, and a watcher costs a task, its first step and its cancellation
# (about 2% of the gateway's CPU per request at 16 clients); a client that leaves is noticed at most
# this much later than it could be. The delay runs on the loop's shared timer (delayed_watch.py).
DISCONNECT_WATCH_AFTER_S = 0.02


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Awaits ``work``; if the client disconnects first, cancels it and raises ClientDisconnected.

    If the gateway's shutdown cuts the request first, cancels it and raises ServerShuttingDown (503).
    The work runs in the caller's task (a task of its own and a wait on both cost two task switches
    and a loop iteration per request): a disconnect cancels the caller's task, and either way the
    work's own cleanup (cancelling the worker call) has run when this raises. The disconnect watch
    starts ``DISCONNECT_WATCH_AFTER_S`` into the request.
    """
    task = asyncio.current_task()
    disconnected = False
    watcher: asyncio.Future | None = None

    def on_disconnect(done: asyncio.Future) -> None:
        nonlocal disconnected
        # Called by the loop, so never while the task runs: the task is suspended inside ``work``.
        if not done.cancelled() and done.exception() is None:
            disconnected = True
            task.cancel(msg="client disconnected")

    def watch() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(_disconnect(request))
        watcher.add_done_callback(on_disconnect)

    starts = delayed_starts(DISCONNECT_WATCH_AFTER_S)
    watch_key = starts.add(watch)
    try:
        result = await request.app.state.ward.shutdown.interruptibly(work)
    except asyncio.CancelledError:
        if disconnected and task.uncancel() == 0:  # nobody else cancelled the request's task
            raise ClientDisconnected() from None
        raise
    except Exception:
        if disconnected:  # the work's cleanup turned the cancellation into an error: the disconnect is what happened
            task.uncancel()
            raise ClientDisconnected() from None
        raise
    finally:
        starts.cancel(watch_key)
        if watcher is not None:
            watcher.remove_done_callback(on_disconnect)
            watcher.cancel()
    if disconnected:  # the work finished despite the cancellation: its answer is still returned
        task.uncancel()
    return result


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def json_response(
    ctx: RequestContext, body: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response carrying the request id and the hooks' headers."""
    return Response(
        dumps(body).encode(),
        status_code=status_code,
        media_type="application/json",
        headers={**ctx.response_headers, **(headers or {}), "x-request-id": ctx.request_id},
    )


def serving_response(ctx: RequestContext, result: dict[str, Any] | EventStream) -> Response:
    """The HTTP response for a service's result: a JSON body, or server-sent events."""
    if isinstance(result, EventStream):
        return EventStreamResponse(result, headers={**ctx.response_headers, "x-request-id": ctx.request_id})
    return json_response(ctx, result)
