"""Input checks of the quota API; they raise InvalidQuotaRequest (HTTP 400)."""
from __future__ import annotations

from gateway.identifiers import KEY_ID_MAX, MODEL_NAME_MAX, TEAM_NAME_RULE, is_key_id, is_model_name, is_team_name
from gateway.quota.errors import InvalidQuotaRequest

MAX_TOKENS = 2**50  # keeps every sum exact in Lua's doubles

# Team names, key ids and model names follow the gateway's one definition (gateway.identifiers).
_NAME_CHECKS = {
    "team": (is_team_name, TEAM_NAME_RULE),
    "key_id": (is_key_id, f"1 to {KEY_ID_MAX} printable characters"),
    "model": (is_model_name, f"1 to {MODEL_NAME_MAX} printable characters"),
}


def check_name(value: object, param: str) -> None:
    """A team name, key id or model name (``param``: team, key_id or model)."""
    valid, rule = _NAME_CHECKS[param]
    if not valid(value):
        raise InvalidQuotaRequest(f"`{param}` must be {rule}", param=param)


def check_tokens(value: object, param: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        raise InvalidQuotaRequest(f"`{param}` must be a non-negative integer", param=param)
