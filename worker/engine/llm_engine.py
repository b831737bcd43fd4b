"""The synchronous engine: requests in, one step at a time, request outputs out.

    engine = LLMEngine(EngineConfig(model=...))
    engine.add_request("r1", "Hello", SamplingParams(max_tokens=8))
    while engine.has_unfinished_requests():
        for out in engine.step(): ...
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

from worker.config import EngineConfig
from worker.engine.fair_share import check_policy
from worker.engine.hybrid_kv_cache_manager import HybridKVCacheManager
from worker.engine.kv_cache_manager import KVCacheManager
from worker.engine.output_processor import OutputProcessor, ParentState
from worker.engine.request import Request, RequestStatus
from worker.engine.request_preparation import PreparedRequest, RequestPreparation
from worker.engine.scheduler import Scheduler
from worker.errors import InvalidRequestError
from worker.outputs import RequestOutput
from worker.runner.model_runner import ModelRunner
from worker.sampling_params import SamplingParams
from worker.tokenizer import PromptInput

log = logging.getLogger("ward.worker.engine")


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
    num_reserve_waits: int = 0  # steps whose admissions stopped to keep the running requests' KV room
    teams: dict[str, TeamStats] = dataclasses.field(default_factory=dict)  # "" is the default account


class LLMEngine(RequestPreparation):
    def __init__(self, config: EngineConfig) -> None:
        t0 = time.monotonic()
        self._load_model_description(config)
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
            reserved_output_tokens=config.reserved_output_tokens,
            reserve_beyond_seqs=config.reserve_beyond_seqs,
            decode_step_tokens=config.decode_step_tokens,
        )
        if not config.enable_chunked_prefill and config.max_num_batched_tokens < self.max_model_len:
            raise ValueError("without chunked prefill, max_num_batched_tokens must cover max_model_len")
        self.outputs = OutputProcessor(self.tokenizer.fast if self.tokenizer else None)
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
    def weight_format(self) -> str:
        """The weights' quantization method ("none" for float weights)."""
        return self.runner.weight_report["format"]

    @property
    def kv_capacity_tokens(self) -> int:
        """The longest request the KV pool can ever hold."""
        return self.kv.capacity_tokens(self.config.max_num_batched_tokens)

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
        if prepared.params.structured is not None and prepared.params._grammar is None:
            # prepared in another process (the grammar stays there): compiled again here, cached by hash
            prepared.params._grammar = self.grammars.compile(prepared.params.structured)
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
        self.scheduler.num_reserve_waits = 0

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
            num_reserve_waits=self.scheduler.num_reserve_waits,
            teams={t.name: TeamStats(t.num_running, len(t.waiting), t.waiting_tokens, t.served_tokens)
                   for t in self.scheduler.fair.teams.values()},
        )
