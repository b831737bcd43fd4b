"""OpenAI request fields -> the worker's SamplingParams."""

from __future__ import annotations

from gateway.protocol.common import SamplingRequest
from gateway.serving.constraints import logit_bias
from proto.ward.worker.v1 import worker_pb2 as pb


def sampling_params(
    request: SamplingRequest, *, logprobs: int | None, structured: pb.StructuredOutput | None = None
) -> pb.SamplingParams:
    """The worker's sampling parameters for ``request`` (unset fields stay unset: the engine's defaults)."""
    fields = dict(
        structured=structured,
        logit_bias=logit_bias(request) or None,
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
        stop=request.stop_list() or None,
        stop_token_ids=request.stop_token_ids or None,
        ignore_eos=request.ignore_eos,
        logprobs=logprobs,
        include_stop_str_in_output=request.include_stop_str_in_output,
        skip_special_tokens=request.skip_special_tokens,
    )
    # Only the fields set: protobuf's constructor spends more on a None or an empty map or list
    # (a map is filled through a Python-level update) than the filter does (7 -> 4 us a request).
    return pb.SamplingParams(**{name: value for name, value in fields.items() if value is not None})
