"""The engine's configuration: one validated dataclass (ValueError on bad values, never assert)."""
from __future__ import annotations

from dataclasses import dataclass

BACKEND_NAMES = ("auto", "torch", "triton", "flash_attn", "flashinfer")  # attention backends
QUANTIZATION_CHOICES = ("auto", "fp8", "none")  # auto: as the checkpoint ships; fp8: quantize a float one at load
KV_CACHE_DTYPES = ("auto", "fp8")  # auto: the model's dtype; fp8: e4m3 with per-tensor or per-head scales


@dataclass
class EngineConfig:
    model: str = "smollm2-135m-instruct"  # a model directory or a known default name
    served_model_name: str | None = None
    dtype: str = "auto"  # auto, float32, bfloat16, float16
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    load_format: str = "auto"  # auto (safetensors), dummy (random weights of the real architecture)
    seed: int = 0
    max_model_len: int | None = None  # None: the model's own context length
    block_size: int = 16
    # KV pool size: an explicit block count, else a byte budget, else a share of free GPU memory
    num_kv_blocks: int | None = None
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 16384  # offline default; `ward worker` uses 8192 for latency
    enable_chunked_prefill: bool = True
    # while any request is decoding, a step holds at most this many tokens (None: max_num_batched_tokens
    # always); prefill chunks shrink so decodes keep a steady pace under load
    decode_step_tokens: int | None = None
    # > 0: admission keeps KV room for every running request's prompt and first this-many outputs, so
    # a new request does not force a running one out to be recomputed; 0 (default, as vLLM): admit
    # while blocks are free and preempt when they run out
    reserved_output_tokens: int = 0
    # N: once N requests run, a further one is admitted only while the KV pool holds every running
    # request's whole output (max_tokens), so max_num_seqs can be large without preempting; None: off
    reserve_beyond_seqs: int | None = None
    attention_backend: str = "auto"  # auto, torch, triton, flash_attn, flashinfer
    enforce_eager: bool = False  # True: no CUDA graphs
    cuda_graph_max_batch: int = 512
    # prepare step N+1 while step N runs: None = on GPUs only; True forces it (also on CPU, for tests)
    async_scheduling: bool | None = None
    # tensor parallelism: one model over this many GPUs (ranks), one process per rank > 0; on the
    # CPU the ranks talk over gloo (tests). A collective or a rank's answer waits at most this long.
    tensor_parallel_size: int = 1
    distributed_timeout: float = 300.0  # seconds
    quantization: str = "auto"  # auto, fp8, none (worker/model/quant)
    kv_cache_dtype: str = "auto"  # auto, fp8

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.load_format not in ("auto", "safetensors", "dummy"):
            raise ValueError(f"load_format must be auto, safetensors or dummy, got {self.load_format!r}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ValueError("kv_cache_memory_bytes must be positive")
        if not 0.05 <= self.gpu_memory_utilization <= 0.99:
            raise ValueError(f"gpu_memory_utilization must be in [0.05, 0.99], got {self.gpu_memory_utilization}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.decode_step_tokens is not None and self.decode_step_tokens < 1:
            raise ValueError(f"decode_step_tokens must be >= 1, got {self.decode_step_tokens}")
        if self.reserved_output_tokens < 0:
            raise ValueError(f"reserved_output_tokens must be >= 0, got {self.reserved_output_tokens}")
        if self.reserve_beyond_seqs is not None and self.reserve_beyond_seqs < 1:
            raise ValueError(f"reserve_beyond_seqs must be >= 1, got {self.reserve_beyond_seqs}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.distributed_timeout <= 0:
            raise ValueError(f"distributed_timeout must be positive, got {self.distributed_timeout}")
        if self.attention_backend not in BACKEND_NAMES:
            raise ValueError(f"attention_backend must be one of {', '.join(BACKEND_NAMES)}, got {self.attention_backend!r}")
        if self.quantization not in QUANTIZATION_CHOICES:
            raise ValueError(f"quantization must be one of {', '.join(QUANTIZATION_CHOICES)}, got {self.quantization!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")
