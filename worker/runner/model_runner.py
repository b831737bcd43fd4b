"""Executes the scheduler's decisions: keeps per-request token and block state, turns each step
into flat tensors (input ids, positions, slot mapping, block tables, query offsets, context
lengths), runs the model and samples. Owns the device, the KV cache tensors and their sizing."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from worker.attention.backend import AttentionMetadata, get_backend
from worker.config import EngineConfig
from worker.engine.scheduler_output import ModelRunnerOutput, SampledLogprobs, SchedulerOutput
from worker.errors import ModelLoadError
from worker.model.loader import build_model, fill_dummy_weights, load_weights
from worker.model.spec import ModelSpec
from worker.runner.cuda_graphs import DecodeGraphs, capture_sizes
from worker.runner.input_buffers import InputBuffers
from worker.runner.sampler import SamplingBatch, sample
from worker.sampling_params import SamplingParams

log = logging.getLogger("ward.worker.runner")


@dataclass
class RunnerRequest:
    req_id: str
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    generator: torch.Generator | None = None
    output_counts: dict[int, int] = field(default_factory=dict)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device cuda was asked for, but no CUDA GPU is available")
    return device


def pick_dtype(name: str, device: torch.device, config_dtype: torch.dtype | None) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cpu":
        return torch.float32  # half precision matmuls are slow on most CPUs
    if config_dtype in (torch.bfloat16, torch.float16):
        return config_dtype
    return torch.bfloat16


class ModelRunner:
    def __init__(self, config: EngineConfig, spec: ModelSpec, model_dir: str, max_model_len: int) -> None:
        self.config = config
        self.spec = spec
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device, spec.config_dtype)
        self.block_size = config.block_size
        self.max_model_len = max_model_len
        self.backend = get_backend(config.attention_backend, self.device)
        ops = self._ops()
        self.model = build_model(spec, self.backend, self.device, self.dtype, max_model_len, ops)
        if config.load_format == "dummy":
            fill_dummy_weights(self.model, config.seed)
        else:
            load_weights(self.model, spec, model_dir)
        self.requests: dict[str, RunnerRequest] = {}
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.max_blocks_per_req = -(-max_model_len // self.block_size)
        self.eos_token_ids = list(spec.eos_token_ids)
        self.graphs: DecodeGraphs | None = None
        self.graph_capture_seconds = 0.0
        self.memory_report: dict[str, int] = {}
        self._make_buffers()

    def _ops(self):
        if self.device.type == "cuda" and self.config.attention_backend != "torch":
            try:
                from worker.kernels import model_ops

                return model_ops
            except ImportError as exc:  # the Triton path is optional only where Triton is missing
                log.warning("Triton kernels unavailable (%s); using torch ops", exc)
        from worker.model import ops

        return ops

    # ---- memory and KV cache -------------------------------------------------------------
    def kv_block_bytes(self) -> int:
        s = self.spec
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * s.num_layers * self.block_size * s.num_kv_heads * s.head_dim * elem

    @property
    def use_cuda_graphs(self) -> bool:
        return self.device.type == "cuda" and not self.config.enforce_eager

    def _graph_max_batch(self) -> int:
        return min(self.config.cuda_graph_max_batch, self.config.max_num_seqs, self.config.max_num_batched_tokens)

    def _make_buffers(self) -> None:
        max_tokens = max(self.config.max_num_batched_tokens, self._graph_max_batch())
        self.buffers = InputBuffers(max_tokens, self.config.max_num_seqs, self.max_blocks_per_req, self.device)

    def determine_num_blocks(self) -> int:
        """KV blocks that fit the budget: explicit count, byte budget, or on CUDA the card's share
        minus weights, the profiled activation peak of the widest step and the decode graphs."""
        c = self.config
        if c.num_kv_blocks is not None:
            return c.num_kv_blocks
        if c.kv_cache_memory_bytes is not None:
            budget = c.kv_cache_memory_bytes
        elif self.device.type == "cuda":
            budget = self._profile_free_gpu_memory()
        else:
            budget = 1 << 30  # 1 GiB of host memory by default
        n = budget // self.kv_block_bytes()
        if n < 1:
            raise ModelLoadError("the KV cache budget is too small for a single block")
        return int(n)

    def _scratch_kv(self, num_blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (num_blocks, self.block_size, self.spec.num_kv_heads, self.spec.head_dim)
        return [(torch.zeros(shape, dtype=self.dtype, device=self.device),) * 2 for _ in range(self.spec.num_layers)]

    def _profile_free_gpu_memory(self) -> int:
        dev = self.device
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        weights = torch.cuda.memory_allocated(dev)
        n = min(self.config.max_num_batched_tokens, self.max_model_len)
        nb = -(-n // self.block_size)
        scratch = self._scratch_kv(1)
        b = self.buffers
        b.input_ids_np[:n] = 0
        b.positions_np[:n] = np.arange(n)
        b.slot_mapping_np[:n] = -1
        b.query_start_np[:2] = [0, n]
        b.seq_lens_np[:1] = n
        b.block_tables_np[:1, :nb] = 0  # every logical block reads the one scratch block
        num_sample = min(n, self.config.max_num_seqs)
        b.logits_idx_np[:num_sample] = np.arange(n - num_sample, n)
        b.upload(n, 1, num_sample)
        meta = self._metadata(n, 1, n, n, [0, n], [n])
        with torch.inference_mode():
            hidden = self.model(b.input_ids[:n], b.positions[:n], scratch, meta)
            self.model.compute_logits(hidden.index_select(0, b.logits_idx[:num_sample])).float().softmax(-1)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - weights
        del hidden, scratch
        graph_bytes = self._measure_graph_memory() if self.use_cuda_graphs else 0
        free, total = torch.cuda.mem_get_info(dev)
        others = total - free - torch.cuda.memory_reserved(dev)  # other processes on the card
        allowed = int(total * self.config.gpu_memory_utilization)
        budget = allowed - others - weights - peak - graph_bytes
        log.info("memory: weights %.2f GiB, activation peak %.2f GiB, decode graphs %.2f GiB, KV budget %.2f GiB",
                 weights / 2**30, peak / 2**30, graph_bytes / 2**30, budget / 2**30)
        if budget < self.kv_block_bytes() * 2:
            raise ModelLoadError(
                f"the model does not fit: weights {weights / 2**30:.1f} GiB + activations {peak / 2**30:.1f} GiB "
                f"+ graphs {graph_bytes / 2**30:.1f} GiB leave no room for a KV cache within "
                f"{allowed / 2**30:.1f} GiB (gpu_memory_utilization={self.config.gpu_memory_utilization})"
            )
        self.memory_report = {"weights": weights, "activation_peak": peak, "graphs": graph_bytes, "kv_budget": budget}
        return budget

    def _measure_graph_memory(self) -> int:
        """Memory the decode graphs will hold: capture the largest one on a scratch cache, then free it."""
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_reserved(self.device)
        probe = DecodeGraphs(self.device)
        saved = self.kv_caches
        self.kv_caches = self._scratch_kv(2)
        size = self._graph_max_batch()
        probe.capture([size], self._decode_forward)
        used = torch.cuda.memory_reserved(self.device) - before
        del probe
        self.kv_caches = saved
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        return max(used, 0) + (64 << 20)  # headroom for the smaller graphs' own bookkeeping

    def initialize_kv_cache(self, num_blocks: int) -> None:
        s = self.spec
        shape = (num_blocks, self.block_size, s.num_kv_heads, s.head_dim)
        self.kv_caches = [
            (torch.zeros(shape, dtype=self.dtype, device=self.device), torch.zeros(shape, dtype=self.dtype, device=self.device))
            for _ in range(s.num_layers)
        ]
        self.num_blocks = num_blocks
        if self.use_cuda_graphs:
            self.graphs = DecodeGraphs(self.device)
            self.graph_capture_seconds = self.graphs.capture(capture_sizes(self._graph_max_batch()), self._decode_forward)

    # ---- one step --------------------------------------------------------------------------
    def _update_states(self, sched: SchedulerOutput) -> None:
        for rid in sched.freed_req_ids:
            self.requests.pop(rid, None)
        for new in sched.new_reqs:
            p = new.sampling_params
            gen = None
            if p.seed is not None and not p.greedy:
                gen = torch.Generator(device=self.device).manual_seed(p.seed)
            state = RunnerRequest(new.req_id, list(new.token_ids), new.num_prompt_tokens, p, list(new.block_ids),
                                  new.num_computed_tokens, gen)
            for t in new.token_ids[new.num_prompt_tokens :]:
                state.output_counts[t] = state.output_counts.get(t, 0) + 1
            self.requests[new.req_id] = state
        for cached in sched.cached_reqs:
            state = self.requests[cached.req_id]
            state.block_ids.extend(cached.new_block_ids)
            state.num_computed_tokens = cached.num_computed_tokens

    def _metadata(self, num_tokens, num_reqs, max_q, max_seq, starts_cpu, lens_cpu) -> AttentionMetadata:
        b = self.buffers
        return AttentionMetadata(
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
        )

    def _decode_forward(self, size: int) -> torch.Tensor:
        """The model over ``size`` one-token requests in the persistent buffers (graph body)."""
        b = self.buffers
        meta = AttentionMetadata(
            num_tokens=size, num_reqs=size, query_start_loc=b.query_start_loc[: size + 1],
            seq_lens=b.seq_lens[:size], block_tables=b.block_tables[:size], slot_mapping=b.slot_mapping[:size],
            max_query_len=1, max_seq_len=self.max_model_len,
        )
        return self.model(b.input_ids[:size], b.positions[:size], self.kv_caches, meta)

    @torch.inference_mode()
    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        self._update_states(sched)
        if sched.is_empty:
            return ModelRunnerOutput({})
        order = [c.req_id for c in sched.cached_reqs] + [n.req_id for n in sched.new_reqs]
        num_reqs = len(order)
        bs = self.block_size
        b = self.buffers
        q_lens = np.fromiter((sched.num_scheduled_tokens[r] for r in order), dtype=np.int64, count=num_reqs)
        starts = b.query_start_np[: num_reqs + 1]
        starts[0] = 0
        np.cumsum(q_lens, out=starts[1:])
        T = int(starts[-1])
        sampling_rows: list[int] = []
        ids_np, pos_np, bt_np, lens_np = b.input_ids_np, b.positions_np, b.block_tables_np, b.seq_lens_np
        for i, rid in enumerate(order):
            st = self.requests[rid]
            s, n, nc = int(starts[i]), int(q_lens[i]), st.num_computed_tokens
            if n == 1:
                ids_np[s] = st.token_ids[nc]
                pos_np[s] = nc
            else:
                ids_np[s : s + n] = st.token_ids[nc : nc + n]
                pos_np[s : s + n] = np.arange(nc, nc + n)
            lens_np[i] = nc + n
            blocks = st.block_ids
            bt_np[i, : len(blocks)] = blocks
            if nc + n >= len(st.token_ids):
                sampling_rows.append(i)
        positions = pos_np[:T]
        req_of_token = np.repeat(np.arange(num_reqs), q_lens)
        b.slot_mapping_np[:T] = bt_np[req_of_token, positions // bs].astype(np.int64) * bs + positions % bs
        num_sample = len(sampling_rows)
        b.logits_idx_np[:num_sample] = starts[1:][sampling_rows] - 1
        max_q = int(q_lens.max())
        padded = None
        if max_q == 1 and self.graphs is not None:
            padded = self.graphs.padded_size(num_reqs)
        if padded is not None:
            b.pad_decode(num_reqs, padded)
            b.upload(padded, padded, num_sample)
            hidden = self.graphs.replay(padded)
        else:
            b.upload(T, num_reqs, num_sample)
            lens = lens_np[:num_reqs]
            meta = self._metadata(T, num_reqs, max_q, int(lens.max()), starts.tolist(), lens.tolist())
            hidden = self.model(b.input_ids[:T], b.positions[:T], self.kv_caches, meta)
        if not sampling_rows:
            return ModelRunnerOutput({})
        logits = self.model.compute_logits(hidden.index_select(0, b.logits_idx[:num_sample])).float()
        sample_ids = [order[i] for i in sampling_rows]
        batch = self._sampling_batch(sample_ids, logits.shape[-1])
        out = sample(logits, batch)
        tokens = out.token_ids.tolist()
        result = ModelRunnerOutput({})
        if out.token_logprobs is not None:
            tok_lp = out.token_logprobs.tolist()
            top_ids = out.top_ids.tolist() if out.top_ids is not None else None
            top_lps = out.top_logprobs.tolist() if out.top_logprobs is not None else None
        for row, rid in enumerate(sample_ids):
            st = self.requests[rid]
            t = tokens[row]
            st.token_ids.append(t)
            st.output_counts[t] = st.output_counts.get(t, 0) + 1
            result.sampled_token_ids[rid] = [t]
            k = st.params.logprobs
            if k is not None and out.token_logprobs is not None:
                result.logprobs[rid] = [
                    SampledLogprobs(tok_lp[row], top_ids[row][:k] if top_ids else [], top_lps[row][:k] if top_lps else [])
                ]
        return result

    def _sampling_batch(self, req_ids: list[str], vocab: int) -> SamplingBatch:
        states = [self.requests[r] for r in req_ids]
        params = [s.params for s in states]
        dev = self.device
        greedy = [p.greedy for p in params]
        temps = [0.0 if g else p.temperature for g, p in zip(greedy, params)]
        batch = SamplingBatch(
            temperature=torch.tensor(temps, dtype=torch.float32, device=dev),
            top_p=None,
            top_k=None,
            min_p=None,
            all_greedy=all(greedy),
            any_greedy=any(greedy),
            generators={i: s.generator for i, s in enumerate(states) if s.generator is not None},
        )
        if not batch.all_greedy:
            if any(p.top_p < 1.0 for p in params):
                batch.top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=dev)
            if any(p.top_k > 0 for p in params):
                batch.top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=dev)
            if any(p.min_p > 0 for p in params):
                batch.min_p = torch.tensor([p.min_p for p in params], dtype=torch.float32, device=dev)
        if any(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0 for p in params):
            counts = torch.zeros(len(states), vocab, dtype=torch.int32)
            for i, s in enumerate(states):
                if s.output_counts:
                    ids = torch.tensor(list(s.output_counts.keys()))
                    counts[i, ids] = torch.tensor(list(s.output_counts.values()), dtype=torch.int32)
            batch.output_counts = counts.to(dev)
            batch.presence = torch.tensor([p.presence_penalty for p in params], dtype=torch.float32, device=dev)
            batch.frequency = torch.tensor([p.frequency_penalty for p in params], dtype=torch.float32, device=dev)
            if any(p.repetition_penalty != 1.0 for p in params):
                seen = torch.zeros(len(states), vocab, dtype=torch.bool)
                for i, s in enumerate(states):
                    seen[i, torch.tensor(s.token_ids[: s.num_prompt_tokens] or [0])] = bool(s.num_prompt_tokens)
                seen |= counts > 0
                batch.seen_mask = seen.to(dev)
                batch.repetition = torch.tensor([p.repetition_penalty for p in params], dtype=torch.float32, device=dev)
        rows, banned = [], []
        for i, s in enumerate(states):
            p = s.params
            if len(s.token_ids) - s.num_prompt_tokens < p.min_tokens:
                ids = set(p.stop_token_ids) | (set() if p.ignore_eos else set(p._eos_token_ids))
                rows.append(i)
                banned.append(sorted(t for t in ids if 0 <= t < vocab))
        if rows:
            batch.min_tokens_rows, batch.min_tokens_banned = rows, banned
        ks = [p.logprobs for p in params if p.logprobs is not None]
        batch.max_logprobs = max(ks) if ks else None
        return batch
