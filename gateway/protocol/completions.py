"""POST /v1/completions request body."""

from __future__ import annotations

from typing import Any

from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator

from gateway.protocol.common import LogitBias, SamplingRequest, TextOrTokens, reject_if_set
from gateway.protocol.structured import JsonObjectFormat, JsonSchemaFormat, ResponseFormat, check_constrainable

MAX_PROMPTS = 256
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions


class CompletionRequest(SamplingRequest):
    # a string, several strings, one tokenized prompt, or several tokenized prompts
    prompt: TextOrTokens
    max_tokens: StrictInt = Field(DEFAULT_MAX_TOKENS, ge=1, le=2**31 - 1)
    logprobs: StrictInt | None = Field(None, ge=0, le=20)
    echo: StrictBool = False  # the prompt before each choice's text (and its tokens' logprobs, when asked)
    response_format: ResponseFormat | None = None  # Ward's extension (vLLM's too): JSON output for completions
    logit_bias: LogitBias | None = None
    # candidates generated per prompt, of which the n with the highest total logprob are returned
    best_of: StrictInt | None = Field(None, ge=1, le=128)

    @model_validator(mode="after")
    def _best_of_consistent(self) -> CompletionRequest:
        if self.best_of is not None:
            if self.best_of < self.n:
                raise ValueError("best_of must be greater than or equal to n")
            if self.best_of > self.n and self.stream:
                raise ValueError("best_of cannot be used with stream (candidates are ranked once they are complete)")
        if isinstance(self.response_format, (JsonObjectFormat, JsonSchemaFormat)):
            check_constrainable(self.min_tokens)
        return self

    @property
    def candidates(self) -> int:
        """Choices the worker generates per prompt (best_of, else n)."""
        return max(self.best_of or 0, self.n)

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _null_means_the_default(cls, value: Any) -> Any:
        # OpenAI reads an explicit null as "not given", i.e. 16, not as "up to the context length".
        return DEFAULT_MAX_TOKENS if value is None else value

    @model_validator(mode="before")
    @classmethod
    def _unsupported_features(cls, data: Any) -> Any:
        if isinstance(data, dict):
            reject_if_set(data, "suffix", "suffixes (insertion)")
        return data

    @field_validator("prompt")
    @classmethod
    def _prompts_present(cls, prompt):
        if isinstance(prompt, list):
            if not prompt:
                raise ValueError("prompt must not be empty")
            if isinstance(prompt[0], list) and any(not p for p in prompt):
                raise ValueError("a tokenized prompt must not be empty")
            if isinstance(prompt[0], (str, list)) and len(prompt) > MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        """The prompts one by one: strings or token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [p]  # one tokenized prompt
        return list(p)
