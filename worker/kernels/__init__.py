"""Triton kernels of the worker's hot path: paged attention, KV-cache writes, norms, rotary, activation,
fused mixture of experts (the decode GEMV is imported from its module, ``worker.kernels.decode_gemv``,
whose name it shares).

Every public function takes torch tensors and launches Triton kernels without host<->device
synchronisation, so it can be captured in a CUDA graph. Names resolve lazily: importing this package
does not import Triton (or compile anything) until a kernel is first asked for, which keeps the
package importable on machines without Triton and lets a test process choose Triton's interpreter
(``TRITON_INTERPRET=1``) before the kernels are defined.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "reshape_and_cache": "worker.kernels.kv_cache",
    "unified_attention": "worker.kernels.attention",
    "rms_norm": "worker.kernels.norm",
    "fused_add_rms_norm": "worker.kernels.norm",
    "fused_add_rms_norm_": "worker.kernels.norm",
    "gemma_rms_norm": "worker.kernels.norm",
    "gemma_add_rms_norm": "worker.kernels.norm",
    "rotary_embedding": "worker.kernels.rotary",
    "silu_and_mul": "worker.kernels.activation",
    "gelu_tanh_and_mul": "worker.kernels.activation",
    "fused_moe": "worker.kernels.moe_gemm",
    "apply_token_bitmask_": "worker.kernels.token_bitmask",
    "KernelInputError": "worker.kernels.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
