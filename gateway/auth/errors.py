"""Typed identity errors; the gateway's error handlers turn them into OpenAI-shaped 401/403 responses."""
from __future__ import annotations


class AuthenticationError(Exception):
    """Missing or invalid credentials: HTTP 401 with a WWW-Authenticate header."""

    def __init__(self, message: str = "Invalid or missing credentials.", *, code: str = "invalid_api_key"):
        super().__init__(message)
        self.message = message
        self.code = code


class PermissionDenied(Exception):
    """A known principal without the role the route needs: HTTP 403."""

    def __init__(self, message: str = "You do not have permission to perform this action.", *, code: str = "permission_denied"):
        super().__init__(message)
        self.message = message
        self.code = code
