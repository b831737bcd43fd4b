"""The rate-limit headers OpenAI sends, with the same names and value formats."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowState:
    """One rolling-window limit as a client should see it after this request.

    ``reset_s`` is the time until the oldest admission counted in the window leaves it, i.e. until
    ``remaining`` next grows (0 when the window is empty). Where several scopes limit the same kind,
    the stores report the one with the least room.
    """

    limit: int
    remaining: int
    reset_s: float


def format_duration(seconds: float) -> str:
    """Durations as OpenAI writes them (Go's style, millisecond precision): "20ms", "1s", "8.64s", "6m0s", "1h2m3s"."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# The header names per kind, spelled once: every admitted request sends them.
_NAMES = tuple((f"x-ratelimit-limit-{k}", f"x-ratelimit-remaining-{k}", f"x-ratelimit-reset-{k}") for k in ("requests", "tokens"))


def rate_limit_headers(requests: WindowState | None, tokens: WindowState | None) -> dict[str, str]:
    """x-ratelimit-{limit,remaining,reset}-{requests,tokens}; a kind with no limit in play is left out."""
    headers: dict[str, str] = {}
    for (limit, remaining, reset), state in zip(_NAMES, (requests, tokens)):
        if state is None:
            continue
        headers[limit] = str(state.limit)
        headers[remaining] = str(max(0, state.remaining))
        headers[reset] = format_duration(state.reset_s)
    return headers


def retry_after_headers(retry_after_s: float | None) -> dict[str, str]:
    """Retry-After in whole seconds (rounded up, as HTTP requires) plus the precise retry-after-ms that
    OpenAI's clients prefer. None (the request can never fit): tell clients not to retry at all."""
    if retry_after_s is None:
        return {"x-should-retry": "false"}
    ms = max(1, math.ceil(retry_after_s * 1000))
    return {"retry-after": str(max(1, math.ceil(ms / 1000))), "retry-after-ms": str(ms)}
