"""GenerationRun: turns a generation's worker responses into per-choice updates and request state.

It keeps the RequestContext current (text per choice, finish reasons, token counts, first-token
time), fires ``on_first_token``, records inter-token latency, and checks the ending is complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import grpc

from gateway.http.request_context import RequestContext
from gateway.http.errors import OpenAIError, ServiceUnavailable, WorkerFailed
from gateway.hooks import RequestHooks
from gateway.metrics import GatewayMetrics
from gateway.serving.dispatch import OpenGeneration
from gateway.workers.errors import WorkerError, to_openai_error
from gateway.workers.pool import WorkerPool
from proto.ward.worker.v1 import worker_pb2 as pb

log = logging.getLogger("ward.gateway")


class GenerationRun:
    """One request's generation: ``n`` choices for each of its prompts, on one worker."""

    def __init__(
        self,
        ctx: RequestContext,
        generation: OpenGeneration,
        *,
        n: int,
        hooks: RequestHooks,
        metrics: GatewayMetrics,
        model_label: str,
        keep_logprobs: bool,
    ) -> None:
        self.ctx = ctx
        self.generation = generation
        self.n = n
        self._hooks = hooks
        self._metrics = metrics
        self._model_label = model_label
        prompts = len(generation.streams)
        ctx.start_choices(prompts * n)
        self._prompt_tokens = [0] * prompts
        self._usage: list[pb.Usage | None] = [None] * prompts
        # Logprobs per choice, kept only for non-streamed responses (streams send them as they come).
        self.logprobs: list[list[pb.TokenLogprob]] | None = [[] for _ in range(prompts * n)] if keep_logprobs else None
        self._last_token_mono: float | None = None
        # per prompt: its tokens' logprobs, when asked (completions' echo), from the first message with tokens
        self.prompt_logprobs: list[list[pb.TokenLogprob] | None] = [None] * prompts

    async def updates(self) -> AsyncIterator[tuple[int, pb.ChoiceDelta]]:
        """``(choice index, delta)`` for every choice delta, in the order the worker sent them."""
        ctx = self.ctx
        total = ctx.num_choices
        async for prompt_index, message in self.generation.messages():
            if message.prompt_tokens and message.prompt_tokens != self._prompt_tokens[prompt_index]:
                self._prompt_tokens[prompt_index] = message.prompt_tokens
                ctx.prompt_tokens = sum(self._prompt_tokens)
            if message.HasField("usage"):
                self._usage[prompt_index] = message.usage
            if message.prompt_logprobs:
                self.prompt_logprobs[prompt_index] = list(message.prompt_logprobs)
            if not message.choices:
                continue
            produced = False
            base = prompt_index * self.n
            for delta in message.choices:
                index = base + delta.index
                if delta.index >= self.n or index >= total:
                    raise WorkerError(
                        grpc.StatusCode.INTERNAL, f"choice index {delta.index} out of range", address=ctx.worker or ""
                    )
                if delta.token_ids:
                    produced = True
                    ctx.completion_tokens += len(delta.token_ids)
                if delta.text:
                    ctx.choice_text[index].append(delta.text)
                if delta.finish_reason:
                    ctx.finish_reasons[index] = delta.finish_reason
                if self.logprobs is not None and delta.logprobs:
                    self.logprobs[index].extend(delta.logprobs)
            if produced:
                if self._last_token_mono is None:
                    await self._first_tokens_arrived()
                else:  # no coroutine per token: only the first one has a hook to await
                    self._more_tokens_arrived()
            for delta in message.choices:
                yield base + delta.index, delta

    async def _first_tokens_arrived(self) -> None:
        now = self._last_token_mono = time.perf_counter()
        self.ctx.first_token_mono = now
        self.ctx.first_token_at = time.time()
        await self._hooks.on_first_token(self.ctx)

    def _more_tokens_arrived(self) -> None:
        now = time.perf_counter()
        if self._model_label:
            self._metrics.observe_inter_token(self._model_label, now - self._last_token_mono)
        self._last_token_mono = now

    def complete(self) -> None:
        """Settles usage from the worker's final messages; raises when the ending is not clean."""
        ctx = self.ctx
        usages = self._usage
        if all(u is not None for u in usages):
            ctx.prompt_tokens = sum(u.prompt_tokens for u in usages)
            ctx.completion_tokens = sum(u.completion_tokens for u in usages)
            ctx.cached_tokens = sum(u.cached_tokens for u in usages)
        reasons = ctx.finish_reasons
        if "abort" in reasons:
            raise ServiceUnavailable("The worker aborted the request; please retry.", code="aborted")
        if any(r is None for r in reasons):
            raise WorkerFailed("The worker ended the response before every choice finished.", code="worker_error")

    def usage(self) -> dict:
        """OpenAI's usage object for the request so far."""
        ctx = self.ctx
        prompt = ctx.prompt_tokens or 0
        return {
            "prompt_tokens": prompt,
            "completion_tokens": ctx.completion_tokens,
            "total_tokens": prompt + ctx.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": ctx.cached_tokens},
        }

    def client_error(self, exc: Exception, *, pool: WorkerPool, prompt_param: str) -> OpenAIError:
        """The OpenAI error to report for ``exc`` raised while running (reports worker failures to the pool)."""
        if isinstance(exc, OpenAIError):
            return exc
        if isinstance(exc, WorkerError):
            pool.report_failure(self.generation.handle, exc)
            if exc.worker_unreachable:
                return ServiceUnavailable("The worker serving this request was lost; please retry.", code="worker_lost")
            return to_openai_error(exc, model=self.ctx.model or "", prompt_param=prompt_param)
        log.error("request %s failed in the gateway", self.ctx.request_id, exc_info=exc)
        return WorkerFailed("The gateway failed while serving the request.", code="internal_error")

    def close(self) -> None:
        self.generation.close()
