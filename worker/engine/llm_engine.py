"""The synchronous engine: requests in, one step at a time, request outputs out.

    engine = LLMEngine(EngineConfig(model=...))
    engine.add_request("r1", "Hello", SamplingParams(max_tokens=8))
    while engine.has_unfinished_requests():
        for out in engine.step(): ...
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass

from worker.config import EngineConfig
from worker.engine.fair_share import check_policy
from worker.engine.hybrid_kv_cache_manager import HybridKVCacheManager
from worker.engine.kv_cache_manager import KVCacheManager
from worker.engine.output_processor import OutputProcessor, ParentState
from worker.engine.request import Request, RequestStatus
from worker.engine.scheduler import Scheduler
from worker.errors import InvalidRequestError, PromptTooLongError, RequestTooLargeError
from worker.model.registry import resolve_model
from worker.model.spec import load_spec
from worker.outputs import RequestOutput
from worker.runner.model_runner import ModelRunner
from worker.sampling_params import SamplingParams
from worker.structured.compiler import GrammarCompiler
from worker.tokenizer import (
    BYTES_PER_TOKEN_SLACK,
    PromptInput,
    WardTokenizer,
    prompt_text_bytes,
)

log = logging.getLogger("ward.worker.engine")


@dataclass
class PreparedRequest:
    """A tokenized, validated request, ready to be queued."""

    text: str | None
    token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # effective: capped by the context and the KV pool


@dataclass
class TeamStats:
    """One team's requests in the engine and the service it has had (the fair-share counter's input)."""

    num_running: int
    num_waiting: int
    num_waiting_prompt_tokens: int
    served_tokens: float  # prefill tokens x 1 + decode tokens x 2, since start


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    kv_usage: float
    kv_waste: float  # now: 1 - live tokens / allocated slots
    kv_waste_time_weighted: float  # the same, weighted by step time since start
    prefix_cache_queries: int
    prefix_cache_hits: int
    prefix_cache_hit_rate: float
    num_preemptions: int
    num_steps: int
    num_generated_tokens: int
    num_tokens_computed: int
    num_waiting_prompt_tokens: int = 0  # tokens of the waiting requests (admission control's bound)
    teams: dict[str, TeamStats] = dataclasses.field(default_factory=dict)  # "" is the default account


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        t0 = time.monotonic()
        self.model_dir = resolve_model(config.model)
        self.spec = load_spec(self.model_dir)
        limit = self.spec.max_position_embeddings
        if config.max_model_len is not None and config.max_model_len > limit:
            raise ValueError(f"max_model_len {config.max_model_len} exceeds the model's context length {limit}")
        self.max_model_len = config.max_model_len or limit
        self.served_model_name = config.served_model_name or os.path.basename(self.model_dir.rstrip("/"))
        self.tokenizer = WardTokenizer.load(self.model_dir)
        # No prompt whose text is longer than this can fit the context: refused before tokenizing.
        self.max_prompt_bytes = (self.max_model_len * self.tokenizer.max_token_bytes() * BYTES_PER_TOKEN_SLACK
                                 if self.tokenizer else 0)
        if config.tensor_parallel_size > 1:
            from worker.parallel.runner import TensorParallelRunner

            self.runner = TensorParallelRunner(config, self.spec, self.model_dir, self.max_model_len)
        else:
            self.runner = ModelRunner(config, self.spec, self.model_dir, self.max_model_len)
        num_blocks = self.runner.determine_num_blocks()
        self.runner.initialize_kv_cache(num_blocks)
        layout = self.runner.kv_layout
        if layout.num_groups == 1:
            self.kv = KVCacheManager(num_blocks, config.block_size, config.enable_prefix_caching, layout.groups[0].window)
        else:  # global and sliding-window layers: a block table per group (kv_layout.py)
            self.kv = HybridKVCacheManager(num_blocks, config.block_size, layout.windows, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.kv,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            enable_chunked_prefill=config.enable_chunked_prefill,
        )
        if not config.enable_chunked_prefill and config.max_num_batched_tokens < self.max_model_len:
            raise ValueError("without chunked prefill, max_num_batched_tokens must cover max_model_len")
        self.outputs = OutputProcessor(self.tokenizer.fast if self.tokenizer else None)
        self.eos_token_ids = frozenset(self.spec.eos_token_ids)
        self.grammars = GrammarCompiler(self.tokenizer.hf if self.tokenizer else None, self.spec.vocab_size,
                                        sorted(self.eos_token_ids))
        self._steps = 0
        self._generated = 0
        self._tokens_computed = 0
        self._waste_area = 0.0
        self._slot_area = 0.0
        self._inflight = None  # (SchedulerOutput, StepHandle) launched but not yet collected
        forced = config.async_scheduling
        self._async = forced if forced is not None else self.runner.device.type == "cuda"
        self.startup_seconds = time.monotonic() - t0
        log.info("engine ready: %s, %d KV blocks of %d tokens, %.1fs", self.served_model_name, num_blocks,
                 config.block_size, self.startup_seconds)

    # ---- requests --------------------------------------------------------------------------
    @property
    def kv_capacity_tokens(self) -> int:
        """The longest request the KV pool can ever hold."""
        if isinstance(self.kv, HybridKVCacheManager):
            return self.kv.capacity_tokens(self.config.max_num_batched_tokens)
        return self.kv.num_blocks * self.config.block_size

    def encode_prompt(self, prompt: PromptInput) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            ids = list(prompt["prompt_token_ids"])
            bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < self.spec.vocab_size]
            if bad:
                raise InvalidRequestError(f"token ids out of range [0, {self.spec.vocab_size}): {bad[:5]}")
            return prompt.get("prompt"), ids
        if self.tokenizer is None:
            raise InvalidRequestError("this model has no tokenizer: send prompt_token_ids")
        return self.tokenizer.encode_prompt(prompt)

    def check_prompt_size(self, prompt: PromptInput) -> None:
        """Raises PromptTooLongError for a prompt whose text alone is too long for the context (cheap: no
        tokenization), so oversized input is refused before any heavy work."""
        size = prompt_text_bytes(prompt)
        if self.max_prompt_bytes and size > self.max_prompt_bytes:
            raise PromptTooLongError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt is "
                f"{size} bytes long, more than any prompt of {self.max_model_len} tokens can be "
                f"({self.max_prompt_bytes} bytes). Please reduce the length of the prompt."
            )
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt and len(prompt["prompt_token_ids"]) >= self.max_model_len:
            self._check_lengths(len(prompt["prompt_token_ids"]), SamplingParams())

    def prepare_request(self, prompt: PromptInput, params: SamplingParams | None = None) -> "PreparedRequest":
        """Tokenizes and validates a request without touching engine state (safe from any thread)."""
        self.check_prompt_size(prompt)
        params = dataclasses.replace(params or SamplingParams()).with_eos(self.eos_token_ids)
        if params.logit_bias and max(params.logit_bias) >= self.spec.vocab_size:
            raise InvalidRequestError(f"logit_bias names a token id beyond the vocabulary ({self.spec.vocab_size})")
        if params.structured is not None:
            params._grammar = self.grammars.compile(params.structured)  # cached by the spec's hash
        text, ids = self.encode_prompt(prompt)
        return PreparedRequest(text, ids, params, self._check_lengths(len(ids), params))

    def add_request(
        self,
        request_id: str,
        prompt: PromptInput | "PreparedRequest",
        params: SamplingParams | None = None,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
        arrival_time: float | None = None,
        team: str | None = None,
        team_priority: int = 0,
        team_weight: float = 1.0,
    ) -> None:
        """Queues a request (n choices). Raises a typed error if it can never be served.

        ``team`` is the fair-share account (None: the shared default one); ``team_priority`` (a lower
        class is served first) and ``team_weight`` (> 0) are the team's policy, set by admins, and
        replace the team's earlier values; ``priority`` orders requests within the team only."""
        try:
            check_policy(team_priority, team_weight)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        prepared = prompt if isinstance(prompt, PreparedRequest) else self.prepare_request(prompt, params)
        if request_id in self.outputs.parents:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        params, ids = prepared.params, prepared.token_ids
        parent = ParentState(request_id, prepared.text, ids)
        children = []
        for i in range(params.n):
            child_params = params if params.seed is None or i == 0 else dataclasses.replace(params, seed=params.seed + i)
            if i > 0 and params.prompt_logprobs is not None:  # the prompt's logprobs come from the first choice
                child_params = dataclasses.replace(child_params, prompt_logprobs=None)
            child_id = request_id if params.n == 1 else f"{request_id}#{i}"
            children.append(Request(
                child_id, ids, child_params, max_tokens=prepared.max_tokens, block_size=self.config.block_size,
                priority=priority, cache_salt=cache_salt, arrival_time=arrival_time,
                wait_for=children[0].request_id if i > 0 else None,
                team=team, team_priority=team_priority, team_weight=float(team_weight),
            ))
        for i, child in enumerate(children):
            self.outputs.add(parent, i, child)
            self.scheduler.add_request(child)

    def _check_lengths(self, prompt_len: int, params: SamplingParams) -> int:
        if prompt_len == 0:
            raise InvalidRequestError("the prompt is empty")
        room = self.max_model_len - prompt_len
        if room < 1 or (params.max_tokens is not None and params.max_tokens > room):
            asked = prompt_len + (params.max_tokens or 1)
            raise PromptTooLongError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{asked} tokens ({prompt_len} in the prompt, {asked - prompt_len} for the completion). "
                "Please reduce the length of the prompt or the completion."
            )
        capacity = self.kv_capacity_tokens
        if prompt_len + 1 > capacity or (params.max_tokens is not None and prompt_len + params.max_tokens > capacity):
            raise RequestTooLargeError(
                f"the request needs up to {prompt_len + (params.max_tokens or 1)} tokens of KV cache, but the whole "
                f"pool holds {capacity}; it could never run"
            )
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        return min(max_tokens, room, capacity - prompt_len)

    def abort_request(self, request_ids: str | list[str]) -> list[RequestOutput]:
        """Aborts requests (all their choices) at once; their KV blocks are free on return."""
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        child_ids = []
        for rid in request_ids:
            parent = self.outputs.parents.get(rid)
            if parent is not None:
                child_ids += [c.request.request_id for c in parent.choices]
        self.scheduler.abort(child_ids)
        return self.outputs.finish_aborted(child_ids)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or self._inflight is not None

    def num_unfinished_requests(self) -> int:
        return len(self.outputs.parents)

    def check_health(self) -> None:
        """Raises EngineDeadError when part of the engine (a tensor-parallel rank) has died."""
        self.runner.check_health()

    def close(self) -> None:
        """Stops the engine's other processes (tensor-parallel ranks), if any."""
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    # ---- stepping --------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Runs one step; returns the outputs that changed.

        With asynchronous scheduling (GPU), step N+1 is scheduled and launched before step N's
        results are collected, so the CPU's bookkeeping overlaps the device's work; the outputs
        returned are those of the step that just completed."""
        start = time.monotonic()
        sched = self.scheduler.schedule()
        if self._async:
            # A batch whose sampling needs the in-flight step's tokens (grammar masks, penalties) is
            # sampled after that step is collected, while the device runs this step's forward.
            handle = self.runner.launch(sched, defer_sampling=self._inflight is not None)
            results = self._finish_inflight()
            if handle is not None:
                self.runner.sample(handle)
            self._inflight = (sched, handle) if handle is not None else None
        else:
            results = self._finish_inflight()
            handle = self.runner.launch(sched)
            if handle is not None:
                results += self._apply(sched, self.runner.collect(handle))
        self._account(sched, time.monotonic() - start)
        return results

    def _finish_inflight(self) -> list[RequestOutput]:
        if self._inflight is None:
            return []
        sched, handle = self._inflight
        self._inflight = None
        return self._apply(sched, self.runner.collect(handle))

    def _apply(self, sched, out) -> list[RequestOutput]:
        core = self.scheduler.update_from_output(sched, out)
        self._generated += sum(len(c.new_token_ids) for c in core)
        results, stopped = self.outputs.process(core)
        if stopped:
            self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
        return results

    def _account(self, sched, dt: float) -> None:
        if sched.is_empty:
            return
        self._steps += 1
        self._tokens_computed += sched.total_num_scheduled_tokens
        slots = self.kv.num_allocated_slots()
        if slots:
            self._slot_area += slots * dt
            self._waste_area += (slots - self.scheduler.live_tokens()) * dt

    def reset_counters(self) -> None:
        """Starts the time-weighted and cumulative counters afresh (benchmarks measure one workload)."""
        self._waste_area = self._slot_area = 0.0
        self.scheduler.num_preemptions = 0

    def stats(self) -> EngineStats:
        slots = self.kv.num_allocated_slots()
        live = self.scheduler.live_tokens()
        ps = self.kv.prefix_stats
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=self.scheduler.num_waiting,
            kv_blocks_used=self.kv.pool.num_used_blocks,
            kv_blocks_total=self.kv.num_blocks,
            kv_usage=self.kv.usage,
            kv_waste=(1 - live / slots) if slots else 0.0,
            kv_waste_time_weighted=(self._waste_area / self._slot_area) if self._slot_area else 0.0,
            prefix_cache_queries=ps.queries,
            prefix_cache_hits=ps.hits,
            prefix_cache_hit_rate=ps.hit_rate,
            num_preemptions=self.scheduler.num_preemptions,
            num_steps=self._steps,
            num_generated_tokens=self._generated,
            num_tokens_computed=self._tokens_computed,
            num_waiting_prompt_tokens=sum(t.waiting_tokens for t in self.scheduler.fair.teams.values()),
            teams={t.name: TeamStats(t.num_running, len(t.waiting), t.waiting_tokens, t.served_tokens)
                   for t in self.scheduler.fair.teams.values()},
        )
