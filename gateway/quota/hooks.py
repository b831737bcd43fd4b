"""Quotas on the gateway's request-lifecycle seam (gateway.hooks): admit before dispatch, send the
x-ratelimit-* headers on every response, settle to the true usage when the request ends, however it ends.

Wiring::

    quotas = build_quota_service(settings.quota, audit=...)
    app = create_app(
        settings,
        hooks=HookChain([QuotaHooks(quotas), audit_hooks]),
        error_converters=quota_error_converters(),
        routers=[make_quota_admin_router(principal=..., service=lambda: quotas)],
    )
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping

from gateway.http.request_context import RequestContext
from gateway.http.errors import InvalidRequest, OpenAIError, RateLimited
from gateway.hooks import NoopHooks
from gateway.quota.errors import InvalidQuotaRequest, QuotaExceeded, QuotaUnavailable
from gateway.quota.headers import retry_after_headers
from gateway.quota.http import quota_exceeded_body
from gateway.quota.service import Admission, QuotaService

log = logging.getLogger(__name__)

_ADMISSION = "quota.admission"  # keys of this layer's state in RequestContext.extra
_DISPATCHED = "quota.dispatched"
_DEFERRED = "quota.deferred"  # admission left to after_count: the worker counts the prompt
_EXTEND = "quota.extend"  # admitted with a floor before dispatch; extended to the exact reservation in after_count


class QuotaHooks(NoopHooks):
    """Reserves the exact prompt tokens plus the most the completion may use (max_tokens per choice,
    capped by the context length) before dispatch, and settles to the worker's usage at the end.
    With ample room (gateway.quota.headroom) the worker counts the prompt on dispatch instead of a
    Tokenize call: the same exact reservation is then made in ``after_count``, or, with a
    max_concurrent limit in play, admitted before dispatch with ``least_to_reserve`` and extended to it.

    ``fallback_completion_tokens`` is reserved per choice only when neither max_tokens nor the model's
    context length is known.
    """

    def __init__(self, service: QuotaService, *, fallback_completion_tokens: int = 4096):
        self.service = service
        self._fallback = fallback_completion_tokens

    async def startup(self) -> None:
        await self.service.start()

    async def shutdown(self) -> None:
        await self.service.aclose()

    async def before_dispatch(self, ctx: RequestContext) -> None:
        if ctx.principal is None:
            return
        team, key_id = ctx.principal.team, ctx.principal.key_id
        # Counting the prompt costs the worker a Tokenize call; without a token limit in play the
        # reservation changes nothing, so it is skipped (the usage is settled from the worker's count).
        limits = self.service.request_limits(team, key_id=key_id, model=ctx.model)
        counts = limits.counts_tokens
        if counts and ctx.dispatch_can_count and ctx.max_model_len and not ctx.prompt_token_count_known:
            # The reservation is at most n full contexts; with ample room for that, the worker counts
            # the prompt on dispatch and the same exact reservation is made in after_count.
            most = self._choices(ctx) * ctx.max_model_len
            if self.service.has_headroom(team, key_id=key_id, model=ctx.model, most_tokens=most):
                if limits.limits_concurrency:
                    # Its slot must be taken before dispatch, or a flood would overshoot max_concurrent:
                    # admitted now with what any prompt reserves at least, extended in after_count.
                    floor = self.least_to_reserve(ctx)
                    ctx.extra[_ADMISSION] = await self.service.admit(team, key_id=key_id, model=ctx.model, reserve_tokens=floor)
                    ctx.extra[_EXTEND] = True
                else:
                    ctx.extra[_DEFERRED] = True
                ctx.count_on_dispatch = True
                return
        reserve = await self.tokens_to_reserve(ctx) if counts else 0
        ctx.extra[_ADMISSION] = await self.service.admit(team, key_id=key_id, model=ctx.model, reserve_tokens=reserve)

    async def after_count(self, ctx: RequestContext) -> None:
        if ctx.extra.pop(_EXTEND, False):
            # Refused: QuotaExceeded, the admission is withdrawn (its slot, its requests entry and its
            # first reservation) and the Generate call cancelled. The store failing: the outage policy decides.
            reserve = await self.tokens_to_reserve(ctx)  # the worker's count: no Tokenize call
            admission = ctx.extra[_ADMISSION]
            try:
                ctx.extra[_ADMISSION] = await self.service.extend(admission, reserve_tokens=reserve)
            except QuotaExceeded:
                await self.service.withdraw(admission)
                raise
            return
        if not ctx.extra.pop(_DEFERRED, False):
            return
        team, key_id = ctx.principal.team, ctx.principal.key_id
        reserve = await self.tokens_to_reserve(ctx)  # the worker's count: no Tokenize call
        ctx.extra[_ADMISSION] = await self.service.admit(team, key_id=key_id, model=ctx.model, reserve_tokens=reserve)

    def response_headers(self, ctx: RequestContext) -> Mapping[str, str]:
        admission: Admission | None = ctx.extra.get(_ADMISSION)
        return admission.headers if admission is not None else {}

    async def on_start(self, ctx: RequestContext) -> None:
        ctx.extra[_DISPATCHED] = True

    async def before_finish(self, ctx: RequestContext) -> None:
        admission: Admission | None = ctx.extra.get(_ADMISSION)
        if admission is None:
            return
        prompt = ctx.prompt_tokens if ctx.prompt_tokens is not None else await ctx.prompt_token_count()
        await self.service.settle(admission, prompt_tokens=prompt, completion_tokens=ctx.completion_tokens)

    async def on_failure(self, ctx: RequestContext) -> None:
        """Failed, refused after admission, or cancelled: give back what was not used. A request that
        never reached a worker records nothing; one that did is charged what the worker reported, or
        its prompt once generation had started."""
        admission: Admission | None = ctx.extra.get(_ADMISSION)
        if admission is None:
            return
        if not ctx.extra.get(_DISPATCHED):
            await self.service.release(admission)
            return
        prompt = ctx.prompt_tokens
        if prompt is None:
            prompt = await ctx.prompt_token_count() if ctx.first_token_at is not None else 0
        await self.service.settle(admission, prompt_tokens=prompt, completion_tokens=ctx.completion_tokens)

    async def tokens_to_reserve(self, ctx: RequestContext) -> int:
        """Prompt tokens (exact, from the worker's Tokenize) plus, for generation, n choices per prompt
        of max_tokens each, capped by the room the context leaves."""
        try:
            prompt = await ctx.prompt_token_count()
        except ValueError:  # an endpoint without a prompt
            return 0
        if ctx.endpoint.endswith("/embeddings"):
            return prompt
        choices, prompts = self._choices(ctx), self._prompts(ctx)
        if ctx.max_model_len:
            # With several prompts only their sum is known: cap each by the whole context (safe side).
            room = max(0, ctx.max_model_len - prompt) if prompts == 1 else ctx.max_model_len
            per_choice = room if ctx.max_tokens is None else min(ctx.max_tokens, room)
        else:
            per_choice = self._fallback if ctx.max_tokens is None else ctx.max_tokens
        return prompt + prompts * choices * per_choice

    def least_to_reserve(self, ctx: RequestContext) -> int:
        """The least ``tokens_to_reserve`` can answer for this request, whatever its prompt: what is
        reserved before the prompt is counted, so the exact reservation only ever adds to it."""
        if ctx.endpoint.endswith("/embeddings"):
            return 0
        choices, prompts = self._choices(ctx), self._prompts(ctx)
        if not ctx.max_model_len:
            return prompts * choices * (self._fallback if ctx.max_tokens is None else ctx.max_tokens)
        context = ctx.max_model_len
        per_choice = context if ctx.max_tokens is None else min(ctx.max_tokens, context)
        if prompts > 1:  # each prompt's completion is capped by the whole context, not by its room
            return prompts * choices * per_choice
        # prompt + choices x min(max_tokens, context - prompt) is least for an empty prompt
        # (choices x max_tokens) or for one that fills the context (the context length)
        return min(choices * per_choice, context)

    @staticmethod
    def _prompts(ctx: RequestContext) -> int:
        params = ctx.params
        return len(params.prompts()) if _defines(params, "prompts") else 1

    @staticmethod
    def _choices(ctx: RequestContext) -> int:
        params = ctx.params
        # best_of generates more
        candidates = params.candidates if _defines(params, "candidates") else None
        return candidates or (params.n if _defines(params, "n") else None) or 1


@functools.cache
def _class_defines(cls: type, name: str) -> bool:
    return any(name in vars(k) for k in cls.__mro__) or name in getattr(cls, "model_fields", {})


def _defines(params: object, name: str) -> bool:
    """Whether the request body's class has this field, property or method. Asked of the class, once:
    a miss on a pydantic model goes through its ``__getattr__`` and an exception (a few microseconds,
    three times per request); the request models ignore extra fields, so the class decides."""
    return _class_defines(type(params), name)


def quota_error_converters() -> dict[type[Exception], Callable[[Exception], OpenAIError]]:
    """``error_converters`` for create_app: the quota layer's errors as the gateway's OpenAIErrors."""
    converters: dict[type[Exception], Callable] = {
        QuotaExceeded: exceeded_error,
        QuotaUnavailable: unavailable_error,
        InvalidQuotaRequest: invalid_error,
    }
    return converters


def exceeded_error(exc: QuotaExceeded) -> OpenAIError:
    """429 with OpenAI's type and code, Retry-After (or x-should-retry: false) and x-ratelimit-*."""
    error = quota_exceeded_body(exc)["error"]
    return RateLimited(
        error["message"],
        error_type=error["type"],
        code=error["code"],
        headers={**exc.headers, **retry_after_headers(exc.retry_after_s)},
    )


def unavailable_error(exc: QuotaUnavailable) -> OpenAIError:
    return OpenAIError(
        exc.message, status_code=503, error_type="server_error", code="quota_unavailable",
        headers=retry_after_headers(exc.retry_after_s),
    )


def invalid_error(exc: InvalidQuotaRequest) -> OpenAIError:
    return InvalidRequest(exc.message, param=exc.param, code="invalid_value")
