"""OpenAI request bodies (chat and completions) <-> engine prompts, params and response bodies,
for the batch runner. The gateway has its own, richer translation at the HTTP edge."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

from worker.errors import InvalidRequestError
from worker.outputs import RequestOutput
from worker.sampling_params import SamplingParams
from worker.structured.spec import GrammarSpec
from worker.tokenizer import PromptInput

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequestError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise InvalidRequestError("message content must be a string or a list of text parts")


def prompt_from_body(url: str, body: dict) -> PromptInput:
    if url == CHAT_URL:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("'messages' must be a non-empty list")
        out = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise InvalidRequestError("each message needs a 'role'")
            out.append({"role": m["role"], "content": _content_text(m.get("content"))})
        return {"messages": out}
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return {"prompt_token_ids": prompt}
    raise InvalidRequestError("'prompt' must be a string or a list of token ids (one prompt per batch line)")


def structured_from_body(body: dict) -> GrammarSpec | None:
    """The grammar of a line's ``response_format``; tool calls are the gateway's (it parses them), so a
    line that would use tools is refused rather than answered as if it had none."""
    if body.get("tools") and body.get("tool_choice", "auto") != "none":
        raise InvalidRequestError("tools are not available in a batch: send the request through the gateway")
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_object")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise InvalidRequestError("response_format json_schema needs a 'json_schema' object")
        return GrammarSpec("json_schema", json.dumps(spec.get("schema", {})))
    raise InvalidRequestError("response_format must be {'type': 'text' | 'json_object' | 'json_schema', ...}")


def params_from_body(url: str, body: dict) -> SamplingParams:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if url == COMPLETIONS_URL and max_tokens is None:
        max_tokens = 16  # OpenAI's default for completions
    logprobs = None
    if url == CHAT_URL and body.get("logprobs"):
        logprobs = int(body.get("top_logprobs") or 0)
    elif url == COMPLETIONS_URL and body.get("logprobs") is not None:
        logprobs = int(body["logprobs"])
    try:
        return SamplingParams(
            n=body.get("n", 1), temperature=body.get("temperature", 1.0), top_p=body.get("top_p", 1.0),
            top_k=body.get("top_k", 0), min_p=body.get("min_p", 0.0),
            presence_penalty=body.get("presence_penalty", 0.0), frequency_penalty=body.get("frequency_penalty", 0.0),
            repetition_penalty=body.get("repetition_penalty", 1.0), seed=body.get("seed"), max_tokens=max_tokens,
            min_tokens=body.get("min_tokens", 0), stop=body.get("stop"), ignore_eos=body.get("ignore_eos", False),
            logprobs=logprobs, structured=structured_from_body(body),
        )
    except TypeError as exc:
        raise InvalidRequestError(f"invalid parameter: {exc}") from exc


def _chat_logprobs(c) -> dict | None:
    if c.logprobs is None:
        return None
    return {"content": [
        {"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.token.encode()),
         "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode())} for t in lp.top]}
        for lp in c.logprobs
    ]}


def response_body(url: str, model: str, out: RequestOutput) -> dict:
    usage = {"prompt_tokens": len(out.prompt_token_ids), "completion_tokens": out.num_generated_tokens,
             "total_tokens": len(out.prompt_token_ids) + out.num_generated_tokens}
    created = int(time.time())
    if url == CHAT_URL:
        choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                    "logprobs": _chat_logprobs(c), "finish_reason": c.finish_reason} for c in out.outputs]
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created,
                "model": model, "choices": choices, "usage": usage}
    choices = []
    for c in out.outputs:
        lp = None
        if c.logprobs is not None:
            lp = {"tokens": [x.token for x in c.logprobs], "token_logprobs": [x.logprob for x in c.logprobs],
                  "top_logprobs": [{t.token: t.logprob for t in x.top} for x in c.logprobs], "text_offset": []}
            offset = 0
            for x in c.logprobs:
                lp["text_offset"].append(offset)
                offset += len(x.token)
        choices.append({"index": c.index, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": usage}
