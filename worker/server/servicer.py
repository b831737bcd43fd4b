"""The Worker gRPC service: thin handlers, proto -> engine call -> proto."""
from __future__ import annotations

import asyncio
import logging
import uuid

import grpc

from proto.ward.worker.v1 import worker_pb2 as pb
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc
from worker.server.async_engine import AsyncEngine
from worker.server.convert import params_from_proto, prompt_from_proto, response_from_output
from worker.server.embedding import EmbeddingModel
from worker.server.errors import Unavailable, UnknownModel, abort_with, mapped_errors
from worker.errors import InvalidRequestError, WardError

log = logging.getLogger("ward.worker.server")
CONTRACT = "ward.worker.v1"


class WorkerServicer(pb_grpc.WorkerServicer):
    def __init__(self, served_model_name: str, *, engine: AsyncEngine | None = None,
                 embedder: EmbeddingModel | None = None, worker_id: str | None = None) -> None:
        if (engine is None) == (embedder is None):
            raise ValueError("a worker serves either a generation engine or an embedding model")
        self.name = served_model_name
        self.engine = engine
        self.embedder = embedder
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self.draining = False
        self._embed_lock = asyncio.Lock()

    # ---- helpers ---------------------------------------------------------------------------
    def _check_model(self, model: str) -> None:
        if model and model != self.name:
            raise UnknownModel(f"this worker serves {self.name!r}, not {model!r}")

    def _need_engine(self) -> AsyncEngine:
        if self.engine is None:
            raise NotImplementedError("this worker serves embeddings only")
        return self.engine

    @property
    def ready(self) -> bool:
        if self.draining:
            return False
        return self.engine.alive if self.engine is not None else True

    # ---- RPCs ------------------------------------------------------------------------------
    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        try:
            engine = self._need_engine()
            self._check_model(request.model)
            if self.draining:
                raise Unavailable("the worker is shutting down")
            params = params_from_proto(request.params)
            prompt = prompt_from_proto(request.prompt)
            prepared = engine.engine.prepare_request(prompt, params)
            request_id = request.request_id or uuid.uuid4().hex
            stream = engine.generate(request_id, prepared, priority=request.priority,
                                     cache_salt=request.cache_salt or None)
            async for out in stream:
                yield response_from_output(out)
        except (WardError, ValueError, NotImplementedError) as exc:
            await abort_with(context, exc)

    @mapped_errors
    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        if self.embedder is None:
            raise NotImplementedError("this worker serves a generation model, not embeddings")
        self._check_model(request.model)
        if self.draining:
            raise Unavailable("the worker is shutting down")
        if request.texts and request.token_inputs:
            raise InvalidRequestError("send texts or token_inputs, not both")
        inputs = ([list(t.ids) for t in request.token_inputs] if request.token_inputs
                  else self.embedder.token_ids(list(request.texts)))
        if not inputs:
            raise InvalidRequestError("no input to embed")
        async with self._embed_lock:  # one batch at a time on the device
            vectors = await asyncio.to_thread(self.embedder.embed, inputs, None, request.dimensions)
        return pb.EmbedResponse(data=[pb.Embedding(values=v) for v in vectors],
                                prompt_tokens=sum(len(x) for x in inputs))

    @mapped_errors
    async def Tokenize(self, request: pb.TokenizeRequest, context) -> pb.TokenizeResponse:
        self._check_model(request.model)
        if self.embedder is not None:
            kind = request.prompt.WhichOneof("kind")
            if kind == "token_ids":
                ids = list(request.prompt.token_ids.ids)
            elif kind == "text":
                ids = self.embedder.token_ids([request.prompt.text])[0]
            else:
                raise InvalidRequestError("an embedding model tokenizes text or token ids only")
            max_len = self.embedder.max_model_len
        else:
            engine = self._need_engine().engine
            _, ids = engine.encode_prompt(prompt_from_proto(request.prompt))
            max_len = engine.max_model_len
        return pb.TokenizeResponse(count=len(ids), token_ids=ids if request.return_token_ids else [],
                                   max_model_len=max_len)

    async def ModelInfo(self, request, context) -> pb.ModelInfoResponse:
        if self.engine is not None:
            e = self.engine.engine
            return pb.ModelInfoResponse(
                served_model_name=self.name, max_model_len=e.max_model_len,
                has_chat_template=bool(e.tokenizer and e.tokenizer.has_chat_template), task="generate",
                vocab_size=e.spec.vocab_size, worker_id=self.worker_id, contract_version=CONTRACT,
            )
        return pb.ModelInfoResponse(
            served_model_name=self.name, max_model_len=self.embedder.max_model_len, has_chat_template=False,
            task="embed", vocab_size=self.embedder.model.config.vocab_size, worker_id=self.worker_id,
            contract_version=CONTRACT, embedding_dim=self.embedder.dim,
        )

    async def Health(self, request, context) -> pb.HealthResponse:
        if self.engine is not None and self.engine.error is not None:
            return pb.HealthResponse(live=False, ready=False, detail=f"engine failed: {self.engine.error}")
        detail = "draining" if self.draining else "ok"
        return pb.HealthResponse(live=True, ready=self.ready, detail=detail)

    async def LoadStats(self, request, context) -> pb.LoadStatsResponse:
        if self.engine is None:
            return pb.LoadStatsResponse(draining=self.draining)
        s = self.engine.stats()
        return pb.LoadStatsResponse(
            num_running=s.num_running, num_waiting=s.num_waiting, kv_usage=s.kv_usage,
            kv_blocks_used=s.kv_blocks_used, kv_blocks_total=s.kv_blocks_total,
            prefix_cache_queries=s.prefix_cache_queries, prefix_cache_hits=s.prefix_cache_hits,
            num_preemptions=s.num_preemptions, kv_waste=s.kv_waste, draining=self.draining,
        )
