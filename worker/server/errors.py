"""One mapping from engine errors to gRPC statuses (plus the machine-readable ``ward-error-code``)."""
from __future__ import annotations

import functools
import logging

import grpc

from worker.errors import EngineDeadError, InvalidRequestError, WardError
from worker.server.admission import AdmissionRefused

ERROR_CODE_KEY = "ward-error-code"
RETRY_AFTER_KEY = "ward-retry-after-ms"
log = logging.getLogger("ward.worker.server")


class Unavailable(WardError):
    code = "unavailable"


class UnknownModel(WardError):
    code = "model_not_found"


def status_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, InvalidRequestError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, AdmissionRefused):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, UnknownModel):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, (Unavailable, EngineDeadError)):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    return grpc.StatusCode.INTERNAL


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    code = getattr(exc, "code", None) if isinstance(exc, WardError) else None
    trailers = [(ERROR_CODE_KEY, code)] if code else []
    if isinstance(exc, AdmissionRefused):
        trailers.append((RETRY_AFTER_KEY, str(exc.retry_after_ms)))
    if trailers:
        context.set_trailing_metadata(tuple(trailers))
    status = status_for(exc)
    if status is grpc.StatusCode.INTERNAL:
        log.exception("unexpected error serving a request", exc_info=exc)
        await context.abort(status, "internal worker error")
    await context.abort(status, str(exc))


def mapped_errors(handler):
    """Decorates a unary handler: typed errors become gRPC statuses with their codes."""

    @functools.wraps(handler)
    async def wrapper(self, request, context):
        try:
            return await handler(self, request, context)
        except (WardError, ValueError, NotImplementedError) as exc:
            await abort_with(context, exc)

    return wrapper
