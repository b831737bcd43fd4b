"""Per-request sampling parameters, mirroring vLLM's SamplingParams (plain Python, validated)."""
from __future__ import annotations

from dataclasses import dataclass, field

from worker.errors import InvalidRequestError
from worker.structured.spec import GrammarSpec

MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0  # OpenAI's bound
MAX_LOGIT_BIAS_ENTRIES = 300  # OpenAI's limit


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = 16  # None: up to the context length
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; k: sampled token plus k alternatives
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    detokenize: bool = True
    structured: GrammarSpec | None = None  # constrained decoding (worker.structured)
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit
    prompt_logprobs: int | None = None  # None: none; k: each prompt token's logprob plus k alternatives
    # filled by the engine: the model's EOS ids and the stop ids that end generation
    _eos_token_ids: frozenset[int] = field(default_factory=frozenset, repr=False)
    # filled by the engine: the compiled grammar's matcher prototype (deep-copied per choice)
    _grammar: object | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.top_k == -1:
            self.top_k = 0
        self.validate()

    def validate(self) -> None:
        def bad(msg: str) -> InvalidRequestError:
            return InvalidRequestError(msg)

        if not isinstance(self.n, int) or self.n < 1:
            raise bad(f"n must be an integer >= 1, got {self.n!r}")
        if self.n > 128:
            raise bad(f"n must be <= 128, got {self.n}")
        if not 0.0 <= self.temperature <= 100.0:
            raise bad(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad(f"top_k must be -1, 0 (off) or a positive integer, got {self.top_k!r}")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad(f"min_p must be in [0, 1], got {self.min_p}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise bad(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise bad(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}")
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise bad(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise bad(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise bad(f"min_tokens must be an integer >= 0, got {self.min_tokens!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad(f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise bad(f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= MAX_LOGPROBS:
            raise bad(f"prompt_logprobs must be in [0, {MAX_LOGPROBS}], got {self.prompt_logprobs}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise bad(f"seed must be an integer, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop strings must be non-empty strings")
        if len(self.stop) > 16:
            raise bad("at most 16 stop strings are allowed")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids must be non-negative integers")
        if self.logit_bias:
            if len(self.logit_bias) > MAX_LOGIT_BIAS_ENTRIES:
                raise bad(f"logit_bias may hold at most {MAX_LOGIT_BIAS_ENTRIES} tokens")
            for t, b in self.logit_bias.items():
                if not isinstance(t, int) or t < 0:
                    raise bad(f"logit_bias keys must be token ids, got {t!r}")
                if not -MAX_LOGIT_BIAS <= b <= MAX_LOGIT_BIAS:
                    raise bad(f"logit_bias values must be in [-100, 100], got {b} for token {t}")
        if self.structured is not None and self.min_tokens:
            # the grammar may allow only the end token before min_tokens are out: the two cannot both hold
            raise bad("min_tokens cannot be combined with structured output")

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5 or self.top_k == 1

    @property
    def max_stop_len(self) -> int:
        return max((len(s) for s in self.stop), default=0)

    def with_eos(self, eos_token_ids: frozenset[int]) -> "SamplingParams":
        self._eos_token_ids = eos_token_ids
        return self
