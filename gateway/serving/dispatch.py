"""Admission and dispatch: hooks before a request leaves, then a worker call with failover.

A call that fails because its worker is unreachable (or overloaded) before anything was sent to
the client is retried on another ready worker, up to ``routing.max_attempts`` workers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from gateway.hooks import RequestHooks
from gateway.http.errors import OpenAIError, ServiceUnavailable
from gateway.http.request_context import RequestContext
from gateway.workers.client import GenerateStream, WorkerClient
from gateway.workers.errors import WorkerError, to_openai_error
from gateway.workers.pool import WorkerHandle, WorkerPool
from proto.ward.worker.v1 import worker_pb2 as pb

T = TypeVar("T")

TOKENIZE_TIMEOUT_S = 30.0
_COUNTED = "dispatch.counted"  # RequestContext.extra: the worker's count arrived and was acted on


class OpenGeneration:
    """Generate calls (one per prompt) on one worker, each past its first response.

    Iterate :meth:`messages` for ``(prompt index, response)`` pairs, then :meth:`close`.
    """

    def __init__(self, handle: WorkerHandle, streams: list[GenerateStream]) -> None:
        self.handle = handle
        self.streams = streams
        self.first: list[pb.GenerateResponse] = []
        self._leases = contextlib.ExitStack()
        for stream in streams:
            self._leases.enter_context(handle.lease(stream))
        self._pumps: list[asyncio.Task] = []
        self._closed = False
        self._early: pb.GenerateResponse | None = None

    async def receive_count(self) -> int:
        """The prompt token count the worker reports first (GenerateRequest.report_prompt_tokens;
        one stream). A worker that sends output at once instead has it kept for receive_first."""
        message = await _next(self.streams[0], self.handle.address)
        if not _count_only(message):
            self._early = message
        return message.prompt_tokens

    async def receive_first(self) -> None:
        """Waits for every stream's first response; raises WorkerError if any fails."""
        if len(self.streams) == 1:
            early, self._early = self._early, None
            self.first = [early if early is not None else await _first(self.streams[0], self.handle.address)]
            return
        tasks = [asyncio.ensure_future(_first(s, self.handle.address)) for s in self.streams]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()
            self.first = [t.result() for t in tasks]
        finally:
            for task in tasks:
                task.cancel()

    async def messages(self) -> AsyncIterator[tuple[int, pb.GenerateResponse]]:
        """Every response after (and including) the first ones, as ``(prompt index, response)``."""
        if len(self.streams) == 1:
            stream = self.streams[0]
            yield 0, self.first[0]
            async for message in stream:
                yield 0, message
            return
        for index, message in enumerate(self.first):
            yield index, message
        queue: asyncio.Queue = asyncio.Queue()
        self._pumps = [asyncio.ensure_future(_pump(i, s, queue)) for i, s in enumerate(self.streams)]
        remaining = len(self.streams)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item

    def close(self) -> None:
        """Cancels whatever is still running on the worker and releases the worker; idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in self._pumps:
            task.cancel()
        for stream in self.streams:
            stream.cancel()
        self._leases.close()


def token_id_count(prompt: pb.Prompt) -> int | None:
    """A prompt of token ids counts its ids (the worker takes them as they are); None for any other,
    which only a worker's tokenizer can count."""
    return len(prompt.token_ids.ids) if prompt.WhichOneof("kind") == "token_ids" else None


def counted_by_ids(prompts: Sequence[pb.Prompt]) -> int | None:
    """The exact token count of prompts that are all token ids, known without asking a worker; None
    when any must be tokenized."""
    counts = [token_id_count(prompt) for prompt in prompts]
    return None if None in counts else sum(counts)


def _count_only(message: pb.GenerateResponse) -> bool:
    """A message carrying only the prompt's token count (no output, no usage)."""
    return not message.choices and not message.HasField("usage") and not message.prompt_logprobs


async def _next(stream: GenerateStream, address: str) -> pb.GenerateResponse:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        raise WorkerError(grpc.StatusCode.INTERNAL, "stream ended without a response", address=address) from None


async def _first(stream: GenerateStream, address: str) -> pb.GenerateResponse:
    """The first message with output (a count-only message, sent first when asked for, is skipped)."""
    while True:
        message = await _next(stream, address)
        if not _count_only(message):
            return message


async def _pump(index: int, stream: GenerateStream, queue: asyncio.Queue) -> None:
    try:
        async for message in stream:
            queue.put_nowait((index, message))
        queue.put_nowait((index, None))
    except Exception as err:  # WorkerError, or a bug: either way the reader must hear of it
        queue.put_nowait((index, err))


class Dispatcher:
    """Runs admission hooks and sends work to the pool's workers, failing over before output."""

    def __init__(self, pool: WorkerPool, hooks: RequestHooks) -> None:
        self.pool = pool
        self.hooks = hooks

    async def admit(self, ctx: RequestContext) -> None:
        """Checks a worker is ready, then runs ``before_dispatch``, ``response_headers`` and ``on_start``.

        Raises ServiceUnavailable (no ready worker) or what ``before_dispatch`` raises.
        """
        if not self.pool.is_ready(ctx.model):
            raise ServiceUnavailable(
                f"No ready worker for model `{ctx.model}`; please retry shortly.", code="no_ready_worker"
            )
        await self.hooks.before_dispatch(ctx)
        if not ctx.count_on_dispatch:  # else after the worker's count (open_generation)
            await self._started(ctx)

    async def _started(self, ctx: RequestContext) -> None:
        ctx.response_headers.update(self.hooks.response_headers(ctx))
        await self.hooks.on_start(ctx)

    async def _counted(self, ctx: RequestContext, generation: OpenGeneration) -> None:
        """Reads the worker's prompt count (its first message) and runs the admission left to it."""
        count = await generation.receive_count()
        if count > 0:  # a worker that does not report it leaves the count to a Tokenize call
            ctx.set_prompt_token_count(count)
        ctx.extra[_COUNTED] = True
        after_count = getattr(self.hooks, "after_count", None)
        if after_count is not None:
            await after_count(ctx)
        await self._started(ctx)

    async def open_generation(
        self, ctx: RequestContext, requests: Sequence[pb.GenerateRequest], *, prompt_param: str
    ) -> OpenGeneration:
        """Starts ``requests`` on one worker and waits for their first responses, failing over."""
        max_attempts = self.pool.settings.max_attempts
        tried: list[WorkerHandle] = []
        last: WorkerError | None = None
        if ctx.count_on_dispatch:
            if len(requests) != 1:
                raise ValueError("counting on dispatch needs exactly one Generate call")
            for request in requests:
                request.report_prompt_tokens = True
        for _ in range(max_attempts):
            handle = self._pick(ctx.model, tried, last, prompt_param)
            ctx.worker = handle.address
            generation = OpenGeneration(handle, [handle.client.generate(r) for r in requests])
            try:
                if ctx.count_on_dispatch and not ctx.extra.get(_COUNTED):
                    await self._counted(ctx, generation)
                await generation.receive_first()
                before_response = getattr(self.hooks, "before_response", None)
                if before_response is not None:
                    await before_response(ctx)
                return generation
            except WorkerError as err:
                generation.close()
                self.pool.report_failure(handle, err)
                if not err.retryable:
                    raise to_openai_error(err, model=ctx.model, prompt_param=prompt_param) from None
                tried.append(handle)
                last = err
            except BaseException:
                generation.close()
                raise
        raise to_openai_error(last, model=ctx.model, prompt_param=prompt_param)

    async def call(
        self, ctx: RequestContext | None, model: str, call: Callable[[WorkerClient], Awaitable[T]], *, prompt_param: str
    ) -> T:
        """A unary worker call on the least-loaded ready worker of ``model``, failing over."""
        tried: list[WorkerHandle] = []
        last: WorkerError | None = None
        for _ in range(self.pool.settings.max_attempts):
            handle = self._pick(model, tried, last, prompt_param)
            if ctx is not None:
                ctx.worker = handle.address
            try:
                with handle.lease():
                    return await call(handle.client)
            except WorkerError as err:
                self.pool.report_failure(handle, err)
                if not err.retryable:
                    raise to_openai_error(err, model=model, prompt_param=prompt_param) from None
                tried.append(handle)
                last = err
        raise to_openai_error(last, model=model, prompt_param=prompt_param)

    async def count_tokens(self, model: str, prompts: Sequence[pb.Prompt], *, prompt_param: str, team: str = "") -> int:
        """The exact token count of ``prompts`` (summed): a prompt of token ids counts its ids, any
        other is counted by the worker's Tokenize RPC."""

        async def one(prompt: pb.Prompt) -> int:
            known = token_id_count(prompt)
            if known is not None:
                return known
            request = pb.TokenizeRequest(model=model, prompt=prompt, team=team)
            response = await self.call(
                None, model, lambda client: client.tokenize(request, TOKENIZE_TIMEOUT_S), prompt_param=prompt_param
            )
            return response.count

        if len(prompts) == 1:
            return await one(prompts[0])
        return sum(await asyncio.gather(*(one(p) for p in prompts)))

    def _pick(self, model: str, tried: list[WorkerHandle], last: WorkerError | None, prompt_param: str) -> WorkerHandle:
        try:
            return self.pool.pick(model, exclude=tried)
        except OpenAIError:
            if last is not None:  # report why the workers we tried failed, not "none left"
                raise to_openai_error(last, model=model, prompt_param=prompt_param) from None
            raise
