"""POST /v1/embeddings: texts or token ids to an embedding worker; floats or base64 back."""

from __future__ import annotations

import base64
import sys
from array import array
from typing import Any

from gateway.http.errors import InvalidRequest, WorkerFailed
from gateway.http.request_context import RequestContext
from gateway.protocol.embeddings import EmbeddingRequest
from gateway.serving.dispatch import Dispatcher
from gateway.serving.lifecycle import Lifecycle
from gateway.serving.prompt_size import check_prompt_sizes, check_token_ids
from gateway.serving.text_generation import GenerationService
from proto.ward.worker.v1 import worker_pb2 as pb

PROMPT_PARAM = "input"
EMBED_TIMEOUT_S = 300.0


def encode_base64(values) -> str:
    """Little-endian float32 bytes, base64-encoded (what OpenAI's clients decode)."""
    floats = array("f", values)
    if sys.byteorder != "little":
        floats.byteswap()
    return base64.b64encode(floats.tobytes()).decode("ascii")


def check_dimensions(dimensions: int | None, info: pb.ModelInfoResponse | None) -> None:
    """Raises InvalidRequest when ``dimensions`` exceeds the model's embedding size (when known)."""
    if dimensions is not None and info is not None and info.embedding_dim and dimensions > info.embedding_dim:
        raise InvalidRequest(
            f"dimensions must be at most {info.embedding_dim} for this model.", param="dimensions", code="invalid_value"
        )


class EmbeddingService:
    def __init__(self, generation: GenerationService, dispatcher: Dispatcher, lifecycle: Lifecycle) -> None:
        self.generation = generation
        self.dispatcher = dispatcher
        self.lifecycle = lifecycle

    async def create(self, ctx: RequestContext, request: EmbeddingRequest) -> dict[str, Any]:
        """The embeddings response body; raises OpenAIError. Terminal hooks have run on return."""
        ctx.model = request.model
        ctx.params = request
        ctx.prompt = request.input
        self.generation.check_model(request.model, "embed")
        info = self.generation.pool.model_info(request.model)
        check_dimensions(request.dimensions, info)
        texts, token_inputs = request.texts(), request.token_inputs()
        check_token_ids(info, token_inputs, param=PROMPT_PARAM)
        prompts = [pb.Prompt(text=t) for t in texts] or [pb.Prompt(token_ids=pb.TokenIds(ids=t)) for t in token_inputs]
        check_prompt_sizes(info, prompts, param=PROMPT_PARAM)
        ctx.set_token_counter(lambda: self.dispatcher.count_tokens(request.model, prompts, prompt_param=PROMPT_PARAM,
                                                                      team=ctx.principal.team if ctx.principal else ""))
        self.lifecycle.begin(ctx)
        await self.dispatcher.admit(ctx)
        worker_request = pb.EmbedRequest(
            request_id=ctx.request_id,
            model=request.model,
            texts=texts,
            token_inputs=[pb.TokenIds(ids=t) for t in token_inputs],
            dimensions=request.dimensions or 0,
        )
        response = await self.dispatcher.call(
            ctx, request.model, lambda client: client.embed(worker_request, EMBED_TIMEOUT_S), prompt_param=PROMPT_PARAM
        )
        if len(response.data) != len(prompts):
            raise WorkerFailed("The worker returned the wrong number of embeddings.", code="worker_error")
        ctx.prompt_tokens = response.prompt_tokens
        if request.encoding_format == "base64":
            data = [
                {"object": "embedding", "index": i, "embedding": encode_base64(e.values)}
                for i, e in enumerate(response.data)
            ]
        else:
            data = [
                {"object": "embedding", "index": i, "embedding": list(e.values)} for i, e in enumerate(response.data)
            ]
        body = {
            "object": "list",
            "data": data,
            "model": request.model,
            "usage": {"prompt_tokens": response.prompt_tokens, "total_tokens": response.prompt_tokens},
        }
        await self.lifecycle.finish(ctx)
        return body
