"""The benchmarks' instant worker: its first token waits --first-token-delay, after the prompt count."""

from __future__ import annotations

import asyncio
import time

from proto.ward.worker.v1 import worker_pb2 as pb
from ward.benchmarks.gateway.instant_worker import InstantWorkerServicer


async def _messages(servicer: InstantWorkerServicer, request: pb.GenerateRequest) -> list[tuple[float, pb.GenerateResponse]]:
    start = time.perf_counter()
    return [(time.perf_counter() - start, m) async for m in servicer.Generate(request, None)]


def test_the_first_token_comes_after_the_delay_and_the_count_before_it():
    request = pb.GenerateRequest(request_id="r", model="m", prompt=pb.Prompt(text="one two three"),
                                 params=pb.SamplingParams(max_tokens=2), report_prompt_tokens=True)
    timed = asyncio.run(_messages(InstantWorkerServicer("m", token_delay_s=0.001, first_token_delay_s=0.05), request))
    count_at, count = timed[0]
    assert count.prompt_tokens == 3 and not count.choices and count_at < 0.04
    first_token_at = next(at for at, m in timed if m.choices)
    assert first_token_at >= 0.05
    assert [m.choices[0].finish_reason for _, m in timed if m.choices] == ["", "length"]
    assert timed[-1][1].usage.completion_tokens == 2 and timed[-1][1].choices  # the last token carries the usage


def test_without_a_delay_the_answer_is_immediate():
    request = pb.GenerateRequest(request_id="r", model="m", prompt=pb.Prompt(text="one two"))
    timed = asyncio.run(_messages(InstantWorkerServicer("m"), request))
    assert timed[0][1].choices[0].text == "ok" and timed[0][0] < 0.04
    # one message, as the real worker ends a request: the last token, its finish reason and the usage
    assert len(timed) == 1 and timed[0][1].choices[0].finish_reason == "stop"
    assert timed[0][1].usage.completion_tokens == 1
