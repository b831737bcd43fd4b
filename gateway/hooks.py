"""The per-request lifecycle seam where quotas, audit and similar layers plug in.

A :class:`RequestHooks` implementation sees every inference request (chat, completions, embeddings)
at these points, in this order:

1. ``before_dispatch``: the request is authenticated and valid, its model resolved and a ready
   worker exists; nothing was sent to a worker yet. Admission control goes here: it may await
   ``ctx.prompt_token_count()`` and read ``ctx.max_tokens``, and may raise an OpenAIError (e.g.
   RateLimited with Retry-After and x-ratelimit-* headers) to refuse the request. When
   ``ctx.dispatch_can_count`` is set, a hook may instead set ``ctx.count_on_dispatch`` and leave
   its decision to ``after_count`` (below): the worker then reports the count itself, saving a
   Tokenize round trip.
   ``after_count`` (only when some hook set ``ctx.count_on_dispatch``): the request is on a
   worker, which reported the exact prompt token count (``ctx.prompt_token_count()`` answers at
   once); no output reached the gateway yet. Raising refuses the request: its Generate call is
   cancelled. Points 2 and 3 come after it.
2. ``response_headers``: extra headers for the response (e.g. x-ratelimit-*), also sent on errors.
3. ``on_start``: the request is about to be sent to a worker (a stream opens for streaming
   requests). An audit record can be opened here; its write may go on while the worker starts.
   ``before_response`` (optional): the worker's first response arrived and nothing was sent to the
   client yet; raising refuses the request (its Generate call is cancelled). Writes begun in
   ``on_start`` are made durable by here.
4. ``on_first_token``: the first generated token arrived (generation endpoints only).
5. ``before_finish``: the whole response is known (text per choice, finish reasons, usage) but its
   last byte — the non-streamed body, or the final chunks and ``data: [DONE]`` — is not sent yet and
   will not be until this returns. Commit audit records and settle quotas here. Raising an
   OpenAIError turns the response into that error (for streams: an SSE error event, no [DONE]).
6. ``on_failure``: the request was rejected or failed at any point: 400/401/404/413/429/5xx,
   client disconnect (``ctx.cancelled``), worker loss mid-stream. It is also called for rejections
   that happen before routing (401, malformed JSON, unknown routes), so every request is observable.

Each request ends in exactly one terminal call: ``before_finish`` returning normally, or
``on_failure`` (which may follow a ``before_finish`` that raised). ``on_failure`` must not raise;
errors it raises are logged and swallowed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from gateway.http.request_context import RequestContext

log = logging.getLogger("ward.gateway.hooks")


@runtime_checkable
class RequestHooks(Protocol):
    async def before_dispatch(self, ctx: RequestContext) -> None: ...

    def response_headers(self, ctx: RequestContext) -> Mapping[str, str]: ...

    async def on_start(self, ctx: RequestContext) -> None: ...

    async def on_first_token(self, ctx: RequestContext) -> None: ...

    # Optional: async def after_count(self, ctx) -> None and
    # async def before_response(self, ctx) -> None (see the module's docstring).

    async def before_finish(self, ctx: RequestContext) -> None: ...

    async def on_failure(self, ctx: RequestContext) -> None: ...


class NoopHooks:
    """Does nothing at every point; subclass and override only the points you need."""

    async def before_dispatch(self, ctx: RequestContext) -> None:
        return None

    async def after_count(self, ctx: RequestContext) -> None:
        return None

    def response_headers(self, ctx: RequestContext) -> Mapping[str, str]:
        return {}

    async def on_start(self, ctx: RequestContext) -> None:
        return None

    async def before_response(self, ctx: RequestContext) -> None:
        return None

    async def on_first_token(self, ctx: RequestContext) -> None:
        return None

    async def before_finish(self, ctx: RequestContext) -> None:
        return None

    async def on_failure(self, ctx: RequestContext) -> None:
        return None


class HookChain(NoopHooks):
    """Several hooks run in order (e.g. quota then audit). A raise stops the chain at that point,
    except in ``on_failure``, where every hook runs.

    The app's ``startup()`` / ``shutdown()`` reach every member that has them. Members start from
    the last to the first and stop from the first to the last, as nested context managers would:
    the last member (the audit log, which earlier members may write to) is running before any other
    starts and closes only after every other has stopped.
    """

    def __init__(self, hooks: Sequence[RequestHooks]) -> None:
        self.hooks = list(hooks)

    async def startup(self) -> None:
        """Starts the members, last first; if one fails, those already started are stopped again."""
        started: list[object] = []
        try:
            for hook in reversed(self.hooks):
                await _call_if_present(hook, "startup")
                started.append(hook)
        except BaseException:
            for hook in reversed(started):
                try:
                    await _call_if_present(hook, "shutdown")
                except Exception:
                    log.exception("request hook %r failed to stop after a failed start", hook)
            raise

    async def shutdown(self) -> None:
        """Stops the members, first first; every member is stopped even if another fails (logged)."""
        for hook in self.hooks:
            try:
                await _call_if_present(hook, "shutdown")
            except Exception:
                log.exception("request hook %r failed to stop", hook)

    async def before_dispatch(self, ctx: RequestContext) -> None:
        for hook in self.hooks:
            await hook.before_dispatch(ctx)

    async def after_count(self, ctx: RequestContext) -> None:
        for hook in self.hooks:
            after_count = getattr(hook, "after_count", None)
            if after_count is not None:
                await after_count(ctx)

    def response_headers(self, ctx: RequestContext) -> Mapping[str, str]:
        headers: dict[str, str] = {}
        for hook in self.hooks:
            headers.update(hook.response_headers(ctx))
        return headers

    async def on_start(self, ctx: RequestContext) -> None:
        for hook in self.hooks:
            await hook.on_start(ctx)

    async def before_response(self, ctx: RequestContext) -> None:
        for hook in self.hooks:
            before_response = getattr(hook, "before_response", None)
            if before_response is not None:
                await before_response(ctx)

    async def on_first_token(self, ctx: RequestContext) -> None:
        for hook in self.hooks:
            await hook.on_first_token(ctx)

    async def before_finish(self, ctx: RequestContext) -> None:
        for hook in self.hooks:
            await hook.before_finish(ctx)

    async def on_failure(self, ctx: RequestContext) -> None:
        for hook in self.hooks:
            try:
                await hook.on_failure(ctx)
            except Exception:  # one failing hook must not hide the failure from the others
                log.exception("request hook %r failed in on_failure", hook)


async def _call_if_present(component: object, name: str) -> None:
    method = getattr(component, name, None)
    if callable(method):
        await method()
