"""Continuous batching: schedules tokens, not phases.

Each step has a token budget. Running requests advance first (a decode is one token, an
unfinished prefill continues in chunks), then waiting requests are admitted with what is left of
the budget, in the order of the fair-share policy (``fair_share.py``): the most urgent team class
first, within it the team furthest below its weighted share, within a team by the request's own
priority and arrival. When the KV pool runs dry, a request is preempted by recompute (its blocks are
freed and it waits again, keeping its tokens): from the least urgent class, the team furthest above
its share, its least urgent and latest request. Plain Python: the scheduler decides, the model
runner executes.

Preemption recomputes a prompt, so admission can keep room for the requests already running: with
``reserved_output_tokens`` = R > 0 (off by default), a request is admitted only while the free blocks
cover, after its own prompt and first R output tokens, every running request's rest of prompt and
first R outputs.
With ``reserve_beyond_seqs`` = N, the first N running requests are admitted as above, and a further
one only while the free blocks cover every running request's whole output (max_tokens, within the
context): many sequences can run at once where the pool holds them all, without the recomputes that
an optimistic admission of that many costs once it does not.
A request that may preempt a running one (a more urgent class, a starved team) is not held back by
that room, and an empty batch always takes its first request.

A request's ``num_computed_tokens`` advances when its tokens are scheduled. A request whose step
reaches the end of its tokens will sample one more: that token is a placeholder until the step's
output comes back, so the next step can be scheduled (and its input gathered on the device) while
the previous one still runs.
"""
from __future__ import annotations

import bisect
import time

from worker.engine.fair_share import DECODE_COST, FairShare
from worker.engine.kv_cache_manager import KVCacheManager
from worker.engine.request import Request, RequestStatus
from worker.engine.scheduler_output import (
    CachedRequestData,
    EngineCoreOutput,
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
)


class Scheduler:
    def __init__(
        self,
        kv: KVCacheManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        enable_chunked_prefill: bool = True,
        reserved_output_tokens: int = 0,
        decode_step_tokens: int | None = None,
        reserve_beyond_seqs: int | None = None,
    ) -> None:
        if reserved_output_tokens < 0:
            raise ValueError(f"reserved_output_tokens must be >= 0, got {reserved_output_tokens}")
        if reserve_beyond_seqs is not None and reserve_beyond_seqs < 1:
            raise ValueError(f"reserve_beyond_seqs must be >= 1, got {reserve_beyond_seqs}")
        if decode_step_tokens is not None and decode_step_tokens < 1:
            raise ValueError(f"decode_step_tokens must be >= 1, got {decode_step_tokens}")
        self.kv = kv
        # While a request is decoding, a step holds at most this many tokens: prefill chunks shrink
        # so the decoding requests keep a steady pace (time per output token); with none decoding,
        # a prompt takes the whole max_num_batched_tokens (time to first token).
        self.decode_step_tokens = decode_step_tokens
        self.reserved_output_tokens = reserved_output_tokens
        self.reserve_beyond_seqs = reserve_beyond_seqs
        self.num_reserve_waits = 0  # steps whose admissions stopped to keep the running requests' room
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.enable_chunked_prefill = enable_chunked_prefill
        self.requests: dict[str, Request] = {}
        self.fair = FairShare()  # the teams' accounts and their waiting queues
        self.running: list[Request] = []  # sorted by running_key
        self._freed_ids: set[str] = set()
        self.num_preemptions = 0

    @property
    def waiting(self) -> list[Request]:
        """Every waiting request (a new list; the queues themselves live in the teams' accounts)."""
        return self.fair.waiting_requests()

    @property
    def num_waiting(self) -> int:
        return self.fair.num_waiting

    # ---- the interface -------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        """Queues a new request; it joins the batch at the next step that has room."""
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self._push_waiting(request)

    def abort(self, request_ids: list[str] | str) -> list[str]:
        """Finishes requests at once, freeing their blocks; returns the ids that were live."""
        return self.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def finish_requests(self, request_ids: list[str] | str, status: RequestStatus) -> list[str]:
        if isinstance(request_ids, str):
            request_ids = [request_ids]
        done = []
        for rid in request_ids:
            req = self.requests.get(rid)
            if req is None or req.status.finished:
                continue
            if req.status == RequestStatus.RUNNING:
                self._remove_running(req)
            else:
                self._remove_waiting(req)
            self._finish(req, status)
            done.append(rid)
        return done

    def has_unfinished(self) -> bool:
        return bool(self.fair.num_waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        budget = self.max_num_batched_tokens
        if self.decode_step_tokens is not None and self.decode_step_tokens < budget and any(
                r.num_computed_tokens >= r.num_prompt_tokens for r in self.running):
            budget = self.decode_step_tokens
        num_scheduled: dict[str, int] = {}
        new_reqs: dict[str, NewRequestData] = {}
        cached_reqs: dict[str, CachedRequestData] = {}
        preempted = False
        fair = self.fair
        pending_costs: dict[str, float] | None = {}  # phase 1 charges its teams at its end

        def unschedule(req: Request) -> None:
            nonlocal budget
            if req.request_id in num_scheduled:
                n = num_scheduled.pop(req.request_id)
                budget += n
                if pending_costs is not None:
                    pending_costs[req.team] -= fair.cost(req, n)
                else:
                    fair.add(req.team, -fair.cost(req, n))
                new_reqs.pop(req.request_id, None)
                cached_reqs.pop(req.request_id, None)

        evicted: set[str] = set()  # preempted in this step: not admitted again before the next one

        def evict(req: Request) -> None:
            unschedule(req)
            self._preempt(req)
            evicted.add(req.request_id)

        # 1. Running requests advance first.
        for req in list(self.running):
            if budget <= 0:
                break
            if req.status != RequestStatus.RUNNING:
                continue  # preempted earlier in this step to make room
            n = min(req.num_tokens_with_placeholders - req.num_computed_tokens, budget)
            if n <= 0 or self._reached_limit(req):
                continue
            new_block_ids = self.kv.allocate_slots(req, n)
            while new_block_ids is None:
                victim = fair.pick_victim(self.running)
                evict(victim)
                preempted = True
                if victim is req:
                    break
                new_block_ids = self.kv.allocate_slots(req, n)
            if new_block_ids is None:
                continue  # req itself was preempted
            num_scheduled[req.request_id] = n
            cost = n * DECODE_COST if req.num_computed_tokens >= req.num_prompt_tokens else fair.cost(req, n)
            pending_costs[req.team] = pending_costs.get(req.team, 0.0) + cost
            cached_reqs[req.request_id] = CachedRequestData(req.request_id, new_block_ids, req.num_computed_tokens)
            budget -= n
        for team, cost in pending_costs.items():
            fair.add(team, cost)
        pending_costs = None

        # 2. Waiting requests fill what is left (not in a step that had to preempt).
        exhausted: set[str] = set()  # teams with nothing more to admit in this step
        reserve: int | None = None  # blocks the running requests may still take (counted when first needed)
        reserve_outputs = 0  # the outputs per request that ``reserve`` was counted for
        while not preempted and budget > 0:
            team = fair.next_team(exhausted)
            if team is None:
                break
            req = next((r for r in team.waiting if not r.num_placeholders and r.request_id not in evicted
                        and not self._blocked_by_sibling(r)), None)
            if req is None:  # each waits for its last step's token, a sibling's prefill or the next step
                exhausted.add(team.name)
                continue
            if len(self.running) >= self.max_num_seqs:  # every seat taken: only a starved team gets one
                victim = fair.seat_victim(req, self.running)
                if victim is None:
                    break
                evict(victim)
            hits, num_hit = self.kv.get_computed_blocks(req)
            if req.prompt_logprobs is not None:  # every prompt position's logits are needed
                hits, num_hit = [], 0
            n = req.num_tokens - num_hit
            if not self.enable_chunked_prefill and n > budget:
                break
            n = min(n, budget)
            outputs = self._outputs_kept()
            if outputs and self.running:
                if reserve is None or outputs != reserve_outputs:
                    reserve = sum(self.kv.blocks_to_hold(r, self._reserve_target(r, outputs)) for r in self.running)
                    reserve_outputs = outputs
                need = self.kv.blocks_to_hold(req, self._reserve_target(req, outputs), num_hit)
                if self.kv.pool.num_free_blocks - need < reserve and not any(
                        fair.may_preempt(r, req) for r in self.running):
                    self.num_reserve_waits += 1
                    break
            new_block_ids = self.kv.allocate_slots(req, n, hits)
            if new_block_ids is None:
                victim = fair.pick_victim(r for r in self.running if fair.may_preempt(r, req))
                if victim is not None:
                    # A more urgent request (own team, more urgent class, or a starved team) takes its blocks.
                    # The victim waits for the next step, so two teams cannot take the blocks back and forth.
                    evict(victim)
                    continue
                break
            self._remove_waiting(req)
            if self.kv.enable_prefix_caching:
                self.kv.record_prefix_lookup(req.num_tokens, num_hit)
            req.status = RequestStatus.RUNNING
            req.num_computed_tokens = num_hit
            if req.num_cached_tokens < 0:
                req.num_cached_tokens = num_hit
                req.timings.first_scheduled = time.monotonic()
            self._add_running(req)
            if reserve is not None:
                reserve += self.kv.blocks_to_hold(req, self._reserve_target(req, reserve_outputs))
            num_scheduled[req.request_id] = n
            fair.charge(req, n)
            new_reqs[req.request_id] = NewRequestData(
                req_id=req.request_id,
                token_ids=list(req.token_ids),
                num_prompt_tokens=req.num_prompt_tokens,
                sampling_params=req.sampling_params,
                block_ids=self.kv.get_block_ids(req.request_id),
                num_computed_tokens=num_hit,
            )
            budget -= n

        # The plan is final: the scheduled tokens are in flight, their full blocks become findable,
        # and requests that reach their end will sample one more token.
        for rid, n in num_scheduled.items():
            req = self.requests[rid]
            req.num_computed_tokens += n
            self.kv.cache_blocks(req, req.num_computed_tokens)
            if req.num_computed_tokens >= req.num_tokens_with_placeholders:
                req.num_placeholders += 1
        freed, self._freed_ids = self._freed_ids, set()
        return SchedulerOutput(
            new_reqs=list(new_reqs.values()),
            cached_reqs=list(cached_reqs.values()),
            num_scheduled_tokens=num_scheduled,
            total_num_scheduled_tokens=sum(num_scheduled.values()),
            freed_req_ids=freed,
        )

    def update_from_output(self, sched: SchedulerOutput, out: ModelRunnerOutput) -> list[EngineCoreOutput]:
        """Applies a finished step's sampled tokens (placeholders become real tokens)."""
        now = time.monotonic()
        outputs = []
        for rid, lps in out.prompt_logprobs.items():
            req = self.requests.get(rid)
            if req is not None and req.prompt_logprobs is not None:
                req.prompt_logprobs.extend(lps)
        for rid, sampled in out.sampled_token_ids.items():
            req = self.requests.get(rid)
            if req is None or req.status.finished or not sampled:
                continue  # finished or aborted while the step ran: its extra token is discarded
            new_tokens = []
            status = None
            for token in sampled:
                req.num_placeholders = max(0, req.num_placeholders - 1)
                req.append_token(token)
                new_tokens.append(token)
                req.timings.on_token(now)
                status = self._check_stop(req, token)
                if rid in out.grammar_finished:
                    status = RequestStatus.FINISHED_STOPPED  # the output is complete, whatever the budget left
                if status is not None:
                    break
            lps = out.logprobs.get(rid)
            prompt_lps, req.prompt_logprobs = req.prompt_logprobs, None  # sent once, with the first token
            outputs.append(
                EngineCoreOutput(
                    rid,
                    new_tokens,
                    lps[: len(new_tokens)] if lps else None,
                    None if status is None else status.finish_reason,
                    req.stop_reason,
                    prompt_lps,
                )
            )
            if status is not None:
                if req.status == RequestStatus.RUNNING:
                    self._remove_running(req)
                else:
                    self._remove_waiting(req)  # preempted while its last step ran
                self._finish(req, status)
        return outputs

    # ---- statistics ----------------------------------------------------------------------
    def live_tokens(self) -> int:
        """Tokens whose K/V sit (or are being written) in allocated slots."""
        return sum(r.num_computed_tokens for r in self.running)

    # ---- internals -----------------------------------------------------------------------
    def _check_stop(self, req: Request, token: int) -> RequestStatus | None:
        p = req.sampling_params
        if req.num_output_tokens >= p.min_tokens:
            if not p.ignore_eos and token in p._eos_token_ids:
                return RequestStatus.FINISHED_STOPPED
            if token in p.stop_token_ids:
                req.stop_reason = token
                return RequestStatus.FINISHED_STOPPED
        if req.num_output_tokens >= req.max_tokens or req.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _reached_limit(self, req: Request) -> bool:
        """No token beyond max_tokens or the context is worth computing (its output is known to end)."""
        return (req.num_output_tokens + req.num_placeholders >= req.max_tokens
                or req.num_tokens_with_placeholders >= self.max_model_len)

    def _outputs_kept(self) -> int:
        """The outputs per running request that admission keeps room for now (0: none)."""
        if self.reserve_beyond_seqs is not None and len(self.running) >= self.reserve_beyond_seqs:
            return self.max_model_len  # whole outputs: _reserve_target caps them by max_tokens and the context
        return self.reserved_output_tokens

    def _reserve_target(self, req: Request, outputs: int) -> int:
        """The tokens a request is kept room for: its prompt and first ``outputs`` outputs (at least what
        it has, and the next token), within its max_tokens and the context."""
        first = req.num_prompt_tokens + min(req.max_tokens, outputs)
        return min(max(first, req.num_tokens + 1), self.max_model_len)

    def _blocked_by_sibling(self, req: Request) -> bool:
        leader = self.requests.get(req.wait_for) if req.wait_for else None
        if leader is None or leader.status.finished:
            return False
        return leader.num_computed_tokens < leader.num_prompt_tokens

    def _preempt(self, req: Request) -> None:
        self._remove_running(req)
        self.kv.free(req)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        if req.prompt_logprobs:  # preempted mid-prefill: its prompt is computed again from the start
            req.prompt_logprobs = []
        req.num_preemptions += 1
        self.num_preemptions += 1
        self._freed_ids.add(req.request_id)
        self._push_waiting(req)

    def _finish(self, req: Request, status: RequestStatus) -> None:
        req.status = status
        self.kv.free(req)
        self._freed_ids.add(req.request_id)
        self.requests.pop(req.request_id, None)

    def _push_waiting(self, req: Request) -> None:
        self.fair.push_waiting(req)

    def _remove_waiting(self, req: Request) -> None:
        self.fair.remove_waiting(req)

    def _add_running(self, req: Request) -> None:
        bisect.insort(self.running, req, key=Request.running_key)
        self.fair.on_running(req)

    def _remove_running(self, req: Request) -> None:
        self.running.remove(req)
        self.fair.on_stopped_running(req)
