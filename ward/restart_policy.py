"""When ``ward up`` restarts a crashed worker, and when it gives up on it.

Exponential backoff (1 s doubling to 30 s by default), reset once a worker has stayed up for
``reset_after_s``; a crash-loop limit of ``max_crashes`` crashes within ``window_s`` (5 in 5 minutes
by default, as systemd's StartLimitBurst / StartLimitIntervalSec), after which the worker is left
down. Plain arithmetic on times the caller passes in, so it is tested without waiting.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    initial_delay_s: float = 1.0
    max_delay_s: float = 30.0
    reset_after_s: float = 60.0  # a worker up this long starts again from initial_delay_s
    max_crashes: int = 5  # this many crashes within window_s: give up (1: never restart)
    window_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_crashes < 1:
            raise ValueError(f"max_crashes must be at least 1, got {self.max_crashes}")
        if self.window_s <= 0 or self.reset_after_s <= 0:
            raise ValueError("window_s and reset_after_s must be positive")
        if not 0 < self.initial_delay_s <= self.max_delay_s:
            raise ValueError(
                f"need 0 < initial_delay_s <= max_delay_s, got {self.initial_delay_s} and {self.max_delay_s}"
            )


@dataclass(frozen=True)
class RestartDecision:
    """What to do after a crash: restart after ``delay_s``, or give up (``delay_s`` is None)."""

    delay_s: float | None
    crashes_in_window: int  # including this one

    @property
    def give_up(self) -> bool:
        return self.delay_s is None


class CrashHistory:
    """One worker's crashes; :meth:`record` decides the next step."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._crashes: deque[float] = deque()
        self._next_delay_s = policy.initial_delay_s

    def record(self, now: float, up_for_s: float) -> RestartDecision:
        """A crash at ``now`` (seconds, any monotonic clock) of a worker that had been up ``up_for_s``
        seconds (0 when it died before it was ready)."""
        policy = self.policy
        self._crashes.append(now)
        while self._crashes and now - self._crashes[0] >= policy.window_s:
            self._crashes.popleft()
        count = len(self._crashes)
        if count >= policy.max_crashes:
            return RestartDecision(None, count)
        if up_for_s >= policy.reset_after_s:
            self._next_delay_s = policy.initial_delay_s
        delay = self._next_delay_s
        self._next_delay_s = min(delay * 2, policy.max_delay_s)
        return RestartDecision(delay, count)
