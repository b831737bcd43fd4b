"""OpenAI request fields -> the worker's SamplingParams."""

from __future__ import annotations

from gateway.protocol.common import SamplingRequest
from gateway.serving.constraints import logit_bias
from proto.ward.worker.v1 import worker_pb2 as pb


def sampling_params(
    request: SamplingRequest, *, logprobs: int | None, structured: pb.StructuredOutput | None = None
) -> pb.SamplingParams:
    """The worker's sampling parameters for ``request`` (unset fields stay unset: the engine's defaults)."""
    return pb.SamplingParams(
        structured=structured,
        logit_bias=logit_bias(request),
        n=request.n,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        min_p=request.min_p,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.repetition_penalty,
        seed=request.seed,
        max_tokens=request.completion_budget(),
        min_tokens=request.min_tokens,
        stop=request.stop_list(),
        stop_token_ids=request.stop_token_ids,
        ignore_eos=request.ignore_eos,
        logprobs=logprobs,
        include_stop_str_in_output=request.include_stop_str_in_output,
        skip_special_tokens=request.skip_special_tokens,
    )
