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

    def _ops(self):
        if self.device.type == "cuda" and self.config.attention_backend != "torch":
            try:
                from worker.kernels import model_ops

                return model_ops
            except ImportError as exc:  # the Triton path is optional only where Triton is missing
                log.warning("Triton kernels unavailable (%s); using torch ops", exc)
        from worker.model import ops

        return ops

    # ---- KV cache --------------------------------------------------------------------------
    def kv_block_bytes(self) -> int:
        s = self.spec
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * s.num_layers * self.block_size * s.num_kv_heads * s.head_dim * elem

    def determine_num_blocks(self) -> int:
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

    def _profile_free_gpu_memory(self) -> int:
        """Memory left for the KV pool: the card's share minus weights and a profiled activation peak."""
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        n = min(self.config.max_num_batched_tokens, self.max_model_len)
        ids = torch.zeros(n, dtype=torch.long, device=self.device)
        pos = torch.arange(n, device=self.device) % self.max_model_len
        scratch = [(torch.empty(1, self.block_size, self.spec.num_kv_heads, self.spec.head_dim, dtype=self.dtype, device=self.device),) * 2
                   for _ in range(self.spec.num_layers)]
        meta = AttentionMetadata(
            num_tokens=n, num_reqs=1,
            query_start_loc=torch.tensor([0, n], dtype=torch.int32, device=self.device),
            seq_lens=torch.tensor([n], dtype=torch.int32, device=self.device),
            block_tables=torch.zeros(1, 1, dtype=torch.int32, device=self.device),
            slot_mapping=torch.full((n,), -1, dtype=torch.long, device=self.device),
            max_query_len=n, max_seq_len=n, query_start_loc_cpu=[0, n], seq_lens_cpu=[n],
        )
        # Attention over a fake one-block context would be wrong but costs the same memory order;
        # the profile only needs the activation peak of the widest step.
        try:
            hidden = self.model(ids, pos, scratch, meta)
            self.model.compute_logits(hidden[-min(n, self.config.max_num_seqs):])
        except Exception as exc:
            log.debug("profile forward failed (%s); falling back to a static estimate", exc)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        used_by_others = total - free - torch.cuda.memory_reserved(self.device)
        budget = int(total * self.config.gpu_memory_utilization) - used_by_others - peak
        del scratch
        torch.cuda.empty_cache()
        if budget <= self.kv_block_bytes():
            raise ModelLoadError(
                f"the model does not fit: weights and activations need {peak / 2**30:.1f} GiB of the "
                f"{total * self.config.gpu_memory_utilization / 2**30:.1f} GiB allowed "
                f"(gpu_memory_utilization={self.config.gpu_memory_utilization})"
            )
        return budget

    def initialize_kv_cache(self, num_blocks: int) -> None:
        s = self.spec
        shape = (num_blocks, self.block_size, s.num_kv_heads, s.head_dim)
        self.kv_caches = [
            (torch.zeros(shape, dtype=self.dtype, device=self.device), torch.zeros(shape, dtype=self.dtype, device=self.device))
            for _ in range(s.num_layers)
        ]

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

    @torch.inference_mode()
    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        self._update_states(sched)
        if sched.is_empty:
            return ModelRunnerOutput({})
        order = [c.req_id for c in sched.cached_reqs] + [n.req_id for n in sched.new_reqs]
        num_reqs = len(order)
        bs = self.block_size
        q_lens = np.array([sched.num_scheduled_tokens[r] for r in order], dtype=np.int64)
        query_start = np.zeros(num_reqs + 1, dtype=np.int64)
        np.cumsum(q_lens, out=query_start[1:])
        T = int(query_start[-1])
        input_ids = np.empty(T, dtype=np.int64)
        positions = np.empty(T, dtype=np.int64)
        seq_lens = np.empty(num_reqs, dtype=np.int64)
        max_blocks = max(len(self.requests[r].block_ids) for r in order)
        block_table = np.zeros((num_reqs, max_blocks), dtype=np.int64)
        sampling_rows: list[int] = []
        for i, rid in enumerate(order):
            st = self.requests[rid]
            s, n, nc = int(query_start[i]), int(q_lens[i]), st.num_computed_tokens
            input_ids[s : s + n] = st.token_ids[nc : nc + n]
            positions[s : s + n] = np.arange(nc, nc + n)
            seq_lens[i] = nc + n
            block_table[i, : len(st.block_ids)] = st.block_ids
            if nc + n >= len(st.token_ids):
                sampling_rows.append(i)
        req_of_token = np.repeat(np.arange(num_reqs), q_lens)
        slot_mapping = block_table[req_of_token, positions // bs] * bs + positions % bs

        dev = self.device
        meta = AttentionMetadata(
            num_tokens=T,
            num_reqs=num_reqs,
            query_start_loc=torch.from_numpy(query_start).to(dev, torch.int32),
            seq_lens=torch.from_numpy(seq_lens).to(dev, torch.int32),
            block_tables=torch.from_numpy(block_table).to(dev, torch.int32),
            slot_mapping=torch.from_numpy(slot_mapping).to(dev),
            max_query_len=int(q_lens.max()),
            max_seq_len=int(seq_lens.max()),
            query_start_loc_cpu=query_start.tolist(),
            seq_lens_cpu=seq_lens.tolist(),
        )
        hidden = self.model(torch.from_numpy(input_ids).to(dev), torch.from_numpy(positions).to(dev), self.kv_caches, meta)
        if not sampling_rows:
            return ModelRunnerOutput({})
        last_token = torch.from_numpy(query_start[1:][sampling_rows] - 1).to(dev)
        logits = self.model.compute_logits(hidden.index_select(0, last_token)).float()
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
