"""Whether a request may go to a worker before its exact reservation is made.

With a token limit in play, the exact reservation needs the prompt's token count, which only the
worker knows. The plain path asks it first (a Tokenize call), then reserves, then dispatches. When the
team was admitted recently with plenty of room left, the gateway may instead dispatch at once and let
the worker report the count in its first message; the reservation is then made exactly as before,
atomically against every limit, so no limit can be exceeded either way. What this guards is only the
cost of a late refusal: a request refused after dispatch was tokenized (and perhaps started) on the
worker for nothing. So the shortcut is offered only while the last admission of the same team, key
and model left ample room, and is withdrawn by the first refusal (but see concurrency below) until an
admission finds room again.

A max_concurrent limit changes when, not whether, the shortcut is taken: admitting after dispatch
would let a flood of requests reach workers before any of them holds a slot. So such a request is
admitted before dispatch as always (taking its slot and its requests entry in one atomic step) with
a reservation that does not depend on the prompt, the least any prompt could reserve, and that
reservation is extended to the exact one once the worker has counted the prompt (``QuotaStore.extend``:
atomic against every token limit; refused, the request is refused as before and gives everything back).
Concurrency room is therefore not judged here: that check is always made before dispatch, and a
refusal by it costs the worker nothing, so it does not withdraw the shortcut either. Only a token
limit can refuse late, and the token room recorded here is what guards against that.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.quota.headers import WindowState

# An admission older than this says too little about the room left now.
MAX_AGE_S = 5.0
# Room that counts as ample: at least this share of the limit, and for tokens twice the most this
# request could reserve.
MIN_ROOM_SHARE = 0.25
TOKEN_ROOM_FACTOR = 2
MAX_ENTRIES = 4096

HeadroomKey = tuple[str, "str | None", "str | None"]  # team, key id, model


@dataclass(frozen=True)
class _Seen:
    at: float
    admitted: bool
    requests: WindowState | None  # the tightest requests_per_minute after that admission
    tokens: WindowState | None  # the tightest tokens_per_minute after it


def _ample(window: WindowState | None, need: int) -> bool:
    if window is None:
        return True
    return window.remaining >= need and window.remaining >= MIN_ROOM_SHARE * window.limit


class Headroom:
    """The outcome of the latest admission per (team, key, model)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[HeadroomKey, _Seen] = {}

    def record(self, key: HeadroomKey, *, admitted: bool, requests: WindowState | None = None,
               tokens: WindowState | None = None) -> None:
        if len(self._seen) >= MAX_ENTRIES and key not in self._seen:
            self._seen.clear()
        self._seen[key] = _Seen(self._clock(), admitted, requests, tokens)

    def allows(self, key: HeadroomKey, most_tokens: int) -> bool:
        """Whether a request that can reserve at most ``most_tokens`` may be dispatched before its
        reservation."""
        seen = self._seen.get(key)
        if seen is None or not seen.admitted or self._clock() - seen.at > MAX_AGE_S:
            return False
        return _ample(seen.requests, 2) and _ample(seen.tokens, TOKEN_ROOM_FACTOR * most_tokens)
