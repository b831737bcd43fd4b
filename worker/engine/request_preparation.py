"""Turning a prompt into a queued-ready request: the model's limits, its tokenizer, validation and
grammar compilation. It touches no engine state, so it runs on any thread, and in the serving
process when the engine core runs in a process of its own (``worker/server/engine_process.py``).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from worker.config import EngineConfig
from worker.errors import (
    InvalidRequestError,
    ModelConfigMismatch,
    PromptTooLongError,
    RequestTooLargeError,
    TokenIdsOutOfRangeError,
)
from worker.model.registry import resolve_model
from worker.model.spec import ModelSpec, load_spec
from worker.sampling_params import SamplingParams
from worker.structured.compiler import GrammarCompiler
from worker.tokenizer import BYTES_PER_TOKEN_SLACK, PromptInput, WardTokenizer, prompt_text_bytes


@dataclass
class PreparedRequest:
    """A tokenized, validated request, ready to be queued."""

    text: str | None
    token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # effective: capped by the context and the KV pool


class RequestPreparation:
    """The model's limits and tokenizer, and the checks every request passes before it is queued.
    ``kv_capacity_tokens`` (the longest request the KV pool can hold) is the engine's to give."""

    config: EngineConfig
    model_dir: str
    spec: ModelSpec
    max_model_len: int
    served_model_name: str
    tokenizer: WardTokenizer | None
    max_prompt_bytes: int
    eos_token_ids: frozenset[int]
    grammars: GrammarCompiler

    def _load_model_description(self, config: EngineConfig) -> None:
        self.config = config
        self.model_dir = resolve_model(config.model)
        self.spec = load_spec(self.model_dir)
        limit = self.spec.max_position_embeddings
        if config.max_model_len is not None and config.max_model_len > limit:
            raise ModelConfigMismatch(f"max_model_len {config.max_model_len} exceeds the model's context length {limit}")
        self.max_model_len = config.max_model_len or limit
        self.served_model_name = config.served_model_name or os.path.basename(self.model_dir.rstrip("/"))
        self.tokenizer = WardTokenizer.load(self.model_dir)
        # No prompt whose text is longer than this can fit the context: refused before tokenizing.
        self.max_prompt_bytes = (self.max_model_len * self.tokenizer.max_token_bytes() * BYTES_PER_TOKEN_SLACK
                                 if self.tokenizer else 0)
        self.eos_token_ids = frozenset(self.spec.eos_token_ids)
        self.grammars = GrammarCompiler(self.tokenizer.hf if self.tokenizer else None, self.spec.vocab_size,
                                        sorted(self.eos_token_ids))

    @property
    def kv_capacity_tokens(self) -> int:
        raise NotImplementedError

    def encode_prompt(self, prompt: PromptInput) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids = list(prompt["prompt_token_ids"])
            bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < self.spec.vocab_size]
            if bad:
                raise TokenIdsOutOfRangeError(f"token ids out of range [0, {self.spec.vocab_size}): {bad[:5]}")
            return prompt.get("prompt"), ids
        if self.tokenizer is None:
            raise InvalidRequestError("this model has no tokenizer: send prompt_token_ids")
        return self.tokenizer.encode_prompt(prompt)

    def check_prompt_size(self, prompt: PromptInput) -> None:
        """Raises PromptTooLongError for a prompt whose text alone is too long for the context (cheap: no
        tokenization), so oversized input is refused before any heavy work."""
        size = prompt_text_bytes(prompt)
        if self.max_prompt_bytes and size > self.max_prompt_bytes:
            raise PromptTooLongError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt is "
                f"{size} bytes long, more than any prompt of {self.max_model_len} tokens can be "
                f"({self.max_prompt_bytes} bytes). Please reduce the length of the prompt."
            )
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt and len(prompt["prompt_token_ids"]) >= self.max_model_len:
            self._check_lengths(len(prompt["prompt_token_ids"]), SamplingParams())

    def prepare_request(self, prompt: PromptInput, params: SamplingParams | None = None) -> PreparedRequest:
        """Tokenizes and validates a request without touching engine state (safe from any thread)."""
        self.check_prompt_size(prompt)
        params = dataclasses.replace(params or SamplingParams()).with_eos(self.eos_token_ids)
        if params.logit_bias and max(params.logit_bias) >= self.spec.vocab_size:
            raise InvalidRequestError(f"logit_bias names a token id beyond the vocabulary ({self.spec.vocab_size})")
        if params.structured is not None:
            params._grammar = self.grammars.compile(params.structured)  # cached by the spec's hash
        text, ids = self.encode_prompt(prompt)
        return PreparedRequest(text, ids, params, self._check_lengths(len(ids), params))

    def _check_lengths(self, prompt_len: int, params: SamplingParams) -> int:
        if prompt_len == 0:
            raise InvalidRequestError("the prompt is empty")
        room = self.max_model_len - prompt_len
        if room < 1 or (params.max_tokens is not None and params.max_tokens > room):
            asked = prompt_len + (params.max_tokens or 1)
            raise PromptTooLongError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{asked} tokens ({prompt_len} in the prompt, {asked - prompt_len} for the completion). "
                "Please reduce the length of the prompt or the completion."
            )
        capacity = self.kv_capacity_tokens
        if prompt_len + 1 > capacity or (params.max_tokens is not None and prompt_len + params.max_tokens > capacity):
            raise RequestTooLargeError(
                f"the request needs up to {prompt_len + (params.max_tokens or 1)} tokens of KV cache, but the whole "
                f"pool holds {capacity}; it could never run"
            )
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        return min(max_tokens, room, capacity - prompt_len)
