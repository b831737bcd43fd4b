"""The worker-client seam: what serving code needs from a worker, and its gRPC implementation.

Serving depends on the :class:`WorkerClient` protocol only, so tests (or an in-process engine) can
stand in for a remote worker. Every failure surfaces as a :class:`WorkerError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from gateway.workers.errors import WorkerError, from_rpc_error
from gateway.workers.multiplex import GenerateMux
from proto.ward.worker.v1 import worker_pb2 as pb
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc


class GenerateStream(Protocol):
    """A running Generate call: iterate for responses; ``cancel()`` aborts it on the worker."""

    def __aiter__(self) -> AsyncIterator[pb.GenerateResponse]: ...

    async def __anext__(self) -> pb.GenerateResponse: ...

    def cancel(self) -> None:
        """Aborts the call (the worker frees the request's KV blocks); idempotent."""

    def abort_lost(self) -> None:
        """Aborts the call because its worker is gone: a pending read raises WorkerError(UNAVAILABLE)."""


class WorkerClient(Protocol):
    """One worker. Methods raise WorkerError on failure; ``timeout`` is in seconds (None: no limit)."""

    address: str

    def generate(self, request: pb.GenerateRequest) -> GenerateStream: ...

    async def embed(self, request: pb.EmbedRequest, timeout: float | None = None) -> pb.EmbedResponse: ...

    async def tokenize(self, request: pb.TokenizeRequest, timeout: float | None = None) -> pb.TokenizeResponse: ...

    async def model_info(self, timeout: float | None = None) -> pb.ModelInfoResponse: ...

    async def health(self, timeout: float | None = None) -> pb.HealthResponse: ...

    async def load_stats(self, timeout: float | None = None) -> pb.LoadStatsResponse: ...

    async def metrics(self, timeout: float | None = None) -> pb.MetricsResponse: ...

    async def close(self) -> None: ...


def _current_task_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class GrpcGenerateStream:
    """Iterates a Generate call's responses, turning gRPC failures into WorkerError."""

    __slots__ = ("_call", "_address", "_lost")

    def __init__(self, call: grpc.aio.UnaryStreamCall, address: str) -> None:
        self._call = call
        self._address = address
        self._lost = False

    def __aiter__(self) -> GrpcGenerateStream:
        return self

    async def __anext__(self) -> pb.GenerateResponse:
        try:
            message = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self._address) from None
        except asyncio.CancelledError:
            # abort_lost() cancelled the call under us: that is the worker's failure, not ours.
            if self._lost and not _current_task_cancelled():
                raise WorkerError(grpc.StatusCode.UNAVAILABLE, "worker lost", address=self._address) from None
            raise
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        return message

    def cancel(self) -> None:
        self._call.cancel()

    def abort_lost(self) -> None:
        self._lost = True
        self._call.cancel()


class GrpcWorkerClient:
    """A WorkerClient over one long-lived gRPC channel (never one per request).

    Generations share one Multiplex call (gateway/workers/multiplex.py) unless ``multiplex`` is off
    or the worker does not serve it; then each is a Generate call of its own.
    """

    def __init__(self, address: str, channel: grpc.aio.Channel, *, multiplex: bool = True) -> None:
        self.address = address
        self._channel = channel
        self._stub = pb_grpc.WorkerStub(channel)
        self._mux = GenerateMux(address, self._stub.Multiplex, self._generate_call) if multiplex else None

    def generate(self, request: pb.GenerateRequest) -> GenerateStream:
        if self._mux is not None:
            return self._mux.generate(request)
        return self._generate_call(request)

    def _generate_call(self, request: pb.GenerateRequest) -> GrpcGenerateStream:
        return GrpcGenerateStream(self._stub.Generate(request), self.address)

    async def embed(self, request: pb.EmbedRequest, timeout: float | None = None) -> pb.EmbedResponse:
        return await self._unary(self._stub.Embed, request, timeout)

    async def tokenize(self, request: pb.TokenizeRequest, timeout: float | None = None) -> pb.TokenizeResponse:
        return await self._unary(self._stub.Tokenize, request, timeout)

    async def model_info(self, timeout: float | None = None) -> pb.ModelInfoResponse:
        return await self._unary(self._stub.ModelInfo, pb.ModelInfoRequest(), timeout)

    async def health(self, timeout: float | None = None) -> pb.HealthResponse:
        return await self._unary(self._stub.Health, pb.HealthRequest(), timeout)

    async def load_stats(self, timeout: float | None = None) -> pb.LoadStatsResponse:
        return await self._unary(self._stub.LoadStats, pb.LoadStatsRequest(), timeout)

    async def metrics(self, timeout: float | None = None) -> pb.MetricsResponse:
        return await self._unary(self._stub.Metrics, pb.MetricsRequest(), timeout)

    async def close(self) -> None:
        if self._mux is not None:
            await self._mux.aclose()
        await self._channel.close()

    async def _unary(self, method, request, timeout: float | None):
        try:
            return await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self.address) from None
