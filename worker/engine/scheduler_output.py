"""Plain data passed between the scheduler and the model runner (no torch on either side of it)."""
from __future__ import annotations

from dataclasses import dataclass, field

from worker.sampling_params import SamplingParams


@dataclass
class NewRequestData:
    """A request the runner has no state for: first scheduling, or resumed after preemption."""

    req_id: str
    token_ids: list[int]  # prompt + tokens generated so far
    num_prompt_tokens: int
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int


@dataclass
class CachedRequestData:
    """A request the runner already holds: only what changed."""

    req_id: str
    new_block_ids: list[int]
    num_computed_tokens: int


@dataclass
class SchedulerOutput:
    new_reqs: list[NewRequestData]
    cached_reqs: list[CachedRequestData]
    num_scheduled_tokens: dict[str, int]
    total_num_scheduled_tokens: int
    # requests the runner must forget before this step: finished, aborted or preempted
    freed_req_ids: set[str] = field(default_factory=set)

    @property
    def is_empty(self) -> bool:
        return self.total_num_scheduled_tokens == 0


@dataclass
class SampledLogprobs:
    """Per sampled token: its logprob and the top-k alternatives (ids and logprobs, best first)."""

    token_logprob: float
    top_ids: list[int]
    top_logprobs: list[float]


@dataclass
class ModelRunnerOutput:
    sampled_token_ids: dict[str, list[int]]  # only requests that reached the end of their tokens
    logprobs: dict[str, list[SampledLogprobs]] = field(default_factory=dict)
    grammar_finished: set[str] = field(default_factory=set)  # their grammar allows nothing more: stop
    # prompt logprobs computed this step (prefill chunks), for the prompt tokens 1.. in order
    prompt_logprobs: dict[str, list[SampledLogprobs]] = field(default_factory=dict)


@dataclass
class EngineCoreOutput:
    req_id: str
    new_token_ids: list[int]
    new_logprobs: list[SampledLogprobs] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    prompt_logprobs: list[SampledLogprobs] | None = None  # with the first token, when asked

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
