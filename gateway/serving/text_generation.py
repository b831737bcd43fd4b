"""The path shared by chat and completions: admit, dispatch, then stream or collect the result."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gateway.http.errors import ClientDisconnected, InvalidRequest, ModelNotFound
from gateway.http.request_context import RequestContext
from gateway.metrics import GatewayMetrics
from gateway.policy.team_policy import OpenTeamPolicy, SchedulingSource
from gateway.serving.dispatch import Dispatcher, counted_by_ids
from gateway.serving.generation import GenerationRun
from gateway.serving.lifecycle import Lifecycle
from gateway.serving.prompt_size import check_prompt_sizes
from gateway.serving.sse import ChunkFormatter, EventStream, run_event_stream
from gateway.serving.tenancy import tenancy_fields
from gateway.workers.pool import WorkerPool, system_fingerprint
from proto.ward.worker.v1 import worker_pb2 as pb


class ResponseFormatter(ChunkFormatter, Protocol):
    def response(self, run: GenerationRun) -> dict[str, Any]:
        """The non-streamed response body."""


class ResponseMeta:
    """The fields every response object and chunk of one request shares."""

    __slots__ = ("id", "created", "model", "system_fingerprint")

    def __init__(self, id: str, model: str, fingerprint: str | None) -> None:
        self.id = id
        self.created = int(time.time())
        self.model = model
        self.system_fingerprint = fingerprint


class GenerationService:
    """Runs a generation request end to end; endpoint services supply requests and formatting."""

    def __init__(
        self,
        pool: WorkerPool,
        dispatcher: Dispatcher,
        lifecycle: Lifecycle,
        metrics: GatewayMetrics,
        scheduling: SchedulingSource | None = None,
    ) -> None:
        self.pool = pool
        self.dispatcher = dispatcher
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.scheduling = scheduling or OpenTeamPolicy()

    def tenancy(self, ctx: RequestContext) -> dict[str, Any]:
        """The tenancy fields of the request's Generate calls (team, its class and weight, cache salt)."""
        return tenancy_fields(ctx, self.scheduling)

    def check_model(self, model: str, task: str) -> None:
        """Raises ModelNotFound for an unknown model, InvalidRequest when it serves another task."""
        if not self.pool.has_model(model):
            raise ModelNotFound(model)
        info = self.pool.model_info(model)
        if info is not None and info.task and info.task != task:
            raise InvalidRequest(
                f"The model `{model}` is a `{info.task}` model and does not support this endpoint.",
                param="model",
                code="model_not_supported",
            )

    def meta(self, ctx: RequestContext, id_prefix: str) -> ResponseMeta:
        info = self.pool.model_info(ctx.model or "")
        return ResponseMeta(f"{id_prefix}{ctx.request_id}", ctx.model or "", system_fingerprint(info) if info else None)

    async def run(
        self,
        ctx: RequestContext,
        requests: Sequence[pb.GenerateRequest],
        *,
        n: int,
        stream: bool,
        keep_logprobs: bool,
        formatter: Callable[[GenerationRun], ResponseFormatter],
        prompt_param: str,
    ) -> dict[str, Any] | EventStream:
        """Admits and dispatches ``requests``; returns the body, or the event stream.

        Raises OpenAIError; the request's terminal hooks have run when a body is returned.
        """
        model = ctx.model or ""
        prompts = [r.prompt for r in requests]
        check_prompt_sizes(self.pool.model_info(model), prompts, param=prompt_param)
        team = ctx.principal.team if ctx.principal else ""
        ctx.set_token_counter(lambda: self.dispatcher.count_tokens(model, prompts, prompt_param=prompt_param, team=team))
        known = counted_by_ids(prompts)
        if known is not None:  # admission needs no worker's count: none is asked for on dispatch either
            ctx.set_prompt_token_count(known)
        self.lifecycle.begin(ctx)
        info = self.pool.model_info(model)
        ctx.max_model_len = info.max_model_len if info is not None and info.max_model_len else None
        ctx.dispatch_can_count = len(requests) == 1  # the worker can report the count in its first message
        await self.dispatcher.admit(ctx)
        generation = await self.dispatcher.open_generation(ctx, requests, prompt_param=prompt_param)
        run = GenerationRun(
            ctx,
            generation,
            n=n,
            hooks=self.dispatcher.hooks,
            metrics=self.metrics,
            model_label=self.lifecycle.model_label(ctx),
            keep_logprobs=keep_logprobs and not stream,
        )
        fmt = formatter(run)
        if stream:
            events = run_event_stream(run, fmt, self.lifecycle, self.pool, prompt_param=prompt_param)

            async def release() -> None:  # a no-op unless the stream never ran to its end
                run.close()
                await self.lifecycle.fail(ctx, ClientDisconnected())

            return EventStream(events, release)
        try:
            async for _ in run.updates():
                pass
            run.complete()
        except Exception as exc:  # noqa: BLE001 - translated for the client
            raise run.client_error(exc, pool=self.pool, prompt_param=prompt_param) from None
        finally:
            run.close()
        body = fmt.response(run)
        await self.lifecycle.finish(ctx)
        return body
