"""A small bounded cache whose entries expire after a fixed time (lookups of keys and teams)."""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class TTLCache(Generic[K, V]):
    """Entries live `ttl_s` seconds; past `max_entries` the least recently stored one is dropped.

    Not locked: it is used from one event loop thread. A ttl of 0 disables caching.
    """

    def __init__(self, ttl_s: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K, default: V | None = None) -> V | None:
        entry = self._data.get(key, _MISSING)
        if entry is _MISSING:
            return default
        expires, value = entry  # type: ignore[misc]
        if self._clock() >= expires:
            del self._data[key]
            return default
        return value

    def __contains__(self, key: K) -> bool:
        return self.get(key, _MISSING) is not _MISSING  # type: ignore[arg-type]

    def put(self, key: K, value: V) -> None:
        if self.ttl_s <= 0:
            return
        self._data[key] = (self._clock() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()
