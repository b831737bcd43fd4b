"""POST /v1/chat/completions: chat messages to the worker (which applies the chat template)."""

from __future__ import annotations

from typing import Any

from gateway.http.request_context import RequestContext
from gateway.protocol.chat import ChatCompletionRequest
from gateway.serving.generation import GenerationRun
from gateway.serving.constraints import ToolPlan, structured_output, tool_plan, tools_json
from gateway.serving.logprobs import chat_logprobs
from gateway.serving.params import sampling_params
from gateway.serving.sse import DONE, ChunkTemplate, EventStream, event
from gateway.serving.text_generation import GenerationService, ResponseMeta
from gateway.tools.parsers import parse_tool_calls
from gateway.tools.stream import ToolCallStream
from proto.ward.worker.v1 import worker_pb2 as pb

PROMPT_PARAM = "messages"


def prompt_messages(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The conversation as plain ``{role, content[, name, tool_calls, tool_call_id]}`` dicts, text parts joined."""
    messages = []
    for m in request.messages:
        message: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.name:
            message["name"] = m.name
        if m.tool_calls:
            message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id:
            message["tool_call_id"] = m.tool_call_id
        messages.append(message)
    return messages


def _chat_message(m: dict[str, Any]) -> pb.ChatMessage:
    calls = [pb.ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"])
             for c in m.get("tool_calls", ())]
    return pb.ChatMessage(role=m["role"], content=m["content"], name=m.get("name", ""),
                          tool_call_id=m.get("tool_call_id", ""), tool_calls=calls)


def generate_request(
    ctx: RequestContext,
    request: ChatCompletionRequest,
    messages: list[dict[str, Any]],
    tenancy: dict[str, Any],
    structured: pb.StructuredOutput | None = None,
) -> pb.GenerateRequest:
    """The worker request; ``tenancy`` holds its tenancy fields (gateway.serving.tenancy)."""
    conversation = pb.Conversation(
        messages=[_chat_message(m) for m in messages],
        add_generation_prompt=request.add_generation_prompt,
        continue_final_message=request.continue_final_message,
        tools_json=tools_json(request),
    )
    return pb.GenerateRequest(
        request_id=ctx.request_id,
        model=request.model,
        prompt=pb.Prompt(chat=conversation),
        params=sampling_params(request, logprobs=request.worker_logprobs(), structured=structured),
        priority=request.priority,  # orders requests within the caller's team only
        **tenancy,
    )


class ChatFormatter:
    """chat.completion bodies and chat.completion.chunk events."""

    def __init__(self, meta: ResponseMeta, request: ChatCompletionRequest, tools: ToolPlan | None = None) -> None:
        self.meta = meta
        self.include_usage = request.include_usage
        self.logprobs = request.logprobs
        self.tools = tools
        self._chunks: ChunkTemplate | None = None
        self._started: set[int] = set()
        self._tool_streams: dict[int, ToolCallStream] = {}

    @property
    def _template(self) -> ChunkTemplate:
        if self._chunks is None:  # built on first use: non-streamed responses never need it
            fields = {
                "id": self.meta.id,
                "object": "chat.completion.chunk",
                "created": self.meta.created,
                "model": self.meta.model,
                "system_fingerprint": self.meta.system_fingerprint,
            }
            self._chunks = ChunkTemplate(fields, usage_null=self.include_usage)
        return self._chunks

    def delta_events(self, index: int, delta: pb.ChoiceDelta) -> bytes:
        out = b""
        if index not in self._started:
            self._started.add(index)
            out = self._template.encode(
                {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            )
        text = delta.text
        if self.tools is not None and text:
            stream = self._tool_streams.get(index)
            if stream is None:
                stream = self._tool_streams[index] = ToolCallStream(self.tools.fmt, forced=self.tools.forced)
            text = stream.feed(text)
        if text and not self.logprobs:
            out += self._template.encode_content(index, text)
        elif text or (self.logprobs and delta.logprobs):
            logprobs = chat_logprobs(delta.logprobs) if self.logprobs else None
            out += self._template.encode(
                {"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": None}
            )
        return out

    def _tool_call_events(self, index: int, reason: str | None) -> tuple[bytes, str | None]:
        """The held text of a choice and its calls, sent as OpenAI streams them; the finish reason."""
        stream = self._tool_streams.get(index)
        if stream is None:
            return b"", reason
        rest, calls = stream.finish(complete=reason == "stop")
        calls = calls if self.tools.parallel else calls[:1]
        out = b""
        if rest:
            out += self._template.encode(
                {"index": index, "delta": {"content": rest}, "logprobs": None, "finish_reason": None})
        for k, call in enumerate(calls):  # first the call's id and name, then its arguments
            head = {**call.openai(k), "function": {"name": call.name, "arguments": ""}}
            out += self._template.encode(
                {"index": index, "delta": {"tool_calls": [head]}, "logprobs": None, "finish_reason": None})
            args = {"index": k, "function": {"arguments": call.arguments}}
            out += self._template.encode(
                {"index": index, "delta": {"tool_calls": [args]}, "logprobs": None, "finish_reason": None})
        return out, ("tool_calls" if calls and reason == "stop" else reason)

    def final_events(self, run: GenerationRun) -> bytes:
        reasons = run.ctx.finish_reasons
        out = b""
        for i, reason in enumerate(reasons):
            calls, reason = self._tool_call_events(i, reason)
            out += calls + self._template.encode({"index": i, "delta": {}, "logprobs": None, "finish_reason": reason})
        if self.include_usage:
            out += self._usage_event(run.usage())
        return out + DONE

    def _usage_event(self, usage: dict[str, Any]) -> bytes:
        head = {
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": self.meta.system_fingerprint,
            "choices": [],
            "usage": usage,
        }
        return event(head)

    def response(self, run: GenerationRun) -> dict[str, Any]:
        ctx = run.ctx
        choices = []
        for i in range(ctx.num_choices):
            logprobs = chat_logprobs(run.logprobs[i]) if run.logprobs is not None else None
            content: str | None = ctx.response_text(i)
            reason = ctx.finish_reasons[i]
            message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
            if self.tools is not None and reason == "stop":
                content, calls = parse_tool_calls(self.tools.fmt, content or "")
                calls = calls if self.tools.parallel else calls[:1]
                if calls:
                    message["content"] = content
                    message["tool_calls"] = [c.openai() for c in calls]
                    reason = "tool_calls"
            choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": reason})
        return {
            "id": self.meta.id,
            "object": "chat.completion",
            "created": self.meta.created,
            "model": self.meta.model,
            "system_fingerprint": self.meta.system_fingerprint,
            "choices": choices,
            "usage": run.usage(),
        }


class ChatService:
    """Serves chat completions through a GenerationService."""

    def __init__(self, generation: GenerationService) -> None:
        self.generation = generation

    async def create(self, ctx: RequestContext, request: ChatCompletionRequest) -> dict[str, Any] | EventStream:
        """The response body, or the event stream; raises OpenAIError."""
        ctx.model = request.model
        ctx.params = request
        ctx.prompt = prompt_messages(request)
        ctx.stream = request.stream
        ctx.max_tokens = request.completion_budget()
        self.generation.check_model(request.model, "generate")
        info = self.generation.pool.model_info(request.model)
        tools = tool_plan(request, info)
        structured = structured_output(request, info, tools)
        meta = self.generation.meta(ctx, "chatcmpl-")
        return await self.generation.run(
            ctx,
            [generate_request(ctx, request, ctx.prompt, self.generation.tenancy(ctx), structured)],
            n=request.n,
            stream=request.stream,
            keep_logprobs=request.logprobs,
            formatter=lambda _run: ChatFormatter(meta, request, tools),
            prompt_param=PROMPT_PARAM,
        )
