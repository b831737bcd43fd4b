"""Quota errors as HTTP responses in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway.quota.errors import InvalidQuotaRequest, QuotaExceeded, QuotaUnavailable
from gateway.quota.headers import retry_after_headers
from gateway.quota.limits import LimitKind


def _error(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def quota_exceeded_body(exc: QuotaExceeded) -> dict:
    """OpenAI's 429 bodies: type "requests" or "tokens" with code "rate_limit_exceeded" for rates,
    type and code "insufficient_quota" for exhausted budgets."""
    if exc.limit_kind.is_budget:
        return _error(exc.message, "insufficient_quota", "insufficient_quota")
    type_ = "tokens" if exc.limit_kind is LimitKind.TOKENS_PER_MINUTE else "requests"
    return _error(exc.message, type_, "rate_limit_exceeded")


def quota_exceeded_response(exc: QuotaExceeded) -> JSONResponse:
    headers = {**exc.headers, **retry_after_headers(exc.retry_after_s)}
    return JSONResponse(quota_exceeded_body(exc), status_code=429, headers=headers)


def quota_unavailable_response(exc: QuotaUnavailable) -> JSONResponse:
    return JSONResponse(
        _error(exc.message, "server_error", "quota_unavailable"),
        status_code=503,
        headers=retry_after_headers(exc.retry_after_s),
    )


def invalid_quota_request_response(exc: InvalidQuotaRequest) -> JSONResponse:
    return JSONResponse(_error(exc.message, "invalid_request_error", "invalid_value", exc.param), status_code=400)


def install_quota_error_handlers(app: FastAPI) -> None:
    """Register the three handlers on an app (the gateway calls this once)."""

    async def exceeded(_: Request, exc: Exception) -> JSONResponse:
        return quota_exceeded_response(exc)  # type: ignore[arg-type]

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        return quota_unavailable_response(exc)  # type: ignore[arg-type]

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        return invalid_quota_request_response(exc)  # type: ignore[arg-type]

    app.add_exception_handler(QuotaExceeded, exceeded)
    app.add_exception_handler(QuotaUnavailable, unavailable)
    app.add_exception_handler(InvalidQuotaRequest, invalid)
