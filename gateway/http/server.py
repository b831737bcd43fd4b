"""The gateway's uvicorn server: SIGTERM drains instead of cutting, and the process exits 0.

uvicorn on its own closes the listener at once, waits ``timeout_graceful_shutdown`` for requests,
then cancels them (streams end with a truncated chunked body, recorded as client disconnects), and
finally re-raises the signal, so the process dies of SIGTERM. Here the first SIGTERM (or SIGINT):

1. starts the drain: new requests get 503 ``server_shutdown`` with Retry-After, /readyz says 503;
2. waits up to ``grace_s`` for the requests in flight to finish;
3. cuts the rest (each ends with an error event and ``[DONE]``, audited as ended by the server);
4. then lets uvicorn stop as usual (listener, idle connections, the app's shutdown), and returns.

A second signal skips what is left of the grace and cuts at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import FrameType

import uvicorn

from gateway.serving.shutdown import ServerShutdown

log = logging.getLogger("ward.gateway")

# After the cut, how long the ended requests get to send their last bytes and be audited.
CUT_SETTLE_S = 5.0
POLL_S = 0.05


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, shutdown: ServerShutdown, grace_s: float) -> None:
        super().__init__(config)
        self.shutdown_state = shutdown
        self.grace_s = grace_s
        self._drain_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hurry = False

    async def startup(self, sockets=None) -> None:  # noqa: ANN001 - uvicorn's signature
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as a signal handler: hand over to the event loop. The signal is not recorded for
        # uvicorn to re-raise after the shutdown, so a drained gateway exits 0.
        if self._loop is None or not self.started:
            self.should_exit = True  # still starting: nothing to drain
            return
        self._loop.call_soon_threadsafe(self._on_signal)

    def _on_signal(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain())
        else:
            self._hurry = True

    async def _drain(self) -> None:
        state = self.shutdown_state
        state.begin_drain()
        log.info("draining: no new requests; waiting up to %.0f s for %d in flight", self.grace_s, state.in_flight)
        deadline = time.monotonic() + self.grace_s
        while state.in_flight and time.monotonic() < deadline and not self._hurry:
            await asyncio.sleep(POLL_S)
        if state.in_flight:
            ended = state.cut()
            log.warning("drain grace over: ended %d request(s) still running", ended)
            settle = time.monotonic() + CUT_SETTLE_S
            while state.in_flight and time.monotonic() < settle:
                await asyncio.sleep(POLL_S)
        self.should_exit = True

