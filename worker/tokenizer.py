"""The model's tokenizer: prompts and chat conversations to token ids, chat template included."""
from __future__ import annotations

import os
from typing import Any, Union

from worker.chat_tools import inline_tools, renders_tools, tool_call_format
from worker.errors import InvalidRequestError, ModelLoadError

# A prompt: text, {"prompt": text}, {"prompt_token_ids": [...]}, or {"messages": [...]} (chat)
PromptInput = Union[str, dict[str, Any]]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")

# Prompt bytes per token above which a prompt can never fit: the longest vocabulary entry's UTF-8
# bytes (a token stands for at most that much text), times this slack for normalizers.
BYTES_PER_TOKEN_SLACK = 2
GIL_FREE_ENCODE_CHARS = 16_384  # longer texts are encoded without holding the GIL
CHAT_OVERHEAD_TOKENS = 64  # upper bound of what a chat template adds around the messages
MESSAGE_OVERHEAD_TOKENS = 16  # ... and around each message


def prompt_text_bytes(prompt: PromptInput) -> int:
    """The UTF-8 bytes of a prompt's text (every message's role, name and content for a chat)."""
    if isinstance(prompt, str):
        return len(prompt.encode("utf-8", "surrogatepass"))
    if isinstance(prompt, dict):
        if "messages" in prompt and isinstance(prompt["messages"], list):
            return sum(len(str(m.get(k, "")).encode("utf-8", "surrogatepass"))
                       for m in prompt["messages"] if isinstance(m, dict) for k in ("role", "name", "content"))
        if isinstance(prompt.get("prompt"), str):
            return len(prompt["prompt"].encode("utf-8", "surrogatepass"))
    return 0


def prompt_token_bound(prompt: PromptInput) -> int:
    """An upper bound of the prompt's token count, known without tokenizing: a token covers at least one
    byte of text, plus what a chat template or special tokens may add."""
    if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
        return len(prompt["prompt_token_ids"])
    extra = 8
    if isinstance(prompt, dict) and isinstance(prompt.get("messages"), list):
        extra = CHAT_OVERHEAD_TOKENS + MESSAGE_OVERHEAD_TOKENS * len(prompt["messages"])
    return prompt_text_bytes(prompt) + extra


class WardTokenizer:
    def __init__(self, hf_tokenizer) -> None:
        self.hf = hf_tokenizer
        self.fast = getattr(hf_tokenizer, "backend_tokenizer", None)  # tokenizers.Tokenizer
        if self.fast is None:
            raise ModelLoadError("only fast (tokenizers-backed) tokenizers are supported")

    @classmethod
    def load(cls, model_dir: str) -> "WardTokenizer | None":
        if not any(os.path.exists(os.path.join(model_dir, f)) for f in _TOKENIZER_FILES):
            return None
        from transformers import AutoTokenizer

        try:
            return cls(AutoTokenizer.from_pretrained(model_dir, local_files_only=True))
        except Exception as exc:
            raise ModelLoadError(f"{model_dir}: cannot load the tokenizer: {exc}") from exc

    def max_token_bytes(self) -> int:
        """The UTF-8 bytes of the longest vocabulary entry (byte-level and byte-fallback spellings are
        longer than the text they stand for, so this bounds the text one token covers)."""
        return max((len(t.encode("utf-8", "surrogatepass")) for t in self.fast.get_vocab(with_added_tokens=True)),
                   default=1)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if len(text) > GIL_FREE_ENCODE_CHARS:
            # encode_batch lets go of the GIL while it works, encode does not: a long text would stall
            # every other thread of the process (the gRPC loop answering health checks among them)
            return self.fast.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
        return self.fast.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.fast.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def tool_call_format(self) -> str:
        return tool_call_format(getattr(self.hf, "chat_template", None))

    def render_chat(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict] | None = None,
    ) -> str:
        if not self.has_chat_template:
            raise InvalidRequestError("this model has no chat template; use the completions API")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("messages must be a non-empty list")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content", ""), str):
                raise InvalidRequestError("each message needs a string role and string content")
        if "developer" not in self.hf.chat_template:
            # OpenAI's developer role is the system role of models that know no developer role: a
            # template would otherwise refuse it or keep its default system prompt beside it
            messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
        extra = {}
        if renders_tools(self.hf.chat_template):
            if tools:
                extra["tools"] = tools
        elif tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
            messages = inline_tools(messages, tools)
        try:
            return self.hf.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message,
                **extra,
            )
        except Exception as exc:  # template errors (jinja raise_exception, bad roles) are the caller's
            raise InvalidRequestError(f"the chat template rejected these messages: {exc}") from exc

    def encode_prompt(self, prompt: PromptInput) -> tuple[str | None, list[int]]:
        """(text, token ids) of a prompt in any accepted form."""
        if isinstance(prompt, str):
            return prompt, self.encode(prompt)
        if isinstance(prompt, dict):
            if "messages" in prompt:
                text = self.render_chat(
                    prompt["messages"],
                    prompt.get("add_generation_prompt", True),
                    prompt.get("continue_final_message", False),
                    prompt.get("tools"),
                )
                # the template already placed any special tokens the model expects
                return text, self.encode(text, add_special_tokens=False)
            if isinstance(prompt.get("prompt"), str):
                return prompt["prompt"], self.encode(prompt["prompt"])
        raise InvalidRequestError(
            "a prompt must be a string, {'prompt': str}, {'prompt_token_ids': [...]} or {'messages': [...]}"
        )
