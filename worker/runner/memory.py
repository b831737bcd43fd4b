"""How much GPU memory the KV pool may take, measured rather than guessed."""
from __future__ import annotations

import logging

import numpy as np
import torch

from worker.errors import ModelLoadError
from worker.runner.cuda_graphs import DecodeGraphs

log = logging.getLogger("ward.worker.runner")


def profile_kv_budget(runner) -> int:
    """Bytes left for the KV pool: the card's share minus weights, the profiled activation peak of
    the widest step and the decode graphs (measured by capturing the largest one on a scratch cache)."""
    dev = runner.device
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(dev)
    weights = torch.cuda.memory_allocated(dev)
    n = min(runner.config.max_num_batched_tokens, runner.max_model_len)
    nb = -(-n // runner.block_size)
    scratch = runner.scratch_kv(1)
    b = runner.buffers
    b.input_ids_np[:n] = 0
    b.positions_np[:n] = np.arange(n)
    b.slot_mapping_np[:n] = -1
    b.query_start_np[:2] = [0, n]
    b.seq_lens_np[:1] = n
    b.block_tables_np[:1, :nb] = 0  # every logical block reads the one scratch block
    num_sample = min(n, runner.config.max_num_seqs)
    b.logits_idx_np[:num_sample] = np.arange(n - num_sample, n)
    b.upload(n, 1, num_sample)
    meta = runner.metadata(n, 1, n, n, [0, n], [n])
    with torch.inference_mode():
        hidden = runner.model(b.input_ids[:n], b.positions[:n], scratch, meta)
        runner.model.compute_logits(hidden.index_select(0, b.logits_idx[:num_sample])).float().softmax(-1)
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - weights
    del hidden, scratch
    graph_bytes = measure_graph_memory(runner) if runner.use_cuda_graphs else 0
    free, total = torch.cuda.mem_get_info(dev)
    others = total - free - torch.cuda.memory_reserved(dev)  # other processes on the card
    allowed = int(total * runner.config.gpu_memory_utilization)
    budget = allowed - others - weights - peak - graph_bytes
    log.info("memory: weights %.2f GiB, activation peak %.2f GiB, decode graphs %.2f GiB, KV budget %.2f GiB",
             weights / 2**30, peak / 2**30, graph_bytes / 2**30, budget / 2**30)
    if budget < runner.kv_block_bytes() * 2:
        raise ModelLoadError(
            f"the model does not fit: weights {weights / 2**30:.1f} GiB ({runner.weight_report['format']}) + activations {peak / 2**30:.1f} GiB "
            f"+ graphs {graph_bytes / 2**30:.1f} GiB leave no room for a KV cache within "
            f"{allowed / 2**30:.1f} GiB (gpu_memory_utilization={runner.config.gpu_memory_utilization})"
        )
    runner.memory_report = {"weights": weights, "activation_peak": peak, "graphs": graph_bytes, "kv_budget": budget}
    return budget

def measure_graph_memory(runner) -> int:
    """Memory the decode graphs will hold: capture the largest one on a scratch cache, then free it."""
    torch.cuda.synchronize(runner.device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(runner.device)
    probe = DecodeGraphs(runner.device)
    saved = runner.kv_caches
    runner.kv_caches = runner.scratch_kv(2)
    size = runner.graph_max_batch()
    probe.capture([(size, runner.max_model_len)], runner.decode_forward)
    used = torch.cuda.memory_reserved(runner.device) - before
    del probe
    runner.kv_caches = saved
    torch.cuda.synchronize(runner.device)
    torch.cuda.empty_cache()
    return max(used, 0) + (64 << 20)  # headroom for the smaller graphs' own bookkeeping


_FLOAT_CODES = ("F32", "F16", "BF16", "F64")
_CODE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U32": 4, "I16": 2, "I8": 1, "U8": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "BOOL": 1}


def checkpoint_weight_bytes(files: list[str], dtype: torch.dtype) -> int:
    """Bytes the checkpoint's tensors take on the device, read from the safetensors headers only:
    float tensors at ``dtype``, packed integers and FP8 as stored."""
    import json
    import os
    import struct

    elem = torch.tensor([], dtype=dtype).element_size()
    total = 0
    for path in files:
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > os.fstat(f.fileno()).st_size - 8:  # never read (allocate) past the file
                    raise ValueError(f"header of {length} bytes in a smaller file")
                header = json.loads(f.read(length))
        except (struct.error, ValueError) as exc:  # a truncated copy, or another file under this name
            raise ModelLoadError(f"{path}: not a readable safetensors file (bad header: {exc})") from exc
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            numel = int(np.prod(entry["shape"])) if entry["shape"] else 1
            code = entry["dtype"]
            total += numel * (elem if code in _FLOAT_CODES else _CODE_BYTES.get(code, 1))
    return total


def check_weights_fit(runner, weight_bytes: int, weight_format: str) -> None:
    """Refuses at start, with the numbers, a model whose weights alone exceed the card's share."""
    dev = runner.device
    free, total = torch.cuda.mem_get_info(dev)
    util = runner.config.gpu_memory_utilization
    others = total - free - torch.cuda.memory_reserved(dev)
    allowed = int(total * util) - others
    if weight_bytes > allowed:
        raise ModelLoadError(
            f"the model does not fit: its weights take {weight_bytes / 2**30:.1f} GiB ({weight_format}) but "
            f"{dev} leaves {allowed / 2**30:.1f} GiB to this worker ({util} of {total / 2**30:.1f} GiB, "
            f"{others / 2**30:.1f} GiB held by other processes); a quantized checkpoint (FP8, AWQ, GPTQ) or "
            f"tensor parallelism would be needed"
        )
