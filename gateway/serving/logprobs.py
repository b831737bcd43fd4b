"""Worker logprobs in OpenAI's two formats: chat (``content: [...]``) and legacy completions."""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterable
from typing import Any

from proto.ward.worker.v1 import worker_pb2 as pb


def _bytes(token: str, raw: bytes) -> list[int]:
    return list(raw) if raw else list(token.encode("utf-8", "surrogatepass"))


def chat_logprobs(logprobs: Iterable[pb.TokenLogprob]) -> dict[str, Any]:
    """``{"content": [{token, logprob, bytes, top_logprobs: [...]}, ...], "refusal": None}``."""
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": _bytes(lp.token, lp.token_bytes),
                "top_logprobs": [
                    {"token": t.token, "logprob": t.logprob, "bytes": _bytes(t.token, t.token_bytes)} for t in lp.top
                ],
            }
            for lp in logprobs
        ],
        "refusal": None,
    }


class CompletionLogprobs:
    """Builds the completions format (tokens, token_logprobs, top_logprobs, text_offset) of one choice,
    keeping the running text offset across stream chunks.

    A token's offset is where its contribution starts in the returned text, counted in characters of
    its bytes decoded as the text is: a token holding part of a multi-byte character (its text alone
    is U+FFFD) starts at that character, and the character counts once, when its last byte arrives.
    vLLM adds each token's text length to the last offset, so such tokens run past the text."""

    __slots__ = ("offset", "_text")

    def __init__(self) -> None:
        self.offset = 0
        self._text = codecs.getincrementaldecoder("utf-8")("replace")  # holds a partial character

    def format(self, logprobs: Iterable[pb.TokenLogprob]) -> dict[str, Any]:
        tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
        for lp in logprobs:
            tokens.append(lp.token)
            first = math.isnan(lp.logprob)  # an echoed prompt's first token: nothing before it
            token_logprobs.append(None if first else lp.logprob)
            top = None
            if not first:
                # OpenAI always returns the sampled token's logprob too: up to logprobs + 1 entries
                top = {t.token: t.logprob for t in lp.top}
                top.setdefault(lp.token, lp.logprob)
            top_logprobs.append(top)
            text_offset.append(self.offset)
            self.offset += len(self._text.decode(lp.token_bytes or lp.token.encode("utf-8", "surrogatepass")))
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": text_offset,
        }
