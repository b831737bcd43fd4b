"""The Multiplex RPC: many generations over one gRPC call, worker side (serve_multiplex) and gateway
side (GenerateMux through GrpcWorkerClient), against the same Generate handler a Generate call runs.

Each generation must behave exactly as its own Generate call would: the same responses in order,
the same WorkerError (status, ward-error-code, retry-after) on failure, cancellation reaching the
worker, a lost worker failing its streams with UNAVAILABLE, and workers without the RPC still served.
"""
from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from fake_worker import FakeConfig, FakeWorker, running_gateway

from gateway.app import grpc_connector
from gateway.settings import GatewaySettings
from gateway.workers.channels import open_channel
from gateway.workers.client import GrpcWorkerClient
from gateway.workers.errors import WorkerError
from proto.ward.worker.v1 import worker_pb2 as pb
from worker.server.multiplex import serve_multiplex

pytestmark = pytest.mark.anyio
MODEL = "fake-chat"


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def request(prompt: str = "hello there", *, max_tokens: int = 4, request_id: str = "") -> pb.GenerateRequest:
    return pb.GenerateRequest(request_id=request_id, model=MODEL, prompt=pb.Prompt(text=prompt),
                              params=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0))


async def drain(stream) -> list[pb.GenerateResponse]:
    return [message async for message in stream]


def text_of(messages: list[pb.GenerateResponse]) -> str:
    return "".join(c.text for m in messages for c in m.choices)


# ---- worker side: serve_multiplex with a handler of our own ---------------------------------------

class Calls:
    """A Multiplex call's incoming side: messages put here reach the handler in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    def send(self, *calls: pb.MuxCall) -> None:
        self.queue.put_nowait(pb.MultiplexRequest(calls=list(calls)))

    def close(self) -> None:
        self.queue.put_nowait(None)

    def __aiter__(self):
        return self

    async def __anext__(self) -> pb.MultiplexRequest:
        message = await self.queue.get()
        if message is None:
            raise StopAsyncIteration
        return message


async def test_each_stream_gets_its_handlers_responses_in_order_then_its_end_or_its_abort_status():
    cancelled: list[str] = []

    async def generate(req: pb.GenerateRequest, context):
        if req.request_id == "refused":
            context.set_trailing_metadata((("ward-error-code", "team_share_exceeded"), ("ward-retry-after-ms", "700")))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        if req.request_id == "broken":
            raise RuntimeError("a handler bug")
        try:
            for i in range(3):
                yield pb.GenerateResponse(prompt_tokens=i, choices=[pb.ChoiceDelta(text=f"{req.request_id}{i}")])
                await asyncio.sleep(0.01 if req.request_id == "slow" else 0)
        except asyncio.CancelledError:
            cancelled.append(req.request_id)
            raise

    calls = Calls()
    calls.send(*[pb.MuxCall(stream=s, generate=pb.GenerateRequest(request_id=r))
                 for s, r in ((1, "a"), (2, "b"), (3, "refused"), (4, "broken"), (5, "slow"))])
    events: dict[int, list[pb.MuxEvent]] = {}
    messages, sent_more = 0, False
    async for message in serve_multiplex(generate, calls):
        messages += 1
        for event in message.events:
            events.setdefault(event.stream, []).append(event)
        if events.get(5) and not sent_more:
            sent_more = True
            calls.send(pb.MuxCall(stream=5, cancel=True), pb.MuxCall(stream=6, generate=pb.GenerateRequest(request_id="c")))
        if all(len(events.get(s, [])) == 4 for s in (1, 2, 6)) and 3 in events and 4 in events:
            calls.close()

    for stream, rid in ((1, "a"), (2, "b"), (6, "c")):
        assert [e.response.choices[0].text for e in events[stream][:3]] == [f"{rid}0", f"{rid}1", f"{rid}2"]
        assert events[stream][3].end
    refused = events[3][0].error
    assert len(events[3]) == 1 and grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] == refused.code
    assert refused.details == "queue full"
    assert dict(refused.trailing_metadata) == {"ward-error-code": "team_share_exceeded", "ward-retry-after-ms": "700"}
    assert events[4][0].error.code == grpc.StatusCode.INTERNAL.value[0]
    assert events[4][0].error.details == "internal worker error"  # never the worker's internals
    assert cancelled == ["slow"] and not any(e.end or e.HasField("error") for e in events[5])
    assert messages < sum(len(v) for v in events.values())  # pending events went out together


async def test_a_stream_id_already_open_is_refused_and_the_open_stream_goes_on():
    release = asyncio.Event()

    async def generate(req, context):
        await release.wait()
        yield pb.GenerateResponse(choices=[pb.ChoiceDelta(text=req.request_id)])

    calls = Calls()
    calls.send(pb.MuxCall(stream=7, generate=pb.GenerateRequest(request_id="first")))
    calls.send(pb.MuxCall(stream=7, generate=pb.GenerateRequest(request_id="second")))
    seen = []
    async for message in serve_multiplex(generate, calls):
        seen += list(message.events)
        if len(seen) == 1:
            assert seen[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            release.set()
        if any(e.end for e in seen):
            calls.close()
    assert [e.response.choices[0].text for e in seen if e.HasField("response")] == ["first"]


async def test_the_call_ending_cancels_every_generation_on_it():
    started, cancelled = asyncio.Event(), []

    async def generate(req, context):
        started.set()
        try:
            await asyncio.sleep(30)
            yield pb.GenerateResponse()
        except asyncio.CancelledError:
            cancelled.append(req.request_id)
            raise

    calls = Calls()
    calls.send(pb.MuxCall(stream=1, generate=pb.GenerateRequest(request_id="x")))
    serving = serve_multiplex(generate, calls)
    reading = asyncio.ensure_future(serving.__anext__())
    await started.wait()
    reading.cancel()  # the gateway went away: gRPC cancels the handler
    with pytest.raises(asyncio.CancelledError):
        await reading
    await serving.aclose()
    await until(lambda: cancelled == ["x"])


async def test_events_are_batched_by_size_and_one_too_large_for_the_channel_fails_only_its_stream(monkeypatch):
    from proto import batching

    monkeypatch.setattr(batching, "BATCH_BYTES", 300)
    monkeypatch.setattr(batching, "MAX_MESSAGE_BYTES", 1000)
    cancelled = []

    async def generate(req, context):
        try:
            size = 2000 if req.request_id == "huge" else 100
            for _ in range(5):
                yield pb.GenerateResponse(choices=[pb.ChoiceDelta(text="x" * size)])
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            cancelled.append(req.request_id)
            raise

    calls = Calls()
    calls.send(pb.MuxCall(stream=1, generate=pb.GenerateRequest(request_id="huge")),
               pb.MuxCall(stream=2, generate=pb.GenerateRequest(request_id="small")))
    events: dict[int, list] = {}
    async for message in serve_multiplex(generate, calls):
        assert message.ByteSize() <= 300 + 200 or len(message.events) == 1
        for event in message.events:
            events.setdefault(event.stream, []).append(event)
        if any(e.end for e in events.get(2, [])) and 1 in events:
            calls.close()
    assert len(events[1]) == 1 and events[1][0].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert [len(e.response.choices[0].text) for e in events[2] if e.HasField("response")] == [100] * 5
    assert cancelled == ["huge"]


# ---- gateway side: GrpcWorkerClient over a fake worker --------------------------------------------

def client_for(worker: FakeWorker, *, multiplex: bool = True) -> GrpcWorkerClient:
    return GrpcWorkerClient(worker.address, open_channel(worker.address), multiplex=multiplex)


async def test_concurrent_generations_share_one_call_and_match_generate_calls_exactly():
    async with FakeWorker(FakeConfig(model=MODEL, token_delay_s=0.001)) as worker:
        muxed, plain = client_for(worker), client_for(worker, multiplex=False)
        try:
            prompts = [f"prompt number {i}" for i in range(24)]
            via_mux = await asyncio.gather(*[drain(muxed.generate(request(p, max_tokens=5))) for p in prompts])
            assert worker.servicer.multiplex_calls == 1
            via_calls = await asyncio.gather(*[drain(plain.generate(request(p, max_tokens=5))) for p in prompts])
            assert worker.servicer.multiplex_calls == 1  # the plain client made Generate calls
            assert via_mux == via_calls
            assert all(m[-1].usage.completion_tokens == 5 for m in via_mux)
            assert len({text_of(m) for m in via_mux}) > 1  # different prompts, different answers
        finally:
            await muxed.close()
            await plain.close()


@pytest.mark.parametrize("failure", [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "the queue is full", "team_share_exceeded"),
    (grpc.StatusCode.INVALID_ARGUMENT, "bad stop", None),
    (grpc.StatusCode.UNAVAILABLE, "draining", "unavailable"),
])
async def test_a_failed_generation_raises_the_same_worker_error_as_a_generate_call(failure):
    async with FakeWorker(FakeConfig(model=MODEL)) as worker:
        worker.servicer.fail_generate = failure
        errors = []
        for multiplex in (True, False):
            client = client_for(worker, multiplex=multiplex)
            try:
                with pytest.raises(WorkerError) as caught:
                    await drain(client.generate(request()))
                errors.append(caught.value)
            finally:
                await client.close()
        muxed, plain = errors
        assert (muxed.status, muxed.message, muxed.code, muxed.retry_after_ms, muxed.address) == \
               (plain.status, plain.message, plain.code, plain.retry_after_ms, plain.address)
        assert muxed.status is failure[0] and muxed.code == failure[2]
        if failure[0] is grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert muxed.retry_after_ms == 2500


async def test_cancelling_a_stream_aborts_its_generation_on_the_worker_and_not_the_others():
    async with FakeWorker(FakeConfig(model=MODEL, token_delay_s=0.02)) as worker:
        client = client_for(worker)
        try:
            doomed = client.generate(request("stop me", max_tokens=200, request_id="doomed"))
            survivor = client.generate(request("keep me", max_tokens=6, request_id="survivor"))
            await doomed.__anext__()
            doomed.cancel()
            doomed.cancel()  # idempotent
            with pytest.raises(WorkerError) as caught:
                await doomed.__anext__()
            assert caught.value.status is grpc.StatusCode.CANCELLED
            await until(lambda: "doomed" in worker.servicer.cancelled)
            messages = await drain(survivor)
            assert messages[-1].usage.completion_tokens == 6 and "survivor" in worker.servicer.completed
            assert worker.servicer.multiplex_calls == 1
        finally:
            await client.close()


async def test_a_worker_that_goes_away_fails_its_streams_with_unavailable_and_a_restart_is_served_on_a_new_call():
    worker = FakeWorker(FakeConfig(model=MODEL, token_delay_s=0.05))
    await worker.start()
    client = client_for(worker)
    try:
        streams = [client.generate(request(f"long {i}", max_tokens=100)) for i in range(3)]
        for stream in streams:
            await stream.__anext__()
        await worker.stop(0)  # crashed mid-generation
        for stream in streams:
            with pytest.raises(WorkerError) as caught:
                await drain(stream)
            assert caught.value.status is grpc.StatusCode.UNAVAILABLE and caught.value.worker_unreachable
        await worker.start()  # back on the same address
        deadline = time.monotonic() + 10
        while True:  # the channel reconnects within its backoff; until then UNAVAILABLE, as a call would
            try:
                messages = await drain(client.generate(request("after the restart", max_tokens=3)))
                break
            except WorkerError as exc:
                assert exc.status is grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert messages[-1].usage.completion_tokens == 3
        assert worker.servicer.multiplex_calls >= 1
    finally:
        await client.close()
        await worker.stop(0)


async def test_abort_lost_fails_every_stream_on_the_call_with_unavailable():
    async with FakeWorker(FakeConfig(model=MODEL, token_delay_s=0.05)) as worker:
        client = client_for(worker)
        try:
            first, second = (client.generate(request(p, max_tokens=100)) for p in ("one", "two"))
            await first.__anext__()
            pending = asyncio.ensure_future(second.__anext__())
            await second_ready(pending)
            first.abort_lost()
            for stream in (first, second):
                with pytest.raises(WorkerError) as caught:
                    await drain(stream)
                assert (caught.value.status, caught.value.message) == (grpc.StatusCode.UNAVAILABLE, "worker lost")
            await until(lambda: len(worker.servicer.cancelled) == 2)  # the worker stopped both
            messages = await drain(client.generate(request("fresh", max_tokens=2)))  # a new call serves
            assert messages[-1].usage.completion_tokens == 2 and worker.servicer.multiplex_calls == 2
        finally:
            await client.close()


async def second_ready(pending: asyncio.Future) -> None:
    await pending
    assert pending.result().choices


async def test_a_worker_without_multiplex_is_served_by_generate_calls_pending_ones_included():
    async with FakeWorker(FakeConfig(model=MODEL, multiplex=False)) as worker:
        client = client_for(worker)
        try:
            # opened together, before the worker's UNIMPLEMENTED came back: each is re-sent as a call
            results = await asyncio.gather(*[drain(client.generate(request(f"p {i}", max_tokens=3))) for i in range(5)])
            assert [m[-1].usage.completion_tokens for m in results] == [3] * 5
            assert len(worker.servicer.generate_requests) == 5  # each ran once
            later = await drain(client.generate(request("later", max_tokens=2)))
            assert later[-1].usage.completion_tokens == 2 and worker.servicer.multiplex_calls == 0
        finally:
            await client.close()


async def test_the_gateway_multiplexes_by_default_and_routing_multiplex_off_makes_generate_calls():
    for multiplex in (True, False):
        async with FakeWorker(FakeConfig(model=MODEL)) as worker:
            settings = GatewaySettings(models={MODEL: {"workers": [worker.address]}},
                                       routing={"multiplex": multiplex})
            client = grpc_connector(settings)(worker.address)
            try:
                await asyncio.gather(*[drain(client.generate(request(f"q {i}"))) for i in range(4)])
                assert worker.servicer.multiplex_calls == (1 if multiplex else 0)
                assert len(worker.servicer.generate_requests) == 4
            finally:
                await client.close()


async def test_chat_through_the_gateway_streams_over_one_multiplexed_call():
    async with FakeWorker(FakeConfig(model=MODEL)) as worker, running_gateway({MODEL: [worker]}) as gw:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        answers = await asyncio.gather(*[gw.client.post("/v1/chat/completions", json=body) for _ in range(6)])
        assert [a.status_code for a in answers] == [200] * 6
        assert all(a.json()["usage"]["completion_tokens"] == 3 for a in answers)
        assert worker.servicer.multiplex_calls == 1


async def test_a_request_too_large_for_the_channel_fails_alone_and_the_call_serves_the_others(monkeypatch):
    from proto import batching

    monkeypatch.setattr(batching, "MAX_MESSAGE_BYTES", 2000)
    async with FakeWorker(FakeConfig(model=MODEL, max_model_len=4096)) as worker:
        client = client_for(worker)
        try:
            huge = client.generate(request("word " * 1000, max_tokens=2))
            small = client.generate(request("short one", max_tokens=2))
            with pytest.raises(WorkerError) as caught:
                await drain(huge)
            assert caught.value.status is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await drain(small))[-1].usage.completion_tokens == 2
            assert worker.servicer.multiplex_calls == 1 and len(worker.servicer.generate_requests) == 1
        finally:
            await client.close()
