"""The Worker gRPC service: thin handlers, proto -> engine call -> proto.

Nothing heavy runs on the event loop that answers Health: tokenization, chat templating and embedding
run in a small executor of their own, after admission control has bounded the queue (from the
prompt's bytes, before any tokenization).
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

import grpc

from proto.ward.worker.v1 import worker_pb2 as pb
from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc
from worker.engine.fair_share import check_policy
from worker.errors import InvalidRequestError, WardError
from worker.outputs import RequestMetrics
from worker.server.admission import Admission, AdmissionLimits, AdmissionRefused
from worker.server.async_engine import AsyncEngine
from worker.server.convert import (
    params_from_proto,
    prompt_from_proto,
    response_from_output,
)
from worker.server.embedding import EmbeddingModel
from worker.server.errors import Unavailable, UnknownModel, abort_with, mapped_errors
from worker.server.multiplex import serve_multiplex
from worker.server.prepare import FairPrepareExecutor, is_small
from worker.structured.compiler import library_available
from worker.tokenizer import prompt_token_bound

PREPARE_THREADS = 2  # long prompts are tokenized here, off the event loop; the engine has its own thread

log = logging.getLogger("ward.worker.server")
CONTRACT = "ward.worker.v1"


def default_limits(engine: AsyncEngine | None, embedder: EmbeddingModel | None) -> AdmissionLimits:
    """Production defaults: a generation worker queues up to 4 full batches of requests and twice its
    KV pool in prompt tokens; an embedding worker up to 64 requests and 16 MB of text."""
    if engine is None:
        return AdmissionLimits(max_waiting_requests=64, max_waiting_tokens=16 << 20)
    e = engine.engine
    return AdmissionLimits(max_waiting_requests=4 * e.config.max_num_seqs,
                           max_waiting_tokens=max(2 * e.kv_capacity_tokens, 4 * e.max_model_len))


class WorkerServicer(pb_grpc.WorkerServicer):
    def __init__(self, served_model_name: str, *, engine: AsyncEngine | None = None,
                 embedder: EmbeddingModel | None = None, worker_id: str | None = None,
                 limits: AdmissionLimits | None = None) -> None:
        if (engine is None) == (embedder is None):
            raise ValueError("a worker serves either a generation engine or an embedding model")
        self.name = served_model_name
        self.engine = engine
        self.embedder = embedder
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self.draining = False
        self.admission = Admission(limits or default_limits(engine, embedder))
        self._embed_lock = asyncio.Lock()
        self._heavy = FairPrepareExecutor(PREPARE_THREADS)
        # Tokenize calls in progress, bounded as the queue is and shared alike among the teams counting
        # (equal shares: a count carries no weight), so one team's flood cannot turn another's count away
        self._tokenizing = Admission(AdmissionLimits(self.admission.limits.max_waiting_requests, 1 << 62))
        self.num_in_flight = 0  # Generate and Embed calls under way: SIGTERM's drain waits for them
        # (team, first response seconds, engine timings) of each finished generation, for the metrics
        self.observe_team_request: Callable[[str, float, RequestMetrics | None], None] | None = None

    async def _off_loop(self, team: str, fn, *args):
        """Runs heavy work (tokenizing, templating, embedding) where it cannot delay the event loop,
        teams taking turns."""
        return await self._heavy.run(team, fn, *args)

    async def _prepare(self, team: str, prompt, fn, *args, heavy: bool = False):
        """``fn(*args)`` for a prompt: at once when it is small, else off the loop in the team's turn."""
        if is_small(prompt) and not heavy:
            return fn(*args)
        return await self._off_loop(team, fn, *args)

    def close(self) -> None:
        self._heavy.shutdown()

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
        received = time.monotonic()
        ticket = None
        self.num_in_flight += 1
        try:
            engine = self._need_engine()
            self._check_model(request.model)
            if self.draining:
                raise Unavailable("the worker is shutting down")
            params = params_from_proto(request.params)
            prompt = prompt_from_proto(request.prompt)
            weight = request.team_weight or 1.0
            try:
                check_policy(request.team_priority, weight)
            except ValueError as exc:
                raise InvalidRequestError(str(exc)) from None
            engine.engine.check_prompt_size(prompt)  # cheap: bytes, no tokenizer
            ticket = self.admission.admit(request.team, weight, prompt_token_bound(prompt))
            # compiling a grammar can take a while (a new schema, the first use): never on the loop
            prepared = await self._prepare(request.team, prompt, engine.engine.prepare_request, prompt, params,
                                           heavy=params.structured is not None)
            ticket.set_tokens(len(prepared.token_ids))
            request_id = request.request_id or uuid.uuid4().hex
            stream = engine.generate(request_id, prepared, priority=request.priority,
                                     cache_salt=request.cache_salt or None, team=request.team or None,
                                     team_priority=request.team_priority, team_weight=weight)
            if request.report_prompt_tokens:  # the gateway reserves this exact count meanwhile
                yield pb.GenerateResponse(prompt_tokens=len(prepared.token_ids))
            first_response_s = last = None
            async for out in stream:
                ticket.release()  # it left the queue: the engine produced its first output
                response = response_from_output(out)
                if first_response_s is None:
                    first_response_s = time.monotonic() - received
                last = out
                yield response
            if first_response_s is not None and self.observe_team_request is not None:
                self.observe_team_request(request.team, first_response_s, last.metrics)
        except (WardError, ValueError, NotImplementedError) as exc:
            await abort_with(context, exc)
        finally:
            self.num_in_flight -= 1
            if ticket is not None:
                ticket.release()

    async def Multiplex(self, request_iterator, context: grpc.aio.ServicerContext):  # noqa: N802
        """Many Generate calls over this one (worker/server/multiplex.py)."""
        async for message in serve_multiplex(self.Generate, request_iterator, context):
            yield message

    @mapped_errors
    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:
        if self.embedder is None:
            raise NotImplementedError("this worker serves a generation model, not embeddings")
        self._check_model(request.model)
        if self.draining:
            raise Unavailable("the worker is shutting down")
        if request.texts and request.token_inputs:
            raise InvalidRequestError("send texts or token_inputs, not both")
        texts = list(request.texts)
        token_inputs = [list(t.ids) for t in request.token_inputs]
        if not texts and not token_inputs:
            raise InvalidRequestError("no input to embed")
        self.embedder.check_input_sizes(texts, token_inputs)  # cheap: bytes and lengths, no tokenizer
        bound = sum(len(t.encode("utf-8", "surrogatepass")) + 2 for t in texts) + sum(map(len, token_inputs))
        ticket = self.admission.admit("", 1.0, bound)
        self.num_in_flight += 1
        try:
            async with self._embed_lock:  # one request at a time on the device, in bounded batches
                ticket.release()
                vectors, count = await self._off_loop("", self.embedder.embed_batched, texts, token_inputs,
                                                      request.dimensions)
        finally:
            self.num_in_flight -= 1
            ticket.release()
        return pb.EmbedResponse(data=[pb.Embedding(values=v) for v in vectors], prompt_tokens=count)

    @mapped_errors
    async def Tokenize(self, request: pb.TokenizeRequest, context) -> pb.TokenizeResponse:
        self._check_model(request.model)
        try:
            ticket = self._tokenizing.admit(request.team, 1.0, 0)
        except AdmissionRefused as refused:
            self.admission.refusals[refused.code] += 1
            raise
        try:
            if self.embedder is not None:
                kind = request.prompt.WhichOneof("kind")
                if kind == "token_ids":
                    ids = list(request.prompt.token_ids.ids)
                elif kind == "text":
                    self.embedder.check_input_sizes([request.prompt.text], [])
                    ids = (await self._prepare(request.team, request.prompt.text, self.embedder.token_ids,
                                               [request.prompt.text]))[0]
                else:
                    raise InvalidRequestError("an embedding model tokenizes text or token ids only")
                max_len = self.embedder.max_model_len
            else:
                engine = self._need_engine().engine
                prompt = prompt_from_proto(request.prompt)
                engine.check_prompt_size(prompt)
                _, ids = await self._prepare(request.team, prompt, engine.encode_prompt, prompt)
                max_len = engine.max_model_len
        finally:
            ticket.release()
        return pb.TokenizeResponse(count=len(ids), token_ids=ids if request.return_token_ids else [],
                                   max_model_len=max_len)

    async def ModelInfo(self, request, context) -> pb.ModelInfoResponse:
        if self.engine is not None:
            e = self.engine.engine
            return pb.ModelInfoResponse(
                served_model_name=self.name, max_model_len=e.max_model_len,
                has_chat_template=bool(e.tokenizer and e.tokenizer.has_chat_template), task="generate",
                vocab_size=e.spec.vocab_size, worker_id=self.worker_id, contract_version=CONTRACT,
                max_prompt_bytes=e.max_prompt_bytes,
                tool_call_format=e.tokenizer.tool_call_format if e.tokenizer else "",
                structured_output=library_available(),
                quantization=e.weight_format, kv_cache_dtype=e.config.kv_cache_dtype,
            )
        return pb.ModelInfoResponse(
            served_model_name=self.name, max_model_len=self.embedder.max_model_len, has_chat_template=False,
            task="embed", vocab_size=self.embedder.model.config.vocab_size, worker_id=self.worker_id,
            contract_version=CONTRACT, embedding_dim=self.embedder.dim, max_prompt_bytes=self.embedder.max_input_bytes,
        )

    async def Health(self, request, context) -> pb.HealthResponse:
        if self.engine is not None and self.engine.error is not None:
            return pb.HealthResponse(live=False, ready=False, detail=f"engine failed: {self.engine.error}")
        detail = "draining" if self.draining else "ok"
        return pb.HealthResponse(live=True, ready=self.ready, detail=detail)

    async def LoadStats(self, request, context) -> pb.LoadStatsResponse:
        refusals = self.admission.num_refusals
        if self.engine is None:
            return pb.LoadStatsResponse(draining=self.draining, num_waiting=self.admission.requests,
                                        num_admission_refusals=refusals)
        s = self.engine.stats()
        return pb.LoadStatsResponse(
            num_running=s.num_running, num_waiting=s.num_waiting, kv_usage=s.kv_usage,
            kv_blocks_used=s.kv_blocks_used, kv_blocks_total=s.kv_blocks_total,
            prefix_cache_queries=s.prefix_cache_queries, prefix_cache_hits=s.prefix_cache_hits,
            num_preemptions=s.num_preemptions, kv_waste=s.kv_waste, draining=self.draining,
            num_waiting_prompt_tokens=s.num_waiting_prompt_tokens, num_admission_refusals=refusals,
            teams=[pb.TeamLoad(team=name, num_running=t.num_running, num_waiting=t.num_waiting,
                               served_tokens=int(t.served_tokens))
                   for name, t in s.teams.items() if t.num_running or t.num_waiting or t.served_tokens],
        )

    async def Metrics(self, request, context) -> pb.MetricsResponse:
        return pb.MetricsResponse(text=self.metrics_text() if self.metrics_text else "")

    metrics_text = None  # set by the server: the worker's Prometheus exposition, as text
