"""The gateway as a real ``ward gateway --config`` process in front of fake worker processes,
driven by the official ``openai`` client."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from e2e_support import every_model_ready
from fake_worker import API_KEY
from ports import free_port

from proto.ward.worker.v1 import worker_pb2 as pb
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc

CHAT = "fake-chat"
EMBED = "fake-embed"
FAKE_WORKER = Path(__file__).with_name("fake_worker.py")
USER = [{"role": "user", "content": "summarise the discharge note"}]


class Processes:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def worker(self, *args: str, name: str) -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen(
            [sys.executable, str(FAKE_WORKER), *args, "--worker-id", name],
            stdout=subprocess.PIPE,
            stderr=open(self.log_dir / f"{name}.log", "w"),
            text=True,
        )
        self.procs.append(proc)
        line = proc.stdout.readline()
        assert line.startswith("PORT "), f"fake worker {name} did not start: {line!r}"
        return proc, f"127.0.0.1:{int(line.split()[1])}"

    def gateway(self, models: dict[str, list[str]]) -> str:
        port = free_port()
        config = self.log_dir / "gateway.yaml"
        lines = [
            "host: 127.0.0.1",
            f"port: {port}",
            "api_keys:",
            f"  {API_KEY}: team-process",
            "routing:",
            "  poll_interval_s: 0.2",
            "  poll_timeout_s: 0.5",
            "models:",
        ]
        for model, addresses in models.items():
            lines += [f"  {model}:", f"    workers: [{', '.join(repr(a) for a in addresses)}]"]
        config.write_text("\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WARD_")}
        # The gateway always opens its database (identity, audit log): keep it in this test's directory.
        env["WARD_DATA_DIR"] = str(self.log_dir / "data")
        log = open(self.log_dir / "gateway.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "ward", "gateway", "--config", str(config), "--log-level", "warning"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, (self.log_dir / "gateway.log").read_text()
            try:
                if every_model_ready(httpx.get(f"{url}/readyz", timeout=1)):
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("gateway never became ready:\n" + (self.log_dir / "gateway.log").read_text())

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def load_stats(address: str) -> pb.LoadStatsResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.WorkerStub(channel).LoadStats(pb.LoadStatsRequest(), timeout=2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    procs = Processes(tmp_path_factory.mktemp("gateway-process"))
    try:
        _, chat_a = procs.worker("--model", CHAT, "--token-delay", "0.002", name="chat-a")
        _, chat_b = procs.worker("--model", CHAT, "--token-delay", "0.002", name="chat-b")
        _, embed = procs.worker("--model", EMBED, "--task", "embed", name="embed")
        url = procs.gateway({CHAT: [chat_a, chat_b], EMBED: [embed]})
        yield {"url": url, "chat_workers": [chat_a, chat_b]}
    finally:
        procs.stop_all()


@pytest.fixture
def client(stack):
    with openai.OpenAI(base_url=stack["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=20) as c:
        yield c


def test_models_list(client):
    assert sorted(m.id for m in client.models.list()) == [CHAT, EMBED]
    assert client.models.retrieve(CHAT).id == CHAT


def test_chat_streamed_and_not_agree_and_usage_matches_tokenize(client, stack):
    whole = client.chat.completions.create(
        model=CHAT, messages=USER, seed=21, max_tokens=10, extra_body={"ignore_eos": True}
    )
    assert whole.object == "chat.completion" and whole.choices[0].finish_reason == "length"
    stream = client.chat.completions.create(
        model=CHAT,
        messages=USER,
        seed=21,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 10
    conversation = pb.Conversation(
        messages=[pb.ChatMessage(role="user", content=USER[0]["content"])], add_generation_prompt=True
    )
    with grpc.insecure_channel(stack["chat_workers"][0]) as channel:
        count = (
            pb_grpc.WorkerStub(channel)
            .Tokenize(pb.TokenizeRequest(model=CHAT, prompt=pb.Prompt(chat=conversation)))
            .count
        )
    assert whole.usage.prompt_tokens == chunks[-1].usage.prompt_tokens == count


def test_chat_features_through_http(client):
    two = client.chat.completions.create(model=CHAT, messages=USER, n=2, seed=3)
    assert [c.index for c in two.choices] == [0, 1]
    one = client.chat.completions.create(model=CHAT, messages=USER, max_tokens=1)
    assert one.usage.completion_tokens == 1 and one.choices[0].finish_reason == "length"
    full = client.chat.completions.create(
        model=CHAT, messages=USER, seed=8, max_tokens=8, extra_body={"ignore_eos": True}
    )
    word = full.choices[0].message.content.split()[3]
    stopped = client.chat.completions.create(
        model=CHAT, messages=USER, seed=8, max_tokens=8, stop=[" " + word], extra_body={"ignore_eos": True}
    )
    assert stopped.choices[0].message.content == " ".join(full.choices[0].message.content.split()[:3])
    lp = client.chat.completions.create(model=CHAT, messages=USER, seed=8, logprobs=True, top_logprobs=3)
    assert all(len(t.top_logprobs) == 3 for t in lp.choices[0].logprobs.content)
    again = client.chat.completions.create(model=CHAT, messages=USER, seed=8, logprobs=True, top_logprobs=3)
    assert again.choices[0].message.content == lp.choices[0].message.content


def test_completions_and_embeddings(client):
    c = client.completions.create(model=CHAT, prompt="the patient", max_tokens=4, seed=2, logprobs=1)
    assert c.object == "text_completion" and len(c.choices[0].logprobs.tokens) == c.usage.completion_tokens
    streamed = "".join(
        ch.choices[0].text
        for ch in client.completions.create(model=CHAT, prompt="the patient", max_tokens=4, seed=2, stream=True)
        if ch.choices
    )
    assert streamed == c.choices[0].text
    e = client.embeddings.create(model=EMBED, input=["first note", "second"])
    assert [d.index for d in e.data] == [0, 1] and len(e.data[0].embedding) == 8
    b64 = client.embeddings.create(model=EMBED, input=["first note", "second"], encoding_format="base64")
    assert b64.data[0].embedding  # the client returns the raw base64 string when asked for it
    assert e.usage.prompt_tokens == 3


def test_errors_reach_the_client_as_openai_exceptions(client, stack):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=USER)
    assert err.value.status_code == 404 and err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "w " * 300}])
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=CHAT, messages=USER, temperature=5)
    with openai.OpenAI(base_url=stack["url"] + "/v1", api_key="sk-not-a-key", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError) as err:
            stranger.models.list()
    assert err.value.status_code == 401
    raw = httpx.post(
        f"{stack['url']}/v1/chat/completions", content=b"{nope", headers={"authorization": f"Bearer {API_KEY}"}
    )
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    assert httpx.get(f"{stack['url']}/healthz").json() == {"status": "ok"}


def test_32_concurrent_streams_all_complete_correctly(stack):
    async def run():
        async with openai.AsyncOpenAI(
            base_url=stack["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=30
        ) as aclient:

            async def one(seed: int) -> tuple[str, str]:
                stream = await aclient.chat.completions.create(
                    model=CHAT, messages=USER, seed=seed, max_tokens=12, stream=True, extra_body={"ignore_eos": True}
                )
                text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
                whole = await aclient.chat.completions.create(
                    model=CHAT, messages=USER, seed=seed, max_tokens=12, extra_body={"ignore_eos": True}
                )
                return text, whole.choices[0].message.content

            return await asyncio.gather(*(one(seed) for seed in range(32)))

    results = asyncio.run(run())
    assert len(results) == 32
    assert all(streamed == whole and len(whole.split()) == 12 for streamed, whole in results)
    assert len({whole for _, whole in results}) > 16  # different seeds, different texts


def test_sigkill_of_a_worker_mid_stream_errors_fast_and_the_next_request_is_served(tmp_path):
    procs = Processes(tmp_path)
    try:
        worker_a, address_a = procs.worker("--model", CHAT, "--token-delay", "0.05", name="a")
        worker_b, address_b = procs.worker("--model", CHAT, "--token-delay", "0.05", name="b")
        url = procs.gateway({CHAT: [address_a, address_b]})
        with openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=30) as client:
            stream = client.chat.completions.create(
                model=CHAT, messages=USER, max_tokens=200, stream=True, extra_body={"ignore_eos": True}
            )
            received = [next(stream), next(stream), next(stream)]
            assert received[-1].choices[0].delta.content
            serving, other = (worker_a, worker_b) if load_stats(address_a).num_running else (worker_b, worker_a)
            serving.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises(openai.APIError) as err:
                for _ in stream:
                    pass
            assert time.monotonic() - killed < 5
            assert "lost" in str(err.value.message)
            after = client.chat.completions.create(model=CHAT, messages=USER, max_tokens=3)
            assert after.choices[0].finish_reason == "length"
            assert other.poll() is None
    finally:
        procs.stop_all()
