"""Prompts that can never fit the model's context, refused before any worker call.

A worker reports ``max_prompt_bytes`` in ModelInfo: a prompt whose text is longer than that cannot
fit in ``max_model_len`` tokens whatever it says, so a multi-megabyte body is answered 400 at once,
without a Tokenize call or a place in a worker's queue. Token-id prompts and embedding inputs are
checked by length and against the vocabulary (their count needs no Tokenize call either, so nothing
else would check them before the quota reserves for them).
"""
from __future__ import annotations

from collections.abc import Sequence

from gateway.http.errors import ContextLengthExceeded, InvalidRequest
from proto.ward.worker.v1 import worker_pb2 as pb


def prompt_bytes(prompt: pb.Prompt) -> int:
    kind = prompt.WhichOneof("kind")
    if kind == "text":
        return len(prompt.text.encode("utf-8", "surrogatepass"))
    if kind == "chat":
        return sum(len(m.role.encode()) + len(m.name.encode()) + len(m.content.encode("utf-8", "surrogatepass"))
                   for m in prompt.chat.messages)
    return 0


def check_token_ids(info: pb.ModelInfoResponse | None, prompts: Sequence[str | list[int]], *, param: str) -> None:
    """Raises InvalidRequest (400) for a tokenized prompt with an id beyond the model's vocabulary (ids
    are never negative: the request model refuses those). Checked on the request's own lists: a
    protobuf repeated field is several times slower to scan."""
    vocab = info.vocab_size if info is not None else 0
    for prompt in prompts:
        if vocab and isinstance(prompt, list) and prompt and max(prompt) >= vocab:
            bad = [t for t in prompt if t >= vocab][:5]
            raise InvalidRequest(f"token ids out of range [0, {vocab}): {bad}", param=param, code="invalid_value")


def check_prompt_sizes(info: pb.ModelInfoResponse | None, prompts: Sequence[pb.Prompt], *, param: str) -> None:
    """Raises ContextLengthExceeded (400) for a prompt that cannot fit, judged without tokenizing."""
    if info is None:
        return
    for prompt in prompts:
        if prompt.WhichOneof("kind") == "token_ids":
            count = len(prompt.token_ids.ids)
            if info.max_model_len and count > info.max_model_len:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {info.max_model_len} tokens. However, your prompt "
                    f"has {count} tokens. Please reduce the length of the prompt.", param=param)
            continue
        size = prompt_bytes(prompt)
        if info.max_prompt_bytes and size > info.max_prompt_bytes:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {info.max_model_len} tokens. However, your prompt is "
                f"{size} bytes long, more than any prompt of {info.max_model_len} tokens can be "
                f"({info.max_prompt_bytes} bytes). Please reduce the length of the prompt.", param=param)
