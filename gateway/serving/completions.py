"""POST /v1/completions: one Generate call per prompt, choices numbered prompt by prompt."""

from __future__ import annotations

from typing import Any

from gateway.http.request_context import RequestContext
from gateway.protocol.completions import CompletionRequest
from gateway.serving.generation import GenerationRun
from gateway.serving.constraints import structured_output
from gateway.serving.logprobs import CompletionLogprobs
from gateway.serving.params import sampling_params
from gateway.serving.prompt_size import check_token_ids
from gateway.serving.sse import DONE, ChunkTemplate, EventStream, event
from gateway.serving.text_generation import GenerationService, ResponseMeta
from proto.ward.worker.v1 import worker_pb2 as pb

PROMPT_PARAM = "prompt"


def fill_prompt(message: pb.Prompt, prompt: str | list[int]) -> None:
    """Writes ``prompt`` into the request's own Prompt: a message passed to a constructor is copied,
    which for a 1,024-id prompt costs as much again as filling it (about 20 us a copy)."""
    if isinstance(prompt, str):
        message.text = prompt
    else:
        message.token_ids.ids.extend(prompt)


def generate_requests(
    ctx: RequestContext,
    request: CompletionRequest,
    tenancy: dict[str, Any],
    structured: pb.StructuredOutput | None = None,
) -> list[pb.GenerateRequest]:
    """One worker request per prompt; ``tenancy`` holds their tenancy fields (gateway.serving.tenancy)."""
    ranked = request.candidates > request.n
    # best_of ranks candidates by their total logprob, so the worker sends logprobs for all of them
    params = sampling_params(request, logprobs=(request.logprobs or 0) if ranked else request.logprobs,
                             structured=structured)
    params.n = request.candidates
    if request.echo and (request.logprobs is not None or not isinstance(request.prompt, str)):
        # the prompt's own logprobs, and its token strings (a tokenized prompt's echo is made of them)
        params.prompt_logprobs = request.logprobs or 0
    prompts = request.prompts()
    calls = []
    for i, p in enumerate(prompts):
        call = pb.GenerateRequest(
            request_id=ctx.request_id if len(prompts) == 1 else f"{ctx.request_id}-{i}",
            model=request.model,
            params=params,
            priority=request.priority,  # orders requests within the caller's team only
            **tenancy,
        )
        fill_prompt(call.prompt, p)
        calls.append(call)
    return calls


class CompletionFormatter:
    """text_completion bodies and chunks (OpenAI streams completions as text_completion objects)."""

    def __init__(self, meta: ResponseMeta, request: CompletionRequest, run: GenerationRun | None = None) -> None:
        self.meta = meta
        self.run = run
        self.echo = request.echo
        self._prompts = request.prompts()
        self._echoed: set[int] = set()
        self.include_usage = request.include_usage
        self.logprobs = request.logprobs is not None
        self.n, self.candidates = request.n, request.candidates
        self._fields = {
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": meta.system_fingerprint,
        }
        self._chunks: ChunkTemplate | None = None
        self._offsets: dict[int, CompletionLogprobs] = {}

    @property
    def _template(self) -> ChunkTemplate:
        if self._chunks is None:  # built on first use: non-streamed responses never need it
            self._chunks = ChunkTemplate(self._fields, usage_null=self.include_usage)
        return self._chunks

    def _logprobs_of(self, index: int) -> CompletionLogprobs:
        state = self._offsets.get(index)
        if state is None:
            state = self._offsets[index] = CompletionLogprobs()
        return state

    def _echo(self, index: int, run: GenerationRun) -> tuple[str, list[pb.TokenLogprob]]:
        """The prompt text of choice ``index`` and its tokens' logprobs (empty unless asked)."""
        prompt = index // self.candidates
        lps = run.prompt_logprobs[prompt] or []
        text = self._prompts[prompt]
        if not isinstance(text, str):  # a tokenized prompt: its tokens' bytes, decoded as generated text is
            text = b"".join(lp.token_bytes or lp.token.encode("utf-8", "surrogatepass") for lp in lps).decode(
                "utf-8", "replace")
        return text, lps

    def delta_events(self, index: int, delta: pb.ChoiceDelta) -> bytes:
        text, lps = delta.text, list(delta.logprobs)
        if self.echo and index not in self._echoed and self.run is not None:
            self._echoed.add(index)
            prompt_text, prompt_lps = self._echo(index, self.run)
            text, lps = prompt_text + text, prompt_lps + lps
        if not text and not (self.logprobs and lps):
            return b""
        logprobs = self._logprobs_of(index).format(lps) if self.logprobs else None
        return self._template.encode({"text": text, "index": index, "logprobs": logprobs, "finish_reason": None})

    def final_events(self, run: GenerationRun) -> bytes:
        out = b"".join(
            self._template.encode({"text": "", "index": i, "logprobs": None, "finish_reason": reason})
            for i, reason in enumerate(run.ctx.finish_reasons)
        )
        if self.include_usage:
            out += event({**self._fields, "choices": [], "usage": run.usage()})
        return out + DONE

    def response(self, run: GenerationRun) -> dict[str, Any]:
        ctx = run.ctx
        choices = []
        for i in self._returned(run):
            text, lps = ctx.response_text(i), list(run.logprobs[i]) if run.logprobs is not None else []
            if self.echo:
                prompt_text, prompt_lps = self._echo(i, run)
                text, lps = prompt_text + text, prompt_lps + lps
            logprobs = CompletionLogprobs().format(lps) if self.logprobs else None
            choices.append({"text": text, "index": len(choices), "logprobs": logprobs,
                            "finish_reason": ctx.finish_reasons[i]})
        return {**self._fields, "choices": choices, "usage": run.usage()}

    def _returned(self, run: GenerationRun) -> list[int]:
        """The choices to return: all, or per prompt the n of best_of with the highest total logprob."""
        if self.candidates == self.n or run.logprobs is None:
            return list(range(run.ctx.num_choices))
        picked = []
        for start in range(0, run.ctx.num_choices, self.candidates):
            group = range(start, start + self.candidates)
            ranked = sorted(group, key=lambda i: -sum(lp.logprob for lp in run.logprobs[i]))
            picked += sorted(ranked[: self.n])
        return picked


class CompletionService:
    """Serves legacy completions through a GenerationService."""

    def __init__(self, generation: GenerationService) -> None:
        self.generation = generation

    async def create(self, ctx: RequestContext, request: CompletionRequest) -> dict[str, Any] | EventStream:
        """The response body, or the event stream; raises OpenAIError."""
        ctx.model = request.model
        ctx.params = request
        prompts = request.prompts()
        ctx.prompt = prompts[0] if len(prompts) == 1 else prompts
        ctx.stream = request.stream
        ctx.max_tokens = request.completion_budget()
        self.generation.check_model(request.model, "generate")
        info = self.generation.pool.model_info(request.model)
        check_token_ids(info, prompts, param=PROMPT_PARAM)
        structured = structured_output(request, info)
        meta = self.generation.meta(ctx, "cmpl-")
        return await self.generation.run(
            ctx,
            generate_requests(ctx, request, self.generation.tenancy(ctx), structured),
            n=request.candidates,
            stream=request.stream,
            keep_logprobs=request.logprobs is not None or request.candidates > request.n,
            formatter=lambda run: CompletionFormatter(meta, request, run),
            prompt_param=PROMPT_PARAM,
        )
