"""Typed identity errors; the gateway's error handlers turn them into OpenAI-shaped 401/403/503 responses
(gateway.auth.http_errors builds those responses)."""
from __future__ import annotations


class AuthenticationError(Exception):
    """Missing or invalid credentials: HTTP 401 with a WWW-Authenticate header.

    bearer_error is the RFC 6750 error code for the header ("invalid_token" when a presented token was
    rejected; None when no credentials came). Messages never contain the credential itself.
    """

    def __init__(
        self,
        message: str = "Invalid or missing credentials.",
        *,
        code: str = "invalid_api_key",
        bearer_error: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.bearer_error = bearer_error


class PermissionDenied(Exception):
    """A known principal without the role the route needs: HTTP 403."""

    def __init__(self, message: str = "You do not have permission to perform this action.", *, code: str = "permission_denied"):
        super().__init__(message)
        self.message = message
        self.code = code


class IdentityProviderUnavailable(Exception):
    """The OpenID provider could not be reached to fetch its keys: HTTP 503 (the caller may retry)."""

    def __init__(self, message: str = "The identity provider is unavailable; try again shortly.", *, code: str = "identity_provider_unavailable"):
        super().__init__(message)
        self.message = message
        self.code = code
