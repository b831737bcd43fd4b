"""OpenAI-shaped errors: every failure leaves the gateway as ``{"error": {message, type, param, code}}``.

Serving code raises an :class:`OpenAIError` (or a subclass); the handlers in
``gateway.http.error_handlers`` turn it into a response with its status and headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class OpenAIError(Exception):
    """An error the client sees: an HTTP status plus OpenAI's error object."""

    status_code = 500
    error_type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body: OpenAI's error object."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status_code}, {self.message!r}, code={self.code!r})"


class InvalidRequest(OpenAIError):
    """400: the request is malformed or asks for something the gateway cannot do."""

    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    """400: prompt plus requested completion do not fit the model's context."""

    def __init__(self, message: str, *, param: str | None = "messages") -> None:
        super().__init__(message, param=param, code="context_length_exceeded")


class Unauthorized(OpenAIError):
    status_code = 401
    error_type = "invalid_request_error"


class PermissionDeniedError(OpenAIError):
    status_code = 403
    error_type = "invalid_request_error"


class NotFound(OpenAIError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFound(NotFound):
    """404: no worker is configured for this model name."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )


class RequestTooLarge(OpenAIError):
    status_code = 413
    error_type = "invalid_request_error"


class RateLimited(OpenAIError):
    """429: a quota refused the request; carries Retry-After and x-ratelimit-* headers."""

    status_code = 429
    error_type = "rate_limit_error"


class WorkerFailed(OpenAIError):
    """500: a worker failed while serving the request (no internals are exposed)."""

    status_code = 500
    error_type = "server_error"


class ServiceUnavailable(OpenAIError):
    """503: no ready worker could take the request, or one was lost mid-request."""

    status_code = 503
    error_type = "server_error"

    def __init__(
        self, message: str, *, code: str | None = "service_unavailable", retry_after_s: int | None = 1
    ) -> None:
        headers = {"retry-after": str(retry_after_s)} if retry_after_s is not None else None
        super().__init__(message, code=code, headers=headers)


class ServerShuttingDown(ServiceUnavailable):
    """503: the gateway is shutting down; the request was refused, or ended before it completed."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, code="server_shutdown", retry_after_s=retry_after_s)


class GatewayTimeout(OpenAIError):
    status_code = 504
    error_type = "server_error"


class ClientDisconnected(OpenAIError):
    """The client went away before the response was complete (logged as 499, never sent)."""

    status_code = 499
    error_type = "client_closed_request"

    def __init__(self) -> None:
        super().__init__("The client closed the connection.", code="client_closed_request")
