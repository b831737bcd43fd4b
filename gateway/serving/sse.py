"""Server-sent events as OpenAI sends them: ``data: {json}\\n\\n`` per chunk, ``data: [DONE]`` last."""

from __future__ import annotations

import asyncio
import json
from json.encoder import encode_basestring  # the escaping dumps does with ensure_ascii=False
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.http.errors import ClientDisconnected, ServerShuttingDown
from gateway.serving.generation import GenerationRun
from gateway.serving.lifecycle import Lifecycle
from gateway.workers.pool import WorkerPool
from proto.ward.worker.v1 import worker_pb2 as pb

DONE = b"data: [DONE]\n\n"


# One encoder for every call: json.dumps with other than its default arguments builds a new
# JSONEncoder per call, a third of the time of encoding a token's chunk.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(obj: Any) -> str:
    """Compact JSON, UTF-8 kept as is (the encoding OpenAI uses on the wire)."""
    return _ENCODER.encode(obj)


def event(obj: Any) -> bytes:
    return b"data: " + dumps(obj).encode() + b"\n\n"


class ChunkTemplate:
    """Encodes chunks of one response quickly: the fields all chunks share are serialized once."""

    __slots__ = ("_head", "_tail")

    def __init__(self, fields: dict[str, Any], *, usage_null: bool) -> None:
        # {"id":...,"object":...,...,"choices":[  <choice>  ],"usage":null}
        self._head = "data: " + dumps(fields)[:-1] + ',"choices":['
        self._tail = "]" + (',"usage":null' if usage_null else "") + "}\n\n"

    def encode(self, choice: dict[str, Any]) -> bytes:
        return (self._head + dumps(choice) + self._tail).encode()

    def encode_content(self, index: int, text: str) -> bytes:
        """The chat chunk of one choice's new text, the one sent per token: what ``encode`` gives for
        ``{"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}``,
        with only the text left to escape."""
        return (f'{self._head}{{"index":{int(index)},"delta":{{"content":{encode_basestring(text)}}},'
                f'"logprobs":null,"finish_reason":null}}{self._tail}').encode()


@dataclass(frozen=True)
class EventStream:
    """A streamed response: encoded events, and ``close`` to release what they hold (the worker
    call, the request's failure hooks) if the stream is abandoned before it ends; idempotent."""

    events: AsyncGenerator[bytes, None]
    close: Callable[[], Awaitable[None]]


class ChunkFormatter(Protocol):
    """Turns choice deltas into an endpoint's SSE chunks."""

    def delta_events(self, index: int, delta: pb.ChoiceDelta) -> bytes:
        """Events for one delta (b"" when there is nothing to send); finish reasons are held back."""

    def final_events(self, run: GenerationRun) -> bytes:
        """The finish-reason chunks, the usage chunk if asked for, and ``data: [DONE]``."""


async def run_event_stream(
    run: GenerationRun, formatter: ChunkFormatter, lifecycle: Lifecycle, pool: WorkerPool, *, prompt_param: str
) -> AsyncGenerator[bytes, None]:
    """The SSE body of a streamed generation.

    ``before_finish`` completes before the finish chunks and ``data: [DONE]`` are sent. A failure
    mid-stream sends one OpenAI-shaped error event and ends the stream (no [DONE]). A stream the
    gateway's shutdown ends (after the drain's grace) sends the ``server_shutdown`` error event and
    then ``data: [DONE]``: the client sees a complete, well-formed stream that says why it stopped.
    """
    ctx = run.ctx
    updates = run.updates()
    next_update = updates.__anext__
    shutdown = lifecycle.shutdown
    try:
        try:
            while True:
                try:
                    index, delta = await shutdown.interruptibly(next_update())
                except StopAsyncIteration:
                    break
                chunk = formatter.delta_events(index, delta)
                if chunk:
                    yield chunk
            run.complete()
            await lifecycle.finish(ctx)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error event
            error = run.client_error(exc, pool=pool, prompt_param=prompt_param)
            await lifecycle.fail(ctx, error)
            yield event(error.body()) + (DONE if isinstance(error, ServerShuttingDown) else b"")
            return
        yield formatter.final_events(run)
    except (asyncio.CancelledError, GeneratorExit):
        await lifecycle.fail(ctx, ClientDisconnected())  # a no-op once the response was complete
        raise
    finally:
        await updates.aclose()
        run.close()
