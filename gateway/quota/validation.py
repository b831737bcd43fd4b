"""Input checks of the quota API; they raise InvalidQuotaRequest (HTTP 400)."""
from __future__ import annotations

import re

from gateway.quota.errors import InvalidQuotaRequest

_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
MAX_TOKENS = 2**50  # keeps every sum exact in Lua's doubles


def check_name(value: object, param: str) -> None:
    """Team names, key ids and model names: 1 to 200 characters, no control characters."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidQuotaRequest(f"`{param}` must be 1 to 200 printable characters", param=param)


def check_tokens(value: object, param: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        raise InvalidQuotaRequest(f"`{param}` must be a non-negative integer", param=param)
