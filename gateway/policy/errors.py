"""The answer to a request for a model the caller's team may not use: 403 in OpenAI's shape."""
from __future__ import annotations

from gateway.http.errors import PermissionDeniedError
from gateway.policy.model_access import Decision

_WHY = {
    "retired": "has been retired by the model approval board",
    "pilot_not_listed": "is in a pilot your team is not part of",
    "not_listed": "is not on your team's list of approved models",
}


class ModelNotAllowed(PermissionDeniedError):
    """403: the model exists for others (or not at all), but this team may not use it."""

    def __init__(self, model: str, team: str, decision: Decision) -> None:
        self.decision = decision
        why = _WHY.get(decision.reason, "is not approved for your team")
        super().__init__(
            f"The model `{model}` {why} (team `{team}`). Ask your platform administrators which models are approved.",
            param="model",
            code="model_retired" if decision.reason == "retired" else "model_not_allowed",
        )
