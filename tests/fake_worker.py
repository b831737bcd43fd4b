"""A fake Ward worker for gateway tests: the real gRPC service, with deterministic fake generation.

Tokens are whitespace-separated words; a chat prompt is rendered as ``<|role|> content`` pieces.
Generated tokens are words from a small vocabulary (each followed by a space), chosen by a
generator seeded from ``seed`` (or from the prompt when temperature is 0), so identical requests
give identical text. A choice ends naturally ("stop") after ``natural_length`` tokens unless
``ignore_eos``, at ``max_tokens`` ("length"), or at a stop string (held back while it may be
forming, like the real engine does).

Use in-process (``async with FakeWorker(...) as worker``) or as a subprocess
(``python tests/fake_worker.py --model NAME``; prints ``PORT <n>`` once serving, stops on SIGTERM).
The worker records what it saw: ``generate_requests``, ``cancelled``, ``completed``, ``active``,
``multiplex_calls``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
import zlib
from dataclasses import dataclass

import grpc

from proto.ward.worker.v1 import worker_pb2 as pb
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc
from worker.server.multiplex import serve_multiplex

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]
WORD_TOKEN_BASE = 1000
ERROR_CODE_KEY = "ward-error-code"


def prompt_words(prompt: pb.Prompt) -> list[str]:
    """The fake tokenization of a prompt (chat template applied)."""
    kind = prompt.WhichOneof("kind")
    if kind == "text":
        return prompt.text.split()
    if kind == "token_ids":
        return [str(i) for i in prompt.token_ids.ids]
    if kind == "chat":
        pieces = []
        for m in prompt.chat.messages:
            pieces.append(f"<|{m.role}|>")
            pieces.extend(m.content.split())
        if prompt.chat.add_generation_prompt:
            pieces.append("<|assistant|>")
        return pieces
    return []


def token_id(word: str) -> int:
    return WORDS.index(word) + WORD_TOKEN_BASE if word in WORDS else 100 + zlib.crc32(word.encode()) % 30000


def fake_embedding(text: str, dim: int, dimensions: int) -> list[float]:
    values = [((zlib.crc32(f"{text}|{i}".encode()) % 2001) - 1000) / 1000.0 for i in range(dim)]
    if dimensions:
        values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


@dataclass
class FakeConfig:
    model: str = "fake-chat"
    task: str = "generate"  # or "embed"
    max_model_len: int = 256
    natural_length: int = 6  # tokens before a choice stops by itself
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    embedding_dim: int = 8
    worker_id: str = "fake-0"
    max_prompt_bytes: int = 0  # reported in ModelInfo (0: no bound)
    log_requests: bool = False  # print each Generate's tenancy fields (for tests of a worker process)
    multiplex: bool = True  # serve the Multiplex RPC (False: an older worker, Generate calls only)


@dataclass
class _Choice:
    rng: random.Random
    text: str = ""  # everything generated (before stop truncation)
    sent: int = 0  # characters of text already sent
    tokens: int = 0
    finish: str = ""
    stop_reason: str = ""
    end: int | None = None  # where the visible text ends once finished


class FakeWorkerServicer(pb_grpc.WorkerServicer):
    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.ready = True
        self.draining = False
        self.load_override: dict | None = None  # fields of LoadStatsResponse to report instead
        self.fail_generate: tuple[grpc.StatusCode, str, str | None] | None = None
        self.fail_embed: tuple[grpc.StatusCode, str, str | None] | None = None
        self.hang_health = False  # health polls never answer (a stuck worker)
        self.generate_requests: list[pb.GenerateRequest] = []
        self.embed_requests: list[pb.EmbedRequest] = []
        self.tokenize_requests: list[pb.TokenizeRequest] = []
        self.active: set[str] = set()
        self.cancelled: list[str] = []
        self.completed: list[str] = []
        self.health_polls = 0
        self.multiplex_calls = 0  # Multiplex calls opened (each carries many generations)

    async def _abort(self, context, failure: tuple[grpc.StatusCode, str, str | None]) -> None:
        status, message, code = failure
        trailers = [(ERROR_CODE_KEY, code)] if code else []
        if status is grpc.StatusCode.RESOURCE_EXHAUSTED:  # an admission refusal says when to retry
            trailers.append(("ward-retry-after-ms", "2500"))
        if trailers:
            context.set_trailing_metadata(tuple(trailers))
        await context.abort(status, message)

    # -- generation ------------------------------------------------------------------------------

    async def Multiplex(self, request_iterator, context):  # noqa: N802 - gRPC method name
        if not self.config.multiplex:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        self.multiplex_calls += 1
        async for message in serve_multiplex(self.Generate, request_iterator, context):
            yield message

    async def Generate(self, request: pb.GenerateRequest, context):  # noqa: N802 - gRPC method name
        self.generate_requests.append(request)
        cfg = self.config
        if cfg.log_requests:
            print(f"GENERATE team={request.team} team_priority={request.team_priority} "
                  f"team_weight={request.team_weight:g} priority={request.priority}", flush=True)
        if self.fail_generate is not None:
            await self._abort(context, self.fail_generate)
        if request.model != cfg.model:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} is not served here")
        if cfg.task != "generate":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this worker serves embeddings")
        words = prompt_words(request.prompt)
        prompt_len = len(words)
        params = request.params
        max_tokens = params.max_tokens if params.HasField("max_tokens") else max(cfg.max_model_len - prompt_len, 0)
        if prompt_len >= cfg.max_model_len or prompt_len + max_tokens > cfg.max_model_len:
            context.set_trailing_metadata(((ERROR_CODE_KEY, "context_length_exceeded"),))
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"This model's maximum context length is {cfg.max_model_len} tokens; the request has "
                f"{prompt_len} prompt tokens and asks for {max_tokens} more.",
            )
        n = params.n or 1
        greedy = params.HasField("temperature") and params.temperature == 0.0
        key = " ".join(words)
        choices = []
        for c in range(n):
            if params.HasField("seed"):
                rng = random.Random(f"{params.seed}:{c}")
            elif greedy:
                rng = random.Random(f"{key}:{c}")
            else:
                rng = random.Random()
            choices.append(_Choice(rng))
        stops = list(params.stop)
        holdback = max((len(s) for s in stops), default=1) - 1
        natural = max(cfg.natural_length, params.min_tokens)
        want_logprobs = params.HasField("logprobs")
        self.active.add(request.request_id)
        finished_ok = False
        try:
            if request.report_prompt_tokens:
                yield pb.GenerateResponse(prompt_tokens=prompt_len)
            if cfg.first_token_delay_s:
                await asyncio.sleep(cfg.first_token_delay_s)
            while any(not ch.finish for ch in choices):
                response = pb.GenerateResponse(prompt_tokens=prompt_len)
                for index, ch in enumerate(choices):
                    if ch.finish:
                        continue
                    response.choices.append(
                        self._step(index, ch, stops, holdback, natural, max_tokens, params, want_logprobs)
                    )
                yield response
                if cfg.token_delay_s:
                    await asyncio.sleep(cfg.token_delay_s)
            usage = pb.Usage(prompt_tokens=prompt_len, completion_tokens=sum(ch.tokens for ch in choices))
            yield pb.GenerateResponse(prompt_tokens=prompt_len, usage=usage)
            finished_ok = True
        finally:
            self.active.discard(request.request_id)
            (self.completed if finished_ok else self.cancelled).append(request.request_id)

    def _step(self, index, ch: _Choice, stops, holdback, natural, max_tokens, params, want_logprobs) -> pb.ChoiceDelta:
        word = WORDS[ch.rng.randrange(len(WORDS))]
        piece = word + " "
        ch.text += piece
        ch.tokens += 1
        delta = pb.ChoiceDelta(index=index, token_ids=[token_id(word)], stop_token_id=-1)
        if want_logprobs:
            top = [
                pb.TopLogprob(
                    token_id=token_id(w), token=w + " ", logprob=-0.1 - 0.5 * k, token_bytes=(w + " ").encode()
                )
                for k, w in enumerate([word] + [x for x in WORDS if x != word][: max(params.logprobs - 1, 0)])
            ][: params.logprobs]
            delta.logprobs.append(
                pb.TokenLogprob(token_id=token_id(word), token=piece, logprob=-0.1, token_bytes=piece.encode(), top=top)
            )
        for stop in stops:
            at = ch.text.find(stop)
            if at != -1:
                ch.finish, ch.stop_reason = "stop", stop
                ch.end = at + len(stop) if params.include_stop_str_in_output else at
                break
        else:
            if not params.ignore_eos and ch.tokens >= natural:
                ch.finish = "stop"
            elif ch.tokens >= max_tokens:
                ch.finish = "length"
        visible_end = ch.end if ch.end is not None else len(ch.text) if ch.finish else max(len(ch.text) - holdback, 0)
        if visible_end > ch.sent:
            delta.text = ch.text[ch.sent : visible_end]
            ch.sent = visible_end
        delta.finish_reason = ch.finish
        delta.stop_reason = ch.stop_reason
        return delta

    # -- the rest of the contract ----------------------------------------------------------------

    async def Embed(self, request: pb.EmbedRequest, context):  # noqa: N802
        self.embed_requests.append(request)
        cfg = self.config
        if self.fail_embed is not None:
            await self._abort(context, self.fail_embed)
        if cfg.task != "embed":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this worker does not serve embeddings")
        texts = list(request.texts) or [" ".join(str(i) for i in t.ids) for t in request.token_inputs]
        tokens = sum(len(t.split()) for t in request.texts) + sum(len(t.ids) for t in request.token_inputs)
        data = [pb.Embedding(values=fake_embedding(t, cfg.embedding_dim, request.dimensions)) for t in texts]
        return pb.EmbedResponse(data=data, prompt_tokens=tokens)

    async def Tokenize(self, request: pb.TokenizeRequest, context):  # noqa: N802
        self.tokenize_requests.append(request)
        words = prompt_words(request.prompt)
        ids = [token_id(w) for w in words] if request.return_token_ids else []
        return pb.TokenizeResponse(count=len(words), token_ids=ids, max_model_len=self.config.max_model_len)

    async def ModelInfo(self, request, context):  # noqa: N802
        cfg = self.config
        return pb.ModelInfoResponse(
            served_model_name=cfg.model,
            max_model_len=cfg.max_model_len,
            has_chat_template=True,
            task=cfg.task,
            vocab_size=WORD_TOKEN_BASE + len(WORDS),
            worker_id=cfg.worker_id,
            max_prompt_bytes=cfg.max_prompt_bytes,
            contract_version="ward.worker.v1",
            embedding_dim=cfg.embedding_dim if cfg.task == "embed" else 0,
        )

    async def Health(self, request, context):  # noqa: N802
        self.health_polls += 1
        if self.hang_health:
            await asyncio.sleep(3600)
        return pb.HealthResponse(live=True, ready=self.ready, detail="ready" if self.ready else "loading")

    async def LoadStats(self, request, context):  # noqa: N802
        active = len(self.active)
        stats = pb.LoadStatsResponse(
            num_running=active,
            num_waiting=0,
            kv_usage=min(1.0, 0.1 * active),
            kv_blocks_used=active,
            kv_blocks_total=10,
            draining=self.draining,
        )
        if self.load_override:
            for name, value in self.load_override.items():
                setattr(stats, name, value)
        return stats


class FakeWorker:
    """A fake worker serving on 127.0.0.1 (or another loopback ``host``; port 0: a free one) in the
    running event loop."""

    def __init__(
        self,
        config: FakeConfig | None = None,
        *,
        port: int = 0,
        credentials: grpc.ServerCredentials | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """``credentials``: serve TLS with them (e.g. ``grpc.ssl_server_credentials``); None: plaintext."""
        self.config = config or FakeConfig()
        self.servicer = FakeWorkerServicer(self.config)
        self.host = host
        self._port = port
        self._credentials = credentials
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> FakeWorker:
        self.server = grpc.aio.server()
        pb_grpc.add_WorkerServicer_to_server(self.servicer, self.server)
        where = f"{self.host}:{self._port}"
        if self._credentials is None:
            self.port = self.server.add_insecure_port(where)
        else:
            self.port = self.server.add_secure_port(where, self._credentials)
        self._port = self.port  # a restart comes back on the same address
        await self.server.start()
        return self

    async def stop(self, grace: float | None = None) -> None:
        """Stops serving; with no grace, in-flight calls are cut at once (like a crash)."""
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None

    async def __aenter__(self) -> FakeWorker:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()


# -- harness: a gateway in front of fake workers, for in-process tests ----------------------------

API_KEY = "sk-test-gateway-key"
TEAM = "team-test"


@dataclass
class GatewayHarness:
    app: object
    client: object  # httpx.AsyncClient on the app, authenticated
    settings: object

    @property
    def pool(self):
        return self.app.state.ward.pool


@contextlib.asynccontextmanager
async def running_gateway(models: dict[str, list[FakeWorker]], *, wait_ready: bool = True, **create_kwargs):
    """The gateway app (lifespan running) routing ``models`` to fake workers, with an httpx client.

    Routing polls fast (0.1 s) so health changes show within a fraction of a second.
    """
    import httpx

    from gateway.app import create_app
    from gateway.settings import GatewaySettings, RoutingSettings

    routing = create_kwargs.pop("routing", None) or RoutingSettings(
        poll_interval_s=0.1, poll_timeout_s=0.5, dead_after_s=1.0
    )
    settings = GatewaySettings(
        models={name: {"workers": [w.address for w in workers]} for name, workers in models.items()},
        api_keys={API_KEY: TEAM},
        routing=routing,
        **create_kwargs.pop("settings", {}),
    )
    app = create_app(settings, **create_kwargs)
    async with app.router.lifespan_context(app):
        if wait_ready:
            assert await app.state.ward.pool.wait_until_ready(5.0, every_worker=True), "fake workers never became ready"
        transport = httpx.ASGITransport(app=app)
        headers = {"authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway", headers=headers, timeout=10
        ) as client:
            yield GatewayHarness(app, client, settings)


@contextlib.asynccontextmanager
async def serving_http(app):
    """Serves ``app`` with uvicorn on a free 127.0.0.1 port in this event loop; yields the base URL."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def parse_sse(body: str) -> list:
    """The JSON payloads of an SSE body, with the literal string "[DONE]" for the terminator."""
    import json

    events = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


async def _serve(args: argparse.Namespace) -> None:
    config = FakeConfig(
        model=args.model,
        task=args.task,
        max_model_len=args.max_model_len,
        natural_length=args.natural_length,
        first_token_delay_s=args.first_token_delay,
        token_delay_s=args.token_delay,
        worker_id=args.worker_id,
        log_requests=args.log_requests,
    )
    worker = await FakeWorker(config, port=args.port).start()
    print(f"PORT {worker.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await worker.stop(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fake Ward worker for tests")
    parser.add_argument("--model", default="fake-chat")
    parser.add_argument("--task", default="generate", choices=["generate", "embed"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-model-len", type=int, default=256)
    parser.add_argument("--natural-length", type=int, default=6)
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--worker-id", default="fake-0")
    parser.add_argument("--log-requests", action="store_true", help="print each Generate's tenancy fields")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
