"""Dense projections that read their weights through the Triton decode GEMV at decode sizes.

``use_decode_gemv`` swaps a model's float ``nn.Linear`` projections (qkv, o, gate_up, down) for
``DecodeGemvLinear`` after loading, from outside the model, as the quantized layers are swapped in.
The new layer keeps the same parameters (no copy) and takes the GEMV for inputs of at most 8 rows
in float16/bfloat16 on CUDA (the decode and latency batches); other inputs go to ``F.linear``
(cuBLAS). A gate_up layer also offers ``forward_silu_and_mul``: the GEMV with the SiLU epilogue,
which the Llama MLP uses when its gate_up layer has it.

``WARD_DECODE_GEMV`` chooses the projections: ``0`` none (A/B timing), ``all``, or a comma list of
``qkv``, ``o``, ``gate_up``, ``down``; unset, ``DEFAULT_PROJECTIONS`` where the runner uses the
Triton ops on CUDA. Under Triton's interpreter (``TRITON_INTERPRET=1``) CPU tensors take
the GEMV too, so the swapped model can be checked on a machine without a GPU.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from worker.kernels.decode_gemv_config import MAX_ROWS

PROJECTIONS = {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj", "gate_up": "mlp.gate_up_proj",
               "down": "mlp.down_proj"}
DEFAULT_PROJECTIONS = ("qkv", "o", "gate_up", "down")
_GEMV_DTYPES = (torch.float16, torch.bfloat16)  # float32 keeps cuBLAS (and its exact-parity tests)
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def decode_gemv_projections() -> tuple[str, ...]:
    """The projections ``WARD_DECODE_GEMV`` names (ValueError for an unknown one)."""
    value = os.environ.get("WARD_DECODE_GEMV", "").strip()
    if value in ("", "1"):
        return DEFAULT_PROJECTIONS
    if value == "0":
        return ()
    if value == "all":
        return tuple(PROJECTIONS)
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in PROJECTIONS]
    if unknown:
        raise ValueError(f"WARD_DECODE_GEMV names unknown projections {unknown}; known: 0, all, "
                         f"or a comma list of {', '.join(PROJECTIONS)}")
    return names


class DecodeGemvLinear(nn.Linear):
    """An ``nn.Linear`` (same ``weight`` [out, in] and ``bias``) whose decode-sized calls run the GEMV."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a second weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def _gemv_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        """x as [rows, in] when the GEMV takes it, else None."""
        if x.dtype != self.weight.dtype or not (x.is_cuda and x.dtype in _GEMV_DTYPES or _INTERPRETED):
            return None
        if x.numel() == 0 or x.numel() > MAX_ROWS * self.in_features:
            return None
        x2 = x.reshape(-1, self.in_features)
        return x2 if x2.stride(-1) == 1 else x2.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self._gemv_rows(x)
        if x2 is None:
            return F.linear(x, self.weight, self.bias)
        from worker.kernels.decode_gemv import decode_gemv

        return decode_gemv(x2, self.weight, self.bias).reshape(*x.shape[:-1], self.out_features)

    def forward_silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` of this fused gate_up projection ([..., in] -> [..., out / 2])."""
        x2 = self._gemv_rows(x)
        if x2 is None:
            from worker.kernels.activation import silu_and_mul

            return silu_and_mul(F.linear(x, self.weight, self.bias))
        from worker.kernels.decode_gemv import decode_gemv

        return decode_gemv(x2, self.weight, self.bias, silu=True).reshape(*x.shape[:-1], self.out_features // 2)


def use_decode_gemv(model: nn.Module, projections: tuple[str, ...] | None = None) -> int:
    """Swaps the named float projections of every decoder layer (default: ``WARD_DECODE_GEMV``'s) for
    ``DecodeGemvLinear`` (quantized layers and MoE experts are left alone) and reserves the GEMV's
    workspace, so that nothing is allocated during CUDA-graph capture. Returns the number of layers
    swapped."""
    names = decode_gemv_projections() if projections is None else projections
    if not names:
        return 0
    from worker.kernels.decode_gemv import reserve_workspace

    swapped = 0
    for layer in model.layers:
        for name in (PROJECTIONS[n] for n in names):
            try:
                module = layer.get_submodule(name)
            except AttributeError:
                continue
            if type(module) is not nn.Linear:
                continue
            parent, _, attr = name.rpartition(".")
            setattr(layer.get_submodule(parent), attr, DecodeGemvLinear(module))
            reserve_workspace(module.weight)
            if name == "mlp.gate_up_proj" and module.out_features % 2 == 0:
                reserve_workspace(module.weight, silu=True)
            swapped += 1
    return swapped
