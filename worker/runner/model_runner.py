"""Executes the scheduler's decisions: keeps per-request token and block state, turns each step
into flat tensors (input ids, positions, slot mapping, block tables, query offsets, context
lengths), runs the model and samples. Owns the device, the KV cache tensors and their sizing."""
from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np
import torch

from worker.attention.backend import AttentionMetadata, get_backend
from worker.attention.probe import AttentionShape
from worker.config import EngineConfig
from worker.engine.kv_layout import plan_kv_layout
from worker.engine.scheduler_output import ModelRunnerOutput, SampledLogprobs, SchedulerOutput
from worker.errors import ModelLoadError
from worker.model.loader import build_model, checkpoint_files, fill_dummy_weights, load_weights
from worker.model.quant import finalize_quantized, quantize_model, resolve_quant_config, weight_report
from worker.model.quant.apply import fill_dummy_quantized
from worker.model.quant.kv_cache import attach_kv_scales, fp8_kv_backend, kv_cache_torch_dtype
from worker.model.spec import ModelSpec
from worker.runner.cuda_graphs import DecodeGraphs, capture_sizes, context_bounds
from worker.runner.device import pick_device, pick_dtype
from worker.runner.input_batch import InputBatch
from worker.runner.input_buffers import InputBuffers
from worker.runner.memory import check_weights_fit, checkpoint_weight_bytes, profile_kv_budget
from worker.runner.request_state import RunnerRequest
from worker.runner.prompt_logprobs import prompt_logprobs
from worker.runner.sampler import SamplerOutput, sample
from worker.runner.sampling_batch import build_sampling_batch

log = logging.getLogger("ward.worker.runner")
# Plain greedy steps on CUDA take their argmax from worker/kernels/argmax.py (spread over the card;
# torch's reduction is one program per row): +0.7% at batch 1 on an H100. WARD_TRITON_ARGMAX=0 for torch's.
TRITON_ARGMAX = os.environ.get("WARD_TRITON_ARGMAX", "1") == "1"


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """The argmax of each row of [rows, V] logits, as int64."""
    if TRITON_ARGMAX and logits.is_cuda:
        from worker.kernels.argmax import greedy_argmax

        return greedy_argmax(logits)
    return logits.argmax(dim=-1)


@dataclass
class StepHandle:
    """A launched step: what to wait for, and where its sampled tokens belong."""

    step_id: int
    sample_ids: list[str]
    rows: np.ndarray  # InputBatch rows of the sampling requests (at launch)
    positions: np.ndarray  # token slot each sampled token fills in its row
    states: list
    out: object  # SamplerOutput
    host: torch.Tensor | None  # pinned copy of the sampled tokens
    event: object  # torch.cuda.Event, or None on the CPU
    prompt_lps: list = field(default_factory=list)  # (req id, PromptLogprobs) of prefill chunks
    logits: torch.Tensor | None = None  # [num_sample, V] until sampled


class ModelRunner:
    def __init__(self, config: EngineConfig, spec: ModelSpec, model_dir: str, max_model_len: int,
                 parallel=None) -> None:
        self.config = config
        self.spec = spec
        # tensor parallelism (worker.parallel.layers.RankPart): this rank's part of the model; only
        # rank 0 samples (the others are sent its tokens)
        self.parallel = parallel
        self.model_spec = spec if parallel is None else parallel.spec
        self.samples = parallel is None or parallel.group.rank == 0
        mspec = self.model_spec
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device, spec.config_dtype)
        self.block_size = config.block_size
        self.max_model_len = max_model_len
        # global and sliding-window layers in separate block tables where that saves KV (kv_layout.py)
        self.kv_layout = plan_kv_layout(list(spec.sliding_windows), max_model_len)
        shape = AttentionShape(mspec.num_heads, mspec.num_kv_heads, spec.head_dim, self.dtype, config.block_size,
                               tuple(dict.fromkeys(spec.sliding_windows)), spec.attn_logit_softcap)
        self.kv_dtype = kv_cache_torch_dtype(config.kv_cache_dtype, self.dtype)
        self.backend = get_backend(fp8_kv_backend(config.attention_backend, self.kv_dtype, self.device), self.device,
                                   config.block_size, shape)
        ops = self._ops()
        self.quant = resolve_quant_config(config.quantization, spec.hf_config)
        tp_size = getattr(config, "tensor_parallel_size", 1)
        if self.device.type == "cuda" and config.load_format != "dummy":
            # a float checkpoint quantized at load is read in full first: its float size must fit (a
            # tensor-parallel rank holds about its share of it)
            check_weights_fit(self, checkpoint_weight_bytes(checkpoint_files(model_dir), self.dtype) // tp_size,
                              self.quant.method if self.quant else str(self.dtype).removeprefix("torch."))
        # a quantized checkpoint's layers replace the float ones before anything is allocated; under
        # tensor parallelism they take the rank's sizes (mspec)
        self.model = build_model(mspec, self.backend, self.device, self.dtype, max_model_len, ops,
                                 prepare=lambda model: quantize_model(model, mspec, self.quant))
        if self.kv_dtype != self.dtype:
            attach_kv_scales(self.model, spec)
        if config.load_format == "dummy":
            fill_dummy_weights(self.model, config.seed)
            fill_dummy_quantized(self.model, torch.Generator(device=self.device).manual_seed(config.seed))
        else:
            load_weights(self.model, mspec, model_dir, read=None if parallel is None else parallel.read)
        finalize_quantized(self.model, mspec, self.quant, None if parallel is None else parallel.group.all_reduce_max)
        if self.device.type == "cuda" and ops.__name__ == "worker.kernels.model_ops":
            # decode-sized float projections through the Triton GEMV (WARD_DECODE_GEMV=0: cuBLAS), after
            # every quantized swap and before the tensor-parallel hooks are put on the layers
            from worker.model.decode_linear import use_decode_gemv

            use_decode_gemv(self.model)
        if parallel is not None:  # after every module swap (FP8 at load too): the all-reduce hooks stay on
            from worker.parallel.layers import parallelize

            parallelize(self.model, parallel.shard, parallel.group)
        if self.kv_layout.num_groups > 1:
            for layer, group in zip(self.model.layers, self.kv_layout.layer_group):
                layer.self_attn.kv_group = group
        self.weight_report = weight_report(self.model, self.quant)
        self.requests: dict[str, RunnerRequest] = {}
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.max_blocks_per_req = -(-max_model_len // self.block_size)
        self.eos_token_ids = list(spec.eos_token_ids)
        self.graphs: DecodeGraphs | None = None
        self.graph_capture_seconds = 0.0
        self.memory_report: dict[str, int] = {}
        self._make_buffers()
        self.batch = InputBatch(config.max_num_seqs, max_model_len, self.max_blocks_per_req, self.kv_layout.num_groups)
        self._step_id = 0
        self._last_sampled: torch.Tensor | None = None
        pin = self.device.type == "cuda"
        self._token_host = [torch.zeros(config.max_num_seqs, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        # decode steps hand attention the requests longest first (WARD_DECODE_LONGEST_FIRST=0: off, for A/B)
        self.longest_first = self.backend.name == "triton" and os.environ.get("WARD_DECODE_LONGEST_FIRST", "1") != "0"

    def _ops(self):
        if self.device.type == "cuda" and self.backend.name != "torch":
            try:
                from worker.kernels import model_ops

                return model_ops
            except ImportError as exc:  # the Triton path is optional only where Triton is missing
                log.warning("Triton kernels unavailable (%s); using torch ops", exc)
        from worker.model import ops

        return ops

    # ---- memory and KV cache -------------------------------------------------------------
    def kv_block_bytes(self) -> int:
        """Bytes of one KV block: K and V of a block of tokens for each layer slot of the layout."""
        s = self.model_spec
        elem = torch.tensor([], dtype=self.kv_dtype).element_size()
        return 2 * self.kv_layout.layers_per_block * self.block_size * s.num_kv_heads * s.head_dim * elem

    @property
    def use_cuda_graphs(self) -> bool:
        return self.device.type == "cuda" and not self.config.enforce_eager

    def graph_max_batch(self) -> int:
        return min(self.config.cuda_graph_max_batch, self.config.max_num_seqs, self.config.max_num_batched_tokens)

    def _make_buffers(self) -> None:
        max_tokens = max(self.config.max_num_batched_tokens, self.graph_max_batch())
        self.buffers = InputBuffers(max_tokens, self.config.max_num_seqs, self.max_blocks_per_req, self.device,
                                    self.kv_layout.num_groups)

    def determine_num_blocks(self) -> int:
        """KV blocks that fit the budget: explicit count, byte budget, or on CUDA the card's share
        minus weights, the profiled activation peak of the widest step and the decode graphs."""
        c = self.config
        if c.num_kv_blocks is not None:
            return c.num_kv_blocks
        if c.kv_cache_memory_bytes is not None:
            budget = c.kv_cache_memory_bytes
        elif self.device.type == "cuda":
            budget = profile_kv_budget(self)
        else:
            budget = 1 << 30  # 1 GiB of host memory by default
        n = budget // self.kv_block_bytes()
        if n < 1:
            raise ModelLoadError("the KV cache budget is too small for a single block")
        return int(n)

    def _layer_kv(self, num_blocks: int, separate_values: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's (key, value) cache: one pair per layer slot of a block, shared by the
        layers that hold that slot in their KV groups."""
        s = self.model_spec
        shape = (num_blocks, self.block_size, s.num_kv_heads, s.head_dim)
        slots = []
        for _ in range(self.kv_layout.layers_per_block):
            k = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
            slots.append((k, torch.zeros_like(k) if separate_values else k))
        return [slots[j] for j in self.kv_layout.layer_slot]

    def scratch_kv(self, num_blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self._layer_kv(num_blocks, separate_values=False)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.kv_caches = self._layer_kv(num_blocks)
        self.num_blocks = num_blocks
        self.startup_report = self._startup_report(num_blocks)
        w = self.startup_report
        log.info("weights: %s (%s), %.2f GiB; KV cache: %s, %d blocks x %d tokens = %d tokens, %.2f GiB%s",
                 w["weight_format"], w["weight_source"], w["weight_bytes"] / 2**30, w["kv_cache_dtype"], num_blocks,
                 self.block_size, w["kv_tokens"], w["kv_bytes"] / 2**30, self._layout_note())
        if self.use_cuda_graphs:
            self.graphs = DecodeGraphs(self.device)
            self.graph_capture_seconds = self.graphs.capture(self._graph_entries(), self.decode_forward)

    def _graph_entries(self) -> list[tuple[int, int]]:
        """(batch size, context bound) of every decode graph: each size at the bounds under which the
        model's attention launches differently (worker.runner.cuda_graphs.context_bounds); one bound,
        the model's length, where a layer's backend does not say what it launches or with
        ``WARD_DECODE_CONTEXT_GRAPHS=0``."""
        impls = [m.attn for m in self.model.modules() if hasattr(m, "attn")]
        per_bound = (os.environ.get("WARD_DECODE_CONTEXT_GRAPHS", "1") != "0" and bool(impls)
                     and all(hasattr(impl, "decode_launch_key") for impl in impls))
        elem = torch.tensor([], dtype=self.kv_dtype).element_size()

        def launch_key(size: int) -> Callable[[int], Hashable] | None:
            if not per_bound:
                return None
            return lambda bound: frozenset(impl.decode_launch_key(size, bound, elem, self.device) for impl in impls)

        return [(size, bound) for size in capture_sizes(self.graph_max_batch())
                for bound in context_bounds(self.max_model_len, launch_key(size))]

    def _startup_report(self, num_blocks: int) -> dict:
        """Weight format and bytes, KV cache dtype and capacity: logged at start, kept for metadata.
        ``kv_tokens`` counts tokens held in every layer (with several KV groups, sliding-window
        groups give blocks back, so long contexts hold more)."""
        return {"weight_format": self.weight_report["format"], "weight_source": self.weight_report["source"],
                "weight_bytes": self.weight_report["weight_bytes"],
                "kv_cache_dtype": str(self.kv_dtype).removeprefix("torch."),
                "kv_blocks": num_blocks, "kv_tokens": num_blocks * self.block_size // self.kv_layout.num_groups,
                "kv_groups": self.kv_layout.num_groups, "kv_bytes": num_blocks * self.kv_block_bytes()}

    def _layout_note(self) -> str:
        layout = self.kv_layout
        if layout.num_groups == 1:
            return ""
        kinds = ", ".join(f"{layout.windows.count(w)} x {'global' if w is None else f'window {w}'}"
                          for w in dict.fromkeys(layout.windows))
        return f" in {layout.num_groups} groups of {layout.layers_per_block} layers ({kinds})"

    def check_health(self) -> None:
        """Raises EngineDeadError when part of the engine has died (one process here: never)."""

    # ---- one step --------------------------------------------------------------------------
    def _update_states(self, sched: SchedulerOutput) -> None:
        ib = self.batch
        for rid in sched.freed_req_ids:
            if self.requests.pop(rid, None) is not None:
                ib.remove(rid)
        for new in sched.new_reqs:
            p = new.sampling_params
            gen = None
            if p.seed is not None and not p.greedy:
                gen = torch.Generator(device=self.device).manual_seed(p.seed)
            row = ib.add(new.req_id, new.token_ids, new.block_ids, new.num_computed_tokens)
            penalties = bool(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0)
            banned = ()
            if p.min_tokens:
                ends = set(p.stop_token_ids) | (set() if p.ignore_eos else set(p._eos_token_ids))
                banned = tuple(sorted(t for t in ends if 0 <= t < self.spec.vocab_size))
            state = RunnerRequest(new.req_id, row, new.num_prompt_tokens, p, gen, penalties=penalties,
                                  banned_until_min=banned)
            if p._grammar is not None:
                state.matcher = p._grammar.deep_copy()
                # resumed after preemption: the matcher catches up with what was generated before
                state.matcher.consume_tokens(new.token_ids[new.num_prompt_tokens :])
            state.special = ((not p.greedy) or penalties or p.logprobs is not None or bool(banned)
                             or bool(p.logit_bias) or state.matcher is not None)
            if penalties:
                for t in new.token_ids[new.num_prompt_tokens :]:
                    state.output_counts[t] = state.output_counts.get(t, 0) + 1
            self.requests[new.req_id] = state
        for cached in sched.cached_reqs:
            row = self.requests[cached.req_id].row
            ib.append_blocks(row, cached.new_block_ids)
            ib.num_computed[row] = cached.num_computed_tokens

    def metadata(self, num_tokens, num_reqs, max_q, max_seq, starts_cpu, lens_cpu) -> AttentionMetadata:
        b = self.buffers
        ordered = self.longest_first and max_q == 1
        meta = AttentionMetadata(
            num_tokens=num_tokens,
            num_reqs=num_reqs,
            query_start_loc=b.query_start_loc[: num_reqs + 1],
            seq_lens=b.seq_lens[:num_reqs],
            block_tables=b.block_tables[:num_reqs],
            slot_mapping=b.slot_mapping[:num_tokens],
            max_query_len=max_q,
            max_seq_len=max_seq,
            query_start_loc_cpu=starts_cpu,
            seq_lens_cpu=lens_cpu,
            request_order=b.request_order[:num_reqs] if ordered else None,
        )
        if b.num_kv_groups > 1:
            meta.groups = tuple(
                dataclasses.replace(meta, kv_group=g, block_tables=tables[:num_reqs], slot_mapping=slots[:num_tokens])
                for g, (tables, slots) in enumerate(zip(b.group_block_tables, b.group_slot_mappings), start=1)
            )
        return meta

    def decode_forward(self, size: int, max_seq_len: int | None = None) -> torch.Tensor:
        """The model over ``size`` one-token requests in the persistent buffers, whose contexts are at
        most ``max_seq_len`` tokens (default: the model's length) (graph body)."""
        b = self.buffers
        meta = self.metadata(size, size, 1, max_seq_len or self.max_model_len, None, None)
        return self.model(b.input_ids[:size], b.positions[:size], self.kv_caches, meta)

    def _prepare(self, order: list[str], sched: SchedulerOutput) -> tuple[int, int, np.ndarray, np.ndarray]:
        """Fills the host buffers for this step; returns (tokens, max query length, rows, sampling rows)."""
        b, ib, bs = self.buffers, self.batch, self.block_size
        num_reqs = len(order)
        rows = np.fromiter((self.requests[r].row for r in order), dtype=np.int64, count=num_reqs)
        q_lens = np.fromiter((sched.num_scheduled_tokens[r] for r in order), dtype=np.int64, count=num_reqs)
        starts = b.query_start_np[: num_reqs + 1]
        starts[0] = 0
        np.cumsum(q_lens, out=starts[1:])
        T = int(starts[-1])
        nc = ib.num_computed[rows]
        max_q = int(q_lens.max())
        if max_q == 1:
            positions, token_rows, batch_idx = nc, rows, np.arange(num_reqs)
        else:
            batch_idx = np.repeat(np.arange(num_reqs), q_lens)
            positions = np.repeat(nc - starts[:-1], q_lens) + np.arange(T)
            token_rows = rows[batch_idx]
        b.positions_np[:T] = positions
        b.input_ids_np[:T] = ib.token_ids[token_rows, positions]
        np.add(nc, q_lens, out=b.seq_lens_np[:num_reqs], casting="unsafe")
        bt = b.block_tables_np[:num_reqs]
        np.take(ib.block_table, rows, axis=0, out=bt)
        block_idx, offset = positions // bs, positions % bs
        b.slot_mapping_np[:T] = bt[batch_idx, block_idx].astype(np.int64) * bs + offset
        for g, (tables, slots) in enumerate(zip(b.group_block_tables_np, b.group_slot_mappings_np), start=1):
            gt = tables[:num_reqs]
            np.take(ib.block_tables[g], rows, axis=0, out=gt)
            slots[:T] = gt[batch_idx, block_idx].astype(np.int64) * bs + offset
        sampling_rows = np.flatnonzero(nc + q_lens >= ib.num_tokens[rows])
        b.logits_idx_np[: len(sampling_rows)] = starts[1:][sampling_rows] - 1
        return T, max_q, rows, sampling_rows

    @torch.inference_mode()
    def launch(self, sched: SchedulerOutput, defer_sampling: bool = False) -> "StepHandle | None":
        """Enqueues one step on the device (inputs, model, sampling) without waiting for it.

        Tokens sampled by the previous, uncollected step are gathered on the device as inputs. With
        ``defer_sampling``, a batch whose sampling needs that step's tokens on the host (a grammar's
        mask, penalty counts) stops after the logits: ``sample`` finishes it once that step is
        collected, while the device still runs this step's forward."""
        self._update_states(sched)
        if sched.is_empty:
            return None
        self._step_id += 1
        b, ib = self.buffers, self.batch
        b.flip()
        order = [c.req_id for c in sched.cached_reqs] + [n.req_id for n in sched.new_reqs]
        num_reqs = len(order)
        T, max_q, rows, sampling_rows = self._prepare(order, sched)
        num_sample = len(sampling_rows)
        # inputs still on the device: rows whose last token the previous step is sampling
        pend = ib.pending_idx[rows]
        gather_at = np.flatnonzero(pend >= 0)
        num_gather = len(gather_at)
        if num_gather:
            b.gather_dst_np[:num_gather] = b.query_start_np[gather_at]  # decode rows: their single token
            b.gather_src_np[:num_gather] = pend[gather_at]
        padded = self.graphs.padded_size(num_reqs) if (max_q == 1 and self.graphs is not None) else None
        if padded is not None:
            b.pad_decode(num_reqs, padded)
        up_tokens, up_reqs = (padded, padded) if padded is not None else (T, num_reqs)
        ordered = self.longest_first and max_q == 1
        if ordered:
            b.order_longest_first(up_reqs)
        b.upload(up_tokens, up_reqs, num_sample, num_gather, ordered=ordered)
        if num_gather:
            prev = self._last_sampled
            b.input_ids.index_copy_(0, b.gather_dst[:num_gather], prev.index_select(0, b.gather_src[:num_gather]))
        if padded is not None:
            hidden = self.graphs.replay(padded, self.graphs.bound_for(padded, int(b.seq_lens_np[:num_reqs].max())))
        else:
            lens = b.seq_lens_np[:num_reqs]
            meta = self.metadata(T, num_reqs, max_q, int(lens.max()), b.query_start_np[: num_reqs + 1].tolist(),
                                  lens.tolist())
            hidden = self.model(b.input_ids[:T], b.positions[:T], self.kv_caches, meta)
        prompt_lps = (self._prompt_logprobs(order, sched, hidden)
                      if any(self.requests[r].params.prompt_logprobs is not None for r in order) else [])
        if not num_sample:
            return StepHandle(self._step_id, [], np.empty(0, np.int64), np.empty(0, np.int64), [], None, None, None,
                              prompt_lps)
        # in the model's dtype: a plain greedy step takes the argmax there (exact, and half the bytes of a
        # float32 copy at 128K vocab); the sampler converts for everything else
        logits = self.model.compute_logits(hidden.index_select(0, b.logits_idx[:num_sample]))
        sample_ids = [order[i] for i in sampling_rows.tolist()]
        states = [self.requests[r] for r in sample_ids]
        # placeholders: the sampled token's slot in each row, filled on the host at collect
        srows = rows[sampling_rows]
        positions = ib.num_tokens[srows].copy()
        ib.num_tokens[srows] += 1
        ib.pending_idx[srows] = np.arange(num_sample)
        ib.pending_step[srows] = self._step_id
        handle = StepHandle(self._step_id, sample_ids, srows, positions, states, None, None, None, prompt_lps,
                            logits=logits)
        if not (defer_sampling and any(st.matcher is not None or st.penalties for st in states)):
            self.sample(handle)
        return handle

    @torch.inference_mode()
    def sample(self, h: "StepHandle") -> None:
        """Samples a launched step's logits (at once, or deferred: see ``launch``); idempotent."""
        if h.logits is None:
            return
        logits, h.logits = h.logits, None
        if not self.samples:  # a tensor-parallel rank > 0: rank 0 samples and sends the tokens
            out = SamplerOutput(token_ids=torch.zeros(len(h.sample_ids), dtype=torch.int64, device=self.device))
        elif any(st.special for st in h.states):
            # h.positions: each row's token count before this step's token (min_tokens counts outputs)
            out = sample(logits.float(), build_sampling_batch(h.states, self.batch, logits.shape[-1], self.device,
                                                              h.positions))
        else:
            out = SamplerOutput(token_ids=greedy_tokens(logits))
        if self.parallel is not None:  # every rank holds rank 0's tokens: the next step's inputs on the device
            self.parallel.group.broadcast_(out.token_ids, 0)
        self._last_sampled = out.token_ids
        host = self._token_host[h.step_id % 2][: len(h.sample_ids)]
        host.copy_(out.token_ids, non_blocking=self.device.type == "cuda")
        h.out, h.host = out, host
        if self.device.type == "cuda":
            h.event = torch.cuda.Event()
            h.event.record()

    def _prompt_logprobs(self, order: list[str], sched: SchedulerOutput, hidden: torch.Tensor) -> list:
        """Logprobs of the prompt tokens this step's prefill chunks predict, for requests that asked."""
        found = []
        start = 0
        for rid in order:
            q = sched.num_scheduled_tokens[rid]
            st = self.requests[rid]
            k = st.params.prompt_logprobs
            if k is not None:
                nc = int(self.batch.num_computed[st.row])
                # position p's logits predict token p + 1: only prompt tokens are targets here
                m = min(q, st.num_prompt_tokens - 1 - nc)
                if m > 0:
                    targets = torch.from_numpy(self.batch.token_ids[st.row, nc + 1 : nc + 1 + m].copy())
                    found.append((rid, prompt_logprobs(self.model, hidden[start : start + m], targets, k)))
            start += q
        return found

    def collect(self, h: "StepHandle") -> ModelRunnerOutput:
        """Waits for a launched step and returns its sampled tokens (and logprobs)."""
        self.sample(h)
        if not h.sample_ids:
            result = ModelRunnerOutput({})
            result.prompt_logprobs = {rid: lp.to_host() for rid, lp in h.prompt_lps}
            return result
        if h.event is not None:
            h.event.synchronize()
        tokens = h.host.tolist()
        ib = self.batch
        live = [i for i, rid in enumerate(h.sample_ids) if ib.row_of.get(rid) == h.rows[i]]
        if live:
            rows, pos = h.rows[live], h.positions[live]
            ib.token_ids[rows, pos] = np.asarray(tokens, dtype=np.int64)[live]
            mine = ib.pending_step[rows] == h.step_id
            ib.pending_idx[rows[mine]] = -1
        result = ModelRunnerOutput({rid: [t] for rid, t in zip(h.sample_ids, tokens)})
        result.prompt_logprobs = {rid: lp.to_host() for rid, lp in h.prompt_lps}
        out = h.out
        if out.token_logprobs is not None:
            tok_lp = out.token_logprobs.tolist()
            top_ids = out.top_ids.tolist() if out.top_ids is not None else None
            top_lps = out.top_logprobs.tolist() if out.top_logprobs is not None else None
        for row, st in enumerate(h.states):
            if st.matcher is not None and not st.matcher.is_stopped():  # stopped: its request has ended
                st.matcher.consume_token(tokens[row])
                if st.matcher.is_stopped():
                    result.grammar_finished.add(st.req_id)
            if st.penalties:
                t = tokens[row]
                st.output_counts[t] = st.output_counts.get(t, 0) + 1
            k = st.params.logprobs
            if k is not None and out.token_logprobs is not None:
                result.logprobs[st.req_id] = [
                    SampledLogprobs(tok_lp[row], top_ids[row][:k] if top_ids else [], top_lps[row][:k] if top_lps else [])
                ]
        return result
