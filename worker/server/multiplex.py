"""The Multiplex RPC: many Generate calls over one long-lived gRPC call.

A gRPC call costs both sides far more CPU than a message on an open call (call set-up, headers,
trailers, a completion-queue round per operation): measured on two cores, a one-token generation
took about 1.2 ms of CPU for a Generate call each against 0.4 ms multiplexed. So a gateway keeps
one Multiplex call per worker and numbers its generations (``MuxCall.stream``); each runs the very
same ``Generate`` handler, and what that handler would have streamed, ended with or aborted with
comes back as that stream's events. Pending events are batched into one message, so a busy
connection sends fewer, larger messages. Cancelling a stream aborts its generation as cancelling a
Generate call does; the whole call ending (the gateway gone) cancels every generation on it.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from proto.batching import take_batch
from proto.ward.worker.v1 import worker_pb2 as pb

log = logging.getLogger("ward.worker.server")

GenerateHandler = Callable[[pb.GenerateRequest, Any], AsyncIterator[pb.GenerateResponse]]


class StreamAborted(Exception):
    """Raised by :meth:`StreamContext.abort`: the generation ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: tuple) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailers = trailers


class StreamContext:
    """What a Generate handler uses of ``grpc.aio.ServicerContext``, for one multiplexed stream."""

    __slots__ = ("_call_context", "_trailers")

    def __init__(self, call_context: Any) -> None:
        self._call_context = call_context
        self._trailers: tuple = ()

    def set_trailing_metadata(self, trailing_metadata: tuple) -> None:
        self._trailers = tuple(trailing_metadata)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: tuple = ()) -> None:
        raise StreamAborted(code, details, tuple(trailing_metadata) or self._trailers)

    def cancelled(self) -> bool:
        return False  # a cancelled stream's task is cancelled: the handler sees CancelledError

    def invocation_metadata(self) -> tuple:
        return self._call_context.invocation_metadata() if self._call_context is not None else ()

    def peer(self) -> str:
        return self._call_context.peer() if self._call_context is not None else ""


def _error_event(stream: int, code: grpc.StatusCode, details: str, trailers: tuple = ()) -> pb.MuxEvent:
    metadata = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in trailers}
    return pb.MuxEvent(stream=stream, error=pb.MuxStatus(code=code.value[0], details=details,
                                                         trailing_metadata=metadata))


async def serve_multiplex(generate: GenerateHandler, requests: AsyncIterator[pb.MultiplexRequest],
                          context: Any = None) -> AsyncIterator[pb.MultiplexResponse]:
    """The Multiplex handler's body: runs ``generate`` per stream and yields their events, batched."""
    outbox: list[pb.MuxEvent] = []
    wake = asyncio.Event()
    running: dict[int, asyncio.Task] = {}
    failed: set[int] = set()  # streams ended here for an oversized event: what they still emit is dropped

    def emit(event: pb.MuxEvent) -> None:
        if event.stream in failed:
            return
        outbox.append(event)
        wake.set()

    def too_large(event: pb.MuxEvent, size: int) -> None:
        stream = event.stream
        outbox[:] = [e for e in outbox if e.stream != stream]
        outbox.insert(0, _error_event(stream, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      f"a response of {size} bytes is larger than the channel's limit"))
        failed.add(stream)
        task = running.pop(stream, None)
        if task is not None:
            task.cancel()

    async def run_stream(stream: int, request: pb.GenerateRequest) -> None:
        try:
            async for response in generate(request, StreamContext(context)):
                emit(pb.MuxEvent(stream=stream, response=response))
            emit(pb.MuxEvent(stream=stream, end=True))
        except StreamAborted as exc:
            emit(_error_event(stream, exc.code, exc.details, exc.trailers))
        except asyncio.CancelledError:
            pass  # cancelled by the gateway (or the call ended): nothing more to say on it
        except Exception:  # a handler bug must fail its stream, not the other generations
            log.exception("unexpected error serving a multiplexed generation")
            emit(_error_event(stream, grpc.StatusCode.INTERNAL, "internal worker error"))
        finally:
            if running.get(stream) is asyncio.current_task():
                del running[stream]
            wake.set()

    def accept(call: pb.MuxCall) -> None:
        if call.cancel:
            task = running.pop(call.stream, None)
            if task is not None:
                task.cancel()
        elif call.HasField("generate"):
            if call.stream in running:
                emit(_error_event(call.stream, grpc.StatusCode.INVALID_ARGUMENT,
                                  f"stream {call.stream} is already open on this call"))
                return
            failed.discard(call.stream)
            running[call.stream] = asyncio.ensure_future(run_stream(call.stream, call.generate))

    async def read() -> None:
        async for message in requests:
            for call in message.calls:
                accept(call)

    reader = asyncio.ensure_future(read())
    reader.add_done_callback(lambda _: wake.set())
    try:
        while True:
            if outbox:
                batch = take_batch(outbox, too_large)
                if batch:
                    yield pb.MultiplexResponse(events=batch)
                continue
            if reader.done() and not running:
                if not reader.cancelled() and reader.exception() is not None:
                    raise reader.exception()
                return  # the gateway closed its side and every generation has ended
            wake.clear()
            await wake.wait()
    finally:
        tasks = [reader, *running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # nothing of this call outlives it
