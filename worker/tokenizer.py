"""The model's tokenizer: prompts and chat conversations to token ids, chat template included."""
from __future__ import annotations

import os
from typing import Any, Union

from worker.errors import InvalidRequestError, ModelLoadError

# A prompt: text, {"prompt": text}, {"prompt_token_ids": [...]}, or {"messages": [...]} (chat)
PromptInput = Union[str, dict[str, Any]]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


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

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.fast.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.fast.decode(ids, skip_special_tokens=skip_special_tokens)

    def render_chat(
        self, messages: list[dict], add_generation_prompt: bool = True, continue_final_message: bool = False
    ) -> str:
        if not self.has_chat_template:
            raise InvalidRequestError("this model has no chat template; use the completions API")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("messages must be a non-empty list")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content", ""), str):
                raise InvalidRequestError("each message needs a string role and string content")
        try:
            return self.hf.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message,
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
                )
                # the template already placed any special tokens the model expects
                return text, self.encode(text, add_special_tokens=False)
            if isinstance(prompt.get("prompt"), str):
                return prompt["prompt"], self.encode(prompt["prompt"])
        raise InvalidRequestError(
            "a prompt must be a string, {'prompt': str}, {'prompt_token_ids': [...]} or {'messages': [...]}"
        )
