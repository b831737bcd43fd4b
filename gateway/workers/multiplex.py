"""Generations multiplexed over one long-lived Multiplex call per worker (proto: ``Worker.Multiplex``).

A Generate call each costs gateway and worker far more CPU than a message on an open call
(worker/server/multiplex.py has the figures), so a :class:`GenerateMux` keeps one Multiplex call
open per worker and hands out :class:`MuxGenerateStream` objects that behave as a Generate call's
stream does: the same responses in order, the same :class:`WorkerError` on failure, ``cancel()``
aborting the generation on the worker. A single writer task sends pending starts and cancels as
one message; a single reader task routes events to their streams.

If the call itself fails, every stream on it fails with that status (a worker that went away:
UNAVAILABLE, as each of its Generate calls would) and the next generation opens a new call. A
worker that does not know the RPC (UNIMPLEMENTED before any event) gets its pending generations
re-sent as Generate calls, and every later one too.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

import grpc

from gateway.workers.errors import WorkerError, from_rpc_error, worker_error
from proto.batching import take_batch
from proto.ward.worker.v1 import worker_pb2 as pb

log = logging.getLogger("ward.gateway.workers")

_END = object()  # a stream's normal end
_STATUS_BY_CODE = {status.value[0]: status for status in grpc.StatusCode}


def _stream_error(status: pb.MuxStatus, address: str) -> WorkerError:
    """The WorkerError a Generate call that ended with this status would have raised."""
    return worker_error(_STATUS_BY_CODE.get(status.code, grpc.StatusCode.UNKNOWN), status.details,
                        status.trailing_metadata.items(), address)


class MuxGenerateStream:
    """One generation on a Multiplex call; the GenerateStream protocol (gateway/workers/client.py)."""

    __slots__ = ("_call", "_id", "_request", "_items", "_waiter", "_terminal", "_fallback")

    def __init__(self, call: _MuxCall, stream_id: int, request: pb.GenerateRequest) -> None:
        self._call = call
        self._id = stream_id
        self._request: pb.GenerateRequest | None = request  # kept until an event shows the worker took it
        self._items: collections.deque = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._terminal: object | None = None  # _END or a WorkerError, once the stream is over
        self._fallback = None  # a Generate call's stream, when the worker does not multiplex

    def __aiter__(self) -> MuxGenerateStream:
        return self

    async def __anext__(self) -> pb.GenerateResponse:
        if self._fallback is not None:
            return await self._fallback.__anext__()
        while not self._items:
            if self._terminal is not None:
                if self._terminal is _END:
                    raise StopAsyncIteration
                raise self._terminal
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
            if self._fallback is not None:
                return await self._fallback.__anext__()
        return self._items.popleft()

    def cancel(self) -> None:
        if self._fallback is not None:
            self._fallback.cancel()
        elif self._terminal is None:
            self._finish(WorkerError(grpc.StatusCode.CANCELLED, "cancelled", address=self._call.address))
            self._call.cancel_stream(self._id)

    def abort_lost(self) -> None:
        if self._fallback is not None:
            self._fallback.abort_lost()
            return
        # The worker is declared dead: its call is no use to anyone; every stream on it fails.
        self._call.abandon(WorkerError(grpc.StatusCode.UNAVAILABLE, "worker lost", address=self._call.address))

    # ---- fed by the call -----------------------------------------------------------------
    def _deliver(self, item: pb.GenerateResponse) -> None:
        self._request = None
        self._items.append(item)
        self._wake()

    def _finish(self, terminal: object) -> None:
        if self._terminal is None:
            self._request = None
            self._terminal = terminal
            self._wake()

    def _send_as_call(self, open_call: Callable[[pb.GenerateRequest], object]) -> None:
        """The worker does not multiplex: this generation (not yet started there) becomes a Generate call."""
        if self._terminal is None and self._request is not None:
            self._fallback = open_call(self._request)
            self._request = None
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _MuxCall:
    """One Multiplex call and the streams opened on it."""

    def __init__(self, mux: GenerateMux, call: grpc.aio.StreamStreamCall) -> None:
        self.mux = mux
        self.address = mux.address
        self._call = call
        self._streams: dict[int, MuxGenerateStream] = {}
        self._next_id = 1
        self._outbox: list[pb.MuxCall] = []
        self._wake = asyncio.Event()
        self._heard = False  # any event came back: the worker serves Multiplex
        self.failed = False
        self._writer = asyncio.ensure_future(self._write())
        self._reader = asyncio.ensure_future(self._read())

    def open(self, request: pb.GenerateRequest) -> MuxGenerateStream:
        stream_id = self._next_id
        self._next_id += 1
        stream = MuxGenerateStream(self, stream_id, request)
        self._streams[stream_id] = stream
        self._send(pb.MuxCall(stream=stream_id, generate=request))
        return stream

    def cancel_stream(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is not None and not self.failed:
            self._send(pb.MuxCall(stream=stream_id, cancel=True))

    def abandon(self, err: WorkerError) -> None:
        """Ends the call: every open stream fails with ``err``; the next generation opens a new call."""
        if self.failed:
            return
        self.failed = True
        self.mux.forget(self)
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._finish(err)
        # Cancelling the call completes its pending read and write in gRPC's core, which ends the
        # reader and writer by themselves; cancelling their tasks instead would leave those
        # operations to complete later, possibly after the event loop has closed.
        self._call.cancel()
        self._wake.set()

    async def ended(self, timeout_s: float = 2.0) -> None:
        """Waits (at most ``timeout_s``) until the reader and writer are done, after ``abandon``."""
        await asyncio.wait((self._writer, self._reader), timeout=timeout_s)

    def _send(self, call: pb.MuxCall) -> None:
        self._outbox.append(call)
        self._wake.set()

    def _too_large(self, call: pb.MuxCall, size: int) -> None:
        """A request the channel could not carry fails its own stream, as its Generate call would."""
        stream = self._streams.pop(call.stream, None)
        if stream is not None:
            stream._finish(WorkerError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"a request of {size} bytes is larger than the channel's limit",
                                       address=self.address))

    async def _write(self) -> None:
        try:
            while not self.failed:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox and not self.failed:
                    batch = take_batch(self._outbox, self._too_large)
                    if batch:
                        await self._call.write(pb.MultiplexRequest(calls=batch))
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            pass  # the reader sees the call's status and fails the streams with it
        except Exception as exc:  # e.g. writing to a call that already ended
            log.debug("multiplexed write to %s ended: %r", self.address, exc)

    async def _read(self) -> None:
        try:
            while True:
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    self._ended(WorkerError(grpc.StatusCode.UNAVAILABLE, "the worker closed the multiplexed call",
                                            address=self.address))
                    return
                self._heard = True
                streams = self._streams
                for event in message.events:
                    stream = streams.get(event.stream)
                    if stream is None:
                        continue  # cancelled by us meanwhile
                    if event.HasField("response"):
                        stream._deliver(event.response)
                    elif event.HasField("error"):
                        del streams[event.stream]
                        stream._finish(_stream_error(event.error, self.address))
                    else:
                        del streams[event.stream]
                        stream._finish(_END)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNIMPLEMENTED and not self._heard:
                self._fall_back()
                return
            self._ended(from_rpc_error(exc, self.address))

    def _ended(self, err: WorkerError) -> None:
        log.debug("multiplexed call to %s ended: %s", self.address, err)
        self.abandon(err)

    def _fall_back(self) -> None:
        log.info("worker %s does not serve Multiplex: one Generate call per request", self.address)
        self.mux.multiplexing = False
        self.failed = True
        self.mux.forget(self)
        streams, self._streams = self._streams, {}
        self._wake.set()  # the writer sees the call failed and ends
        for stream in streams.values():
            stream._send_as_call(self.mux.open_call)


class GenerateMux:
    """Generations to one worker over a shared Multiplex call, opened on first use and after failures."""

    def __init__(self, address: str, open_mux: Callable[[], grpc.aio.StreamStreamCall],
                 open_call: Callable[[pb.GenerateRequest], object]) -> None:
        self.address = address
        self.multiplexing = True  # False once the worker answered UNIMPLEMENTED
        self.open_call = open_call
        self._open_mux = open_mux
        self._current: _MuxCall | None = None

    def generate(self, request: pb.GenerateRequest):
        if not self.multiplexing:
            return self.open_call(request)
        if self._current is None:
            self._current = _MuxCall(self, self._open_mux())
        return self._current.open(request)

    def forget(self, call: _MuxCall) -> None:
        if self._current is call:
            self._current = None

    async def aclose(self) -> None:
        """Ends the current call (its open streams fail with UNAVAILABLE) and waits until it is done."""
        call = self._current
        if call is not None:
            call.abandon(WorkerError(grpc.StatusCode.UNAVAILABLE, "the gateway is closing", address=self.address))
            await call.ended()
