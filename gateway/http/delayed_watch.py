"""Callbacks run once a request has lasted a given time, from one timer per event loop.

A request that is still running after ``DelayedStarts.delay_s`` starts watching for its client's
disconnect (gateway/http/plumbing.py). Most answers come sooner, so the start is usually cancelled.
A ``call_later`` per request built a timer handle, pushed it on the loop's heap and cancelled it
again for nearly every request (about 2.5% of the event loop's time at 16 clients on the 2-core
benchmark box). Here a request only enters an insertion-ordered dict and leaves it; one timer per
loop, armed while the dict holds anything, fires when the oldest entry is due and runs every due
callback. Entries are added in arrival order with one fixed delay, so the front is always the next
one due.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections.abc import Callable


class DelayedStarts:
    """Runs each added callback ``delay_s`` after it was added, unless it was cancelled first."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay_s: float) -> None:
        self._loop = loop
        self.delay_s = delay_s
        self._pending: dict[int, tuple[float, Callable[[], None]]] = {}  # key -> (due time, callback)
        self._keys = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, callback: Callable[[], None]) -> int:
        """Schedules ``callback``; returns the key that cancels it."""
        key = next(self._keys)
        due = self._loop.time() + self.delay_s
        self._pending[key] = (due, callback)
        if self._timer is None:
            self._timer = self._loop.call_at(due, self._fire)
        return key

    def cancel(self, key: int) -> None:
        """Drops the callback under ``key`` if it has not run (a no-op otherwise)."""
        self._pending.pop(key, None)
        # the timer stays armed: it finds nothing due, or the next entry, when it fires

    def __len__(self) -> int:
        return len(self._pending)

    def _fire(self) -> None:
        self._timer = None
        pending = self._pending
        now = self._loop.time()
        due_callbacks = []
        for key, (due, callback) in pending.items():
            if due > now:
                self._timer = self._loop.call_at(due, self._fire)
                break
            due_callbacks.append((key, callback))
        for key, callback in due_callbacks:
            del pending[key]
        for _, callback in due_callbacks:
            try:
                callback()
            except Exception as exc:  # one failing callback must not keep the others from running
                self._loop.call_exception_handler({"message": "delayed start failed", "exception": exc})


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DelayedStarts] = weakref.WeakKeyDictionary()


def delayed_starts(delay_s: float) -> DelayedStarts:
    """The running loop's DelayedStarts for ``delay_s`` (one per loop; asked with another delay, a new
    one replaces it, and what the old one holds still runs from its own timer)."""
    loop = asyncio.get_running_loop()
    starts = _per_loop.get(loop)
    if starts is None or starts.delay_s != delay_s:
        starts = _per_loop[loop] = DelayedStarts(loop, delay_s)
    return starts
