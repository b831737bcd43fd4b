"""How many tokens a request reserves before it is dispatched."""
from __future__ import annotations

from gateway.quota.errors import InvalidQuotaRequest


def tokens_to_reserve(prompt_tokens: int, max_tokens: int | None, context_length: int) -> int:
    """The exact prompt length plus the most the completion may produce: ``max_tokens`` capped by the
    room left in the context window (all of that room when the request sets no ``max_tokens``).

    Raises InvalidQuotaRequest when the prompt alone does not fit the context or a count is negative.
    """
    if prompt_tokens < 0 or context_length <= 0 or (max_tokens is not None and max_tokens < 0):
        raise InvalidQuotaRequest("token counts must be non-negative and the context length positive")
    room = context_length - prompt_tokens
    if room < 0:
        raise InvalidQuotaRequest(
            f"the prompt has {prompt_tokens} tokens, more than the model's context length of {context_length}",
            param="messages",
        )
    return prompt_tokens + (room if max_tokens is None else min(max_tokens, room))
