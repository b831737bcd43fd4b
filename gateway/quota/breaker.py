"""A circuit breaker in front of the quota store, so an outage costs one timeout, not one per request."""
from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class BreakerState(str, Enum):
    CLOSED = "closed"  # calls go to the store
    OPEN = "open"  # calls are not attempted until reset_after_s has passed
    HALF_OPEN = "half_open"  # one probe call is in flight; its outcome closes or reopens the breaker


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; after ``reset_after_s`` lets one probe through.

    Callers ask ``allow()`` before each call and report ``record_success()`` / ``record_failure()``.
    A probe that never reports (its task was cancelled) is given up after ``reset_after_s``.
    Not thread-safe: one breaker per event loop.
    """

    def __init__(self, *, failure_threshold: int = 3, reset_after_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        if failure_threshold < 1 or reset_after_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and reset_after_s > 0")
        self._threshold = failure_threshold
        self._reset_after = reset_after_s
        self._clock = clock
        self._failures = 0
        self._state = BreakerState.CLOSED
        self._since = clock()  # when the breaker opened, or when the probe started

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        """True when the caller may try the store now."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._clock() - self._since < self._reset_after:
            return False
        self._state = BreakerState.HALF_OPEN  # from OPEN, or a probe that never reported
        self._since = self._clock()
        return True

    def record_success(self) -> bool:
        """Note a successful call; True when this closed an open breaker (the store is back)."""
        self._failures = 0
        if self._state is BreakerState.CLOSED:
            return False
        self._state = BreakerState.CLOSED
        return True

    def record_failure(self) -> bool:
        """Note a failed call; True when this opened the breaker (the store just went away)."""
        self._failures += 1
        was_closed = self._state is BreakerState.CLOSED
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._state = BreakerState.OPEN
            self._since = self._clock()
            return was_closed
        return False

    def retry_after_s(self) -> float:
        """When the store will next be tried (0 while closed)."""
        if self._state is BreakerState.CLOSED:
            return 0.0
        return max(0.0, self._reset_after - (self._clock() - self._since))
