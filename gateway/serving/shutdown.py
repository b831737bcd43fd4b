"""ServerShutdown: how the gateway stops on SIGTERM without cutting anyone off mid-sentence.

1. **Drain.** New work is refused (503 ``server_shutdown`` with Retry-After, /readyz 503 so balancers
   stop sending); requests in flight go on.
2. **Cut**, once the grace has passed with requests still running. Every request waiting on a worker
   ends now with :class:`ServerShuttingDown`: a non-streamed one gets the 503 as its answer, a
   stream gets that error as its last event followed by ``data: [DONE]``. Each is audited with the
   server's own status and reason (503 ``server_shutdown``), never as a client's disconnect (499).

Waits that the cut may end go through :meth:`ServerShutdown.interruptibly`. It costs a set insert
and removal per wait (streams wait once per token), not a task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import TypeVar

from gateway.http.errors import ServerShuttingDown

T = TypeVar("T")

REFUSED_MESSAGE = "The server is shutting down and takes no new requests; please retry."
ENDED_MESSAGE = "The server is shutting down and ended this request before it completed; please retry."


class ServerShutdown:
    """The gateway's shutdown state: draining, then cut. One per app; used from its event loop only."""

    def __init__(self) -> None:
        self.draining = False
        self.cut_started = False
        self.in_flight = 0  # requests the drain waits for (gateway.http.drain_gate counts them)
        self._waiting: set[asyncio.Task] = set()  # tasks inside interruptibly()
        self._interrupted: set[asyncio.Task] = set()  # of those, the ones the cut cancelled

    def begin_drain(self) -> None:
        """Refuse new work from now on; requests in flight go on."""
        self.draining = True

    def cut(self) -> int:
        """Ends every request waiting on a worker with ServerShuttingDown; returns how many."""
        self.draining = True
        self.cut_started = True
        for task in self._waiting:
            if task not in self._interrupted:
                self._interrupted.add(task)
                task.cancel(msg="server shutdown")
        return len(self._interrupted)

    async def interruptibly(self, awaitable: Awaitable[T]) -> T:
        """Awaits ``awaitable``; raises ServerShuttingDown if the cut comes first (or came already).

        Cancelling the current task from elsewhere (a client's disconnect) still raises CancelledError.
        """
        task = asyncio.current_task()
        if self.cut_started or task is None:
            if self.cut_started:
                _discard(awaitable)
                raise ServerShuttingDown(ENDED_MESSAGE)
            return await awaitable
        self._waiting.add(task)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if task in self._interrupted:
                self._interrupted.discard(task)
                if task.uncancel() == 0:  # nobody else (a disconnect) cancelled this task too
                    raise ServerShuttingDown(ENDED_MESSAGE) from None
            raise
        finally:
            self._waiting.discard(task)
            if task in self._interrupted:  # the awaitable swallowed our cancellation: undo it
                self._interrupted.discard(task)
                task.uncancel()

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """Counts a request as in flight while the block runs (the drain waits for these)."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


def _discard(awaitable: Awaitable[object]) -> None:
    close = getattr(awaitable, "close", None)  # a coroutine never awaited must be closed quietly
    if callable(close):
        close()
