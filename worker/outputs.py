"""What the engine hands back: vLLM-shaped request outputs (plain Python)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TopLogprob:
    token_id: int
    token: str
    logprob: float
    token_bytes: bytes = b""  # what the token stands for (part of a character's bytes: token is U+FFFD)


@dataclass
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: list[TopLogprob] = field(default_factory=list)
    token_bytes: bytes = b""  # what the token stands for (part of a character's bytes: token is U+FFFD)


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    time_to_first_token: float | None = None
    inter_token_latencies: list[float] = field(default_factory=list)
    num_preemptions: int = 0


@dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # stop, length, abort
    stop_reason: str | int | None = None  # the stop string or stop token that matched
    logprobs: list[TokenLogprob] | None = None
    cumulative_logprob: float | None = None
    # what changed in the last step (for streaming)
    text_delta: str = ""
    token_ids_delta: list[int] = field(default_factory=list)
    logprobs_delta: list[TokenLogprob] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = False
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None
    # when asked: one per prompt token (the first has no logprob: NaN), from the first output with
    # tokens on; ``prompt_logprobs_delta`` is set in that first output only (what a stream sends)
    prompt_logprobs: list[TokenLogprob] | None = None
    prompt_logprobs_delta: list[TokenLogprob] | None = None

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)
