"""Worker failures in a transport-neutral form, and their translation into OpenAI errors.

The worker signals a machine-readable reason for a refusal in the gRPC trailing metadata key
``ward-error-code`` (e.g. ``context_length_exceeded``), beside the status code and details message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import grpc

from gateway.http.errors import (
    ContextLengthExceeded,
    GatewayTimeout,
    InvalidRequest,
    ModelNotFound,
    OpenAIError,
    RateLimited,
    ServiceUnavailable,
    WorkerFailed,
)

ERROR_CODE_METADATA_KEY = "ward-error-code"
RETRY_AFTER_METADATA_KEY = "ward-retry-after-ms"  # sent with admission refusals (RESOURCE_EXHAUSTED)
TEAM_SHARE_EXCEEDED = "team_share_exceeded"  # the caller's team holds its share of the worker's queue

# the request field a worker's grammar refusal is about
GRAMMAR_ERROR_PARAMS = {"invalid_json_schema": "response_format", "invalid_grammar": "tools"}
# a prompt's or embedding input's token ids beyond the vocabulary (the gateway checks them itself
# once it knows the vocabulary; this is the worker's word when it did not yet)
TOKEN_IDS_OUT_OF_RANGE = "token_ids_out_of_range"

log = logging.getLogger("ward.gateway.workers")

# Statuses whose details were written for the client (request problems); the others may carry
# worker internals and are replaced by a generic message.
_CLIENT_FACING = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.NOT_FOUND,
}


class WorkerError(Exception):
    """A worker call failed: the gRPC status, the worker's error code if it sent one, and its message."""

    def __init__(self, status: grpc.StatusCode, message: str, *, code: str | None = None, address: str = "",
                 retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.address = address
        self.retry_after_ms = retry_after_ms

    @property
    def worker_unreachable(self) -> bool:
        """The worker could not be reached: take it out of rotation and try another."""
        return self.status is grpc.StatusCode.UNAVAILABLE

    @property
    def retryable(self) -> bool:
        """Another worker may succeed where this one failed (before any output was sent)."""
        return self.status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)

    def __str__(self) -> str:
        code = f" [{self.code}]" if self.code else ""
        return f"{self.address}: {self.status.name}{code}: {self.message}"


def from_rpc_error(exc: grpc.aio.AioRpcError, address: str) -> WorkerError:
    """The WorkerError for a failed gRPC call, reading ``ward-error-code`` from its trailers."""
    return worker_error(exc.code(), exc.details() or "", exc.trailing_metadata() or (), address)


def worker_error(status: grpc.StatusCode, details: str, trailers: Iterable[tuple[str, str | bytes]],
                 address: str) -> WorkerError:
    """The WorkerError for a status and its trailing metadata (a gRPC call's, or a multiplexed
    stream's ``MuxStatus``): ``ward-error-code`` and ``ward-retry-after-ms`` read from the trailers."""
    code = retry_after_ms = None
    for key, value in trailers:
        text = value.decode() if isinstance(value, bytes) else value
        if key == ERROR_CODE_METADATA_KEY:
            code = text
        elif key == RETRY_AFTER_METADATA_KEY and text.isdigit():
            retry_after_ms = int(text)
    return WorkerError(status, details, code=code, address=address, retry_after_ms=retry_after_ms)


def to_openai_error(err: WorkerError, *, model: str, prompt_param: str = "messages") -> OpenAIError:
    """The client-facing error for a worker failure (worker internals are logged, never returned)."""
    status = err.status
    if status in _CLIENT_FACING:
        if err.code == "context_length_exceeded":
            return ContextLengthExceeded(err.message or "The prompt is too long for this model.", param=prompt_param)
        if status is grpc.StatusCode.NOT_FOUND:
            return ModelNotFound(model)
        if err.code == TOKEN_IDS_OUT_OF_RANGE:  # as the gateway's own check words it
            return InvalidRequest(err.message, param=prompt_param, code="invalid_value")
        if err.code in GRAMMAR_ERROR_PARAMS:  # a schema the worker's grammar library cannot enforce
            return InvalidRequest(err.message, param=GRAMMAR_ERROR_PARAMS[err.code], code=err.code)
        return InvalidRequest(err.message or "The worker rejected the request.", code=err.code)
    if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED):
        return ServiceUnavailable("The worker serving this model is unavailable; please retry.")
    if status is grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_after_s = max(1, -(-(err.retry_after_ms or 1000) // 1000))
        if err.code == TEAM_SHARE_EXCEEDED:  # the caller's own team is the cause: back off
            return RateLimited(
                "Your team is using its full share of this model's capacity; please retry after a short wait.",
                code=TEAM_SHARE_EXCEEDED, headers={"retry-after": str(retry_after_s)},
            )
        return ServiceUnavailable("The workers serving this model are overloaded; please retry.", code="overloaded",
                                  retry_after_s=retry_after_s)
    if status is grpc.StatusCode.DEADLINE_EXCEEDED:
        return GatewayTimeout("The worker did not answer in time.", code="timeout")
    log.error("worker call failed: %s", err)
    return WorkerFailed("The worker failed to process the request.", code="worker_error")
