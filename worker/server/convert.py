"""Proto messages <-> engine objects (the only place that knows both)."""
from __future__ import annotations

import json

from proto.ward.worker.v1 import worker_pb2 as pb
from worker.errors import InvalidRequestError
from worker.outputs import RequestOutput, TokenLogprob
from worker.sampling_params import SamplingParams
from worker.structured.spec import GrammarSpec
from worker.tokenizer import PromptInput


def prompt_from_proto(prompt: pb.Prompt) -> PromptInput:
    kind = prompt.WhichOneof("kind")
    if kind == "text":
        return prompt.text
    if kind == "token_ids":
        return {"prompt_token_ids": list(prompt.token_ids.ids)}
    if kind == "chat":
        messages = []
        for m in prompt.chat.messages:
            msg: dict = {"role": m.role, "content": m.content}
            if m.name:
                msg["name"] = m.name
            if m.tool_call_id:
                msg["tool_call_id"] = m.tool_call_id
            if m.tool_calls:
                msg["tool_calls"] = [_tool_call(c) for c in m.tool_calls]
            messages.append(msg)
        chat = {
            "messages": messages,
            "add_generation_prompt": prompt.chat.add_generation_prompt,
            "continue_final_message": prompt.chat.continue_final_message,
        }
        if prompt.chat.tools_json:
            try:
                chat["tools"] = json.loads(prompt.chat.tools_json)
            except ValueError:
                raise InvalidRequestError("tools_json is not valid JSON") from None
        return chat
    raise InvalidRequestError("the request has no prompt")


def _tool_call(c: pb.ToolCall) -> dict:
    # transformers' templates read arguments as a mapping (Llama, Qwen) where OpenAI sends JSON text
    try:
        arguments = json.loads(c.arguments) if c.arguments else {}
    except ValueError:
        arguments = c.arguments
    return {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments}}


def _structured(p: pb.SamplingParams) -> GrammarSpec | None:
    if not p.HasField("structured"):
        return None
    kind = p.structured.WhichOneof("kind")
    if kind == "json_schema":
        return GrammarSpec("json_schema", p.structured.json_schema)
    if kind == "json_object":
        return GrammarSpec("json_object")
    if kind == "lark":
        return GrammarSpec("lark", p.structured.lark)
    return None


def params_from_proto(p: pb.SamplingParams) -> SamplingParams:
    def opt(name, default):
        return getattr(p, name) if p.HasField(name) else default

    return SamplingParams(
        n=p.n or 1,
        temperature=opt("temperature", 1.0),
        top_p=opt("top_p", 1.0),
        top_k=opt("top_k", 0),
        min_p=opt("min_p", 0.0),
        presence_penalty=opt("presence_penalty", 0.0),
        frequency_penalty=opt("frequency_penalty", 0.0),
        repetition_penalty=opt("repetition_penalty", 1.0),
        seed=opt("seed", None),
        max_tokens=opt("max_tokens", None),
        min_tokens=p.min_tokens,
        stop=list(p.stop),
        stop_token_ids=list(p.stop_token_ids),
        ignore_eos=p.ignore_eos,
        logprobs=opt("logprobs", None),
        include_stop_str_in_output=p.include_stop_str_in_output,
        skip_special_tokens=opt("skip_special_tokens", True),
        structured=_structured(p),
        logit_bias=dict(p.logit_bias) or None,
        prompt_logprobs=opt("prompt_logprobs", None),
    )


def _logprob(lp: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(
        token_id=lp.token_id,
        token=lp.token,
        logprob=lp.logprob,
        token_bytes=lp.token_bytes or lp.token.encode("utf-8", "surrogatepass"),
        top=[pb.TopLogprob(token_id=t.token_id, token=t.token, logprob=t.logprob,
                           token_bytes=t.token_bytes or t.token.encode("utf-8", "surrogatepass")) for t in lp.top],
    )


def response_from_output(out: RequestOutput) -> pb.GenerateResponse:
    """One stream message: the choices that changed in this step, usage when the request ends."""
    msg = pb.GenerateResponse(prompt_tokens=len(out.prompt_token_ids))
    if out.prompt_logprobs_delta is not None:  # once, in the first message with tokens
        msg.prompt_logprobs.extend(_logprob(lp) for lp in out.prompt_logprobs_delta)
    for c in out.outputs:
        if not (c.token_ids_delta or c.text_delta or (c.finished and out.finished)):
            continue
        delta = msg.choices.add(index=c.index, token_ids=c.token_ids_delta, text=c.text_delta)
        if c.logprobs_delta:
            delta.logprobs.extend(_logprob(lp) for lp in c.logprobs_delta)
        if c.finish_reason is not None:
            delta.finish_reason = c.finish_reason
            if isinstance(c.stop_reason, str):
                delta.stop_reason = c.stop_reason
            delta.stop_token_id = c.stop_reason if isinstance(c.stop_reason, int) else -1
    if out.finished:
        msg.usage.CopyFrom(pb.Usage(
            prompt_tokens=len(out.prompt_token_ids),
            completion_tokens=out.num_generated_tokens,
            cached_tokens=out.num_cached_tokens,
        ))
    return msg
