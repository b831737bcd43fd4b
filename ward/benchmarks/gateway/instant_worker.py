"""A gRPC worker that answers at once, so a benchmark measures the gateway and nothing behind it.

Every Generate answers (after the prompt count, when asked for) in one message: one token (``ok``,
finish reason ``stop``) with the usage, as the real worker ends a request (its last step's tokens,
finish reasons and usage together). Tokenize counts whitespace-separated words (chat messages: their
words plus one per message and one for the generation prompt). With ``--token-delay S`` it streams
slowly instead: ``max_tokens`` tokens (16 when unset), one every S seconds, the last with finish
reason ``length`` and the usage (for soak runs that hold many streams open at once). With
``--first-token-delay S`` the first token (after the prompt count, when asked for) comes S seconds
after the call, as a prefill would make it. It implements the ``ward.worker.v1`` contract only as far
as the gateway uses it for chat and completions. Run it as
``python -m ward.benchmarks.gateway.instant_worker --model NAME``; it prints ``PORT <n>`` once
serving and stops on SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from proto.ward.worker.v1 import worker_pb2 as pb
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc
from worker.server.multiplex import serve_multiplex

MAX_MODEL_LEN = 4096


def prompt_token_count(prompt: pb.Prompt) -> int:
    kind = prompt.WhichOneof("kind")
    if kind == "text":
        return len(prompt.text.split())
    if kind == "token_ids":
        return len(prompt.token_ids.ids)
    if kind == "chat":
        words = sum(1 + len(m.content.split()) for m in prompt.chat.messages)
        return words + (1 if prompt.chat.add_generation_prompt else 0)
    return 0


class InstantWorkerServicer(pb_grpc.WorkerServicer):
    def __init__(self, model: str, token_delay_s: float = 0.0, first_token_delay_s: float = 0.0) -> None:
        self.model = model
        self.token_delay_s = token_delay_s
        self.first_token_delay_s = first_token_delay_s

    async def Generate(self, request: pb.GenerateRequest, context):  # noqa: N802 - gRPC method names
        prompt = prompt_token_count(request.prompt)
        choices = request.params.n or 1
        if request.report_prompt_tokens:
            yield pb.GenerateResponse(prompt_tokens=prompt)
        if self.first_token_delay_s > 0:
            await asyncio.sleep(self.first_token_delay_s)
        if self.token_delay_s > 0:
            async for response in self._slow_stream(request, prompt, choices):
                yield response
            return
        # One message, as the real worker sends a request's last step: its tokens, finish reasons and usage.
        yield pb.GenerateResponse(
            prompt_tokens=prompt,
            choices=[pb.ChoiceDelta(index=i, token_ids=[1], text="ok", finish_reason="stop", stop_token_id=-1)
                     for i in range(choices)],
            usage=pb.Usage(prompt_tokens=prompt, completion_tokens=choices),
        )

    async def Multiplex(self, request_iterator, context):  # noqa: N802
        async for message in serve_multiplex(self.Generate, request_iterator, context):
            yield message

    async def _slow_stream(self, request: pb.GenerateRequest, prompt: int, choices: int):
        tokens = request.params.max_tokens if request.params.HasField("max_tokens") else 16
        for step in range(1, tokens + 1):
            last = step == tokens
            response = pb.GenerateResponse(
                prompt_tokens=prompt,
                choices=[pb.ChoiceDelta(index=i, token_ids=[1], text="ok ", finish_reason="length" if last else "",
                                        stop_token_id=-1) for i in range(choices)],
            )
            if last:
                response.usage.CopyFrom(pb.Usage(prompt_tokens=prompt, completion_tokens=tokens * choices))
            yield response
            if not last:
                await asyncio.sleep(self.token_delay_s)

    async def Tokenize(self, request: pb.TokenizeRequest, context):  # noqa: N802
        return pb.TokenizeResponse(count=prompt_token_count(request.prompt), max_model_len=MAX_MODEL_LEN)

    async def ModelInfo(self, request, context):  # noqa: N802
        return pb.ModelInfoResponse(
            served_model_name=self.model, max_model_len=MAX_MODEL_LEN, has_chat_template=True, task="generate",
            vocab_size=32000, worker_id="instant-0", contract_version="ward.worker.v1",
        )

    async def Health(self, request, context):  # noqa: N802
        return pb.HealthResponse(live=True, ready=True, detail="ready")

    async def LoadStats(self, request, context):  # noqa: N802
        return pb.LoadStatsResponse()


async def serve(model: str, port: int = 0, token_delay_s: float = 0.0, first_token_delay_s: float = 0.0) -> None:
    server = grpc.aio.server()
    pb_grpc.add_WorkerServicer_to_server(InstantWorkerServicer(model, token_delay_s, first_token_delay_s), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ward.benchmarks.gateway.instant_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token-delay", type=float, default=0.0, metavar="S",
                        help="stream max_tokens tokens, one every S seconds (default 0: one token at once)")
    parser.add_argument("--first-token-delay", type=float, default=0.0, metavar="S",
                        help="wait S seconds before the first token, as a prefill would (default 0)")
    args = parser.parse_args()
    asyncio.run(serve(args.model, args.port, args.token_delay, args.first_token_delay))


if __name__ == "__main__":
    main()
