"""Heavy input never blocks liveness: multi-megabyte prompts are refused at once, tokenization runs off the
worker's event loop, and another team's stream and the probes carry on meanwhile (real processes)."""
from __future__ import annotations

import concurrent.futures
import json
import statistics
import threading
import time

import grpc
import httpx
import pytest
from e2e_support import EMBED_MODEL, GENERATE_MODEL, ProcessStack, make_keys

from proto.ward.worker.v1 import worker_pb2 as pb
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc


@pytest.fixture
def stack(tmp_path):
    procs = ProcessStack(tmp_path)
    try:
        yield procs
    finally:
        procs.close()


@pytest.mark.slow
def test_huge_bodies_are_refused_at_once_while_another_teams_stream_and_the_probes_carry_on(stack):
    generate, embed = stack.workers_ready(("generate", "generate"), ("embed", "embed"))
    gateway = stack.start_gateway({GENERATE_MODEL: [generate.address], EMBED_MODEL: [embed.address]})
    keys = make_keys(gateway.database_url, {"calm": ("cardiology", "user"), "heavy": ("research", "user")})

    def long_stream() -> list[str]:
        body = {"model": GENERATE_MODEL, "messages": [{"role": "user", "content": "Describe a ward round."}],
                "max_tokens": 120, "ignore_eos": True, "stream": True}
        with httpx.Client(timeout=120) as client, client.stream(
                "POST", gateway.url + "/v1/chat/completions", json=body,
                headers={"Authorization": f"Bearer {keys['calm']}"}) as r:
            assert r.status_code == 200
            return [line for line in r.iter_lines() if line.startswith("data: ")]

    probes: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                probes.append(client.get(gateway.url + "/readyz").status_code)
                time.sleep(0.1)

    heavy = {"Authorization": f"Bearer {keys['heavy']}"}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        prober = pool.submit(probe)
        stream = pool.submit(long_stream)
        time.sleep(0.5)
        for size_mb in (5, 10):
            content = "The patient was reviewed on the ward. " * (size_mb * 1024 * 1024 // 38)
            t = time.monotonic()
            r = httpx.post(gateway.url + "/v1/chat/completions", headers=heavy, timeout=60,
                           json={"model": GENERATE_MODEL, "messages": [{"role": "user", "content": content}]})
            assert time.monotonic() - t < 5, "a huge prompt must be refused without tokenizing it"
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]
        t = time.monotonic()
        r = httpx.post(gateway.url + "/v1/embeddings", headers=heavy, timeout=60,
                       json={"model": EMBED_MODEL, "input": "chest pain " * (10 * 1024 * 1024 // 11)})
        assert time.monotonic() - t < 5
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]
        events = stream.result(timeout=120)
        stop.set()
        prober.result(timeout=10)
    assert events[-1] == "data: [DONE]" and not any('"error"' in e for e in events)
    assert probes and set(probes) == {200}


@pytest.mark.slow
def test_the_worker_answers_health_at_once_while_it_tokenizes_a_long_prompt(stack):
    # the model's full context, so the byte bound (and the prompt below) is megabytes long
    generate = stack.start_worker("generate", "--max-model-len", "8192", "--num-kv-blocks", "600")
    stack.wait_ready(generate)
    with grpc.insecure_channel(generate.address) as channel:
        stub = pb_grpc.WorkerStub(channel)
        info = stub.ModelInfo(pb.ModelInfoRequest(), timeout=10)
        assert info.max_prompt_bytes > 0
        # just under the bound: the worker must tokenize it (and then finds it too long for the context)
        text = json.dumps({"note": "observation " * ((info.max_prompt_bytes - 100) // 12)})[: info.max_prompt_bytes - 10]
        conversation = pb.Conversation(messages=[pb.ChatMessage(role="user", content=text)], add_generation_prompt=True)
        request = pb.GenerateRequest(model=GENERATE_MODEL, prompt=pb.Prompt(chat=conversation))
        done = threading.Event()
        outcome: list[grpc.StatusCode] = []

        def generate_call() -> None:
            try:
                for _ in stub.Generate(request, timeout=120):
                    pass
            except grpc.RpcError as err:
                outcome.append(err.code())
            finally:
                done.set()

        caller = threading.Thread(target=generate_call)
        caller.start()
        latencies = []
        while not done.is_set():
            t = time.monotonic()
            assert stub.Health(pb.HealthRequest(), timeout=5).live
            latencies.append(time.monotonic() - t)
            time.sleep(0.01)
        caller.join()
    assert outcome == [grpc.StatusCode.INVALID_ARGUMENT]  # too long once tokenized
    assert len(latencies) >= 3, "the tokenization was too quick to observe"
    print(f"tokenized {len(text)} bytes; health p50 {statistics.median(latencies) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} calls")
    assert max(latencies) < 0.5 and statistics.median(latencies) < 0.1, latencies
