"""The terminal steps of every request: hooks first, then metrics, exactly once per request."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

import anyio

from gateway.http.request_context import RequestContext
from gateway.http.errors import OpenAIError
from gateway.hooks import RequestHooks
from gateway.metrics import GatewayMetrics
from gateway.serving.shutdown import ServerShutdown

log = logging.getLogger("ward.gateway")

# How long a failure hook may run after the client is gone (it runs shielded from cancellation).
FAILURE_HOOK_TIMEOUT_S = 10.0


class Lifecycle:
    """Calls the terminal hooks (``before_finish`` / ``on_failure``) and records metrics.

    ``shutdown`` is the gateway's shutdown state: long waits go through its ``interruptibly`` so
    that a drain's cut ends them with the server's own error.
    """

    def __init__(
        self,
        hooks: RequestHooks,
        metrics: GatewayMetrics,
        models: Collection[str],
        shutdown: ServerShutdown | None = None,
    ) -> None:
        self.hooks = hooks
        self.metrics = metrics
        self.shutdown = shutdown if shutdown is not None else ServerShutdown()
        self._models = frozenset(models)

    def model_label(self, ctx: RequestContext) -> str:
        # Only configured names become label values: arbitrary client input must not grow the series.
        return ctx.model if ctx.model in self._models else ""

    def begin(self, ctx: RequestContext) -> None:
        """Counts an inference request as in flight until its terminal step."""
        if not ctx.extra.get("_in_flight"):
            ctx.extra["_in_flight"] = True
            self.metrics.in_flight.inc()

    def _end(self, ctx: RequestContext) -> None:
        if ctx.extra.pop("_in_flight", False):
            self.metrics.in_flight.dec()

    async def finish(self, ctx: RequestContext) -> None:
        """Runs ``before_finish``; the caller sends the last byte only after this returns.

        Raises what the hook raises; the caller then reports it through :meth:`fail`.
        """
        ctx.finished_at = time.time()
        ctx.alone = self.shutdown.in_flight <= 1
        await self.hooks.before_finish(ctx)
        ctx._terminal = True
        ctx.status_code = 200
        self._end(ctx)
        self.metrics.observe_request(ctx, self.model_label(ctx))

    async def fail(self, ctx: RequestContext, error: OpenAIError) -> None:
        """Records ``error`` as the request's outcome and runs ``on_failure`` (once; never raises).

        Runs shielded from cancellation, so a disconnected client's request is still recorded.
        """
        if ctx._terminal:
            return
        ctx._terminal = True
        ctx.error = error
        ctx.status_code = error.status_code
        ctx.cancelled = ctx.cancelled or error.status_code == 499
        ctx.finished_at = time.time()
        self._end(ctx)
        self.metrics.observe_request(ctx, self.model_label(ctx))
        with anyio.CancelScope(shield=True), anyio.move_on_after(FAILURE_HOOK_TIMEOUT_S):
            try:
                await self.hooks.on_failure(ctx)
            except Exception:
                log.exception("on_failure hook raised for request %s", ctx.request_id)
