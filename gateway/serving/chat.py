"""POST /v1/chat/completions: chat messages to the worker (which applies the chat template)."""

from __future__ import annotations

from typing import Any

from gateway.http.request_context import RequestContext
from gateway.protocol.chat import ChatCompletionRequest
from gateway.serving.generation import GenerationRun
from gateway.serving.logprobs import chat_logprobs
from gateway.serving.params import sampling_params
from gateway.serving.sse import DONE, ChunkTemplate, EventStream, event
from gateway.serving.text_generation import GenerationService, ResponseMeta
from proto.ward.worker.v1 import worker_pb2 as pb

PROMPT_PARAM = "messages"


def prompt_messages(request: ChatCompletionRequest) -> list[dict[str, str]]:
    """The conversation as plain ``{role, content[, name]}`` dicts, text parts joined."""
    messages = []
    for m in request.messages:
        message = {"role": m.role, "content": m.text()}
        if m.name:
            message["name"] = m.name
        messages.append(message)
    return messages


def generate_request(
    ctx: RequestContext, request: ChatCompletionRequest, messages: list[dict[str, str]], tenancy: dict[str, Any]
) -> pb.GenerateRequest:
    """The worker request; ``tenancy`` holds its tenancy fields (gateway.serving.tenancy)."""
    conversation = pb.Conversation(
        messages=[pb.ChatMessage(role=m["role"], content=m["content"], name=m.get("name", "")) for m in messages],
        add_generation_prompt=request.add_generation_prompt,
        continue_final_message=request.continue_final_message,
    )
    return pb.GenerateRequest(
        request_id=ctx.request_id,
        model=request.model,
        prompt=pb.Prompt(chat=conversation),
        params=sampling_params(request, logprobs=request.worker_logprobs()),
        priority=request.priority,  # orders requests within the caller's team only
        **tenancy,
    )


class ChatFormatter:
    """chat.completion bodies and chat.completion.chunk events."""

    def __init__(self, meta: ResponseMeta, request: ChatCompletionRequest) -> None:
        self.meta = meta
        self.include_usage = request.include_usage
        self.logprobs = request.logprobs
        self._chunks: ChunkTemplate | None = None
        self._started: set[int] = set()

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
        if delta.text or (self.logprobs and delta.logprobs):
            logprobs = chat_logprobs(delta.logprobs) if self.logprobs else None
            out += self._template.encode(
                {"index": index, "delta": {"content": delta.text}, "logprobs": logprobs, "finish_reason": None}
            )
        return out

    def final_events(self, run: GenerationRun) -> bytes:
        reasons = run.ctx.finish_reasons
        out = b"".join(
            self._template.encode({"index": i, "delta": {}, "logprobs": None, "finish_reason": reason})
            for i, reason in enumerate(reasons)
        )
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
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": ctx.response_text(i), "refusal": None},
                    "logprobs": logprobs,
                    "finish_reason": ctx.finish_reasons[i],
                }
            )
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
        meta = self.generation.meta(ctx, "chatcmpl-")
        return await self.generation.run(
            ctx,
            [generate_request(ctx, request, ctx.prompt, self.generation.tenancy(ctx))],
            n=request.n,
            stream=request.stream,
            keep_logprobs=request.logprobs,
            formatter=lambda: ChatFormatter(meta, request),
            prompt_param=PROMPT_PARAM,
        )
