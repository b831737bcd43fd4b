"""FP8 experts for a mixture-of-experts layer (Qwen3-MoE-FP8, compressed-tensors FP8 Mixtral).

The stacked expert weights of ``worker.model.moe.SparseMoe`` held in e4m3 with the checkpoint's
scales: 128x128 blocks (``weight_scale_inv``, quant_method "fp8" with ``weight_block_size``) or
one per output channel (``weight_scale``, per-tensor scales spread over the channels so gate and up
keep their own). The router stays in the model's dtype. On CUDA the fused MoE kernel de-quantizes
tiles as it reads them (weights cross memory as one byte each); elsewhere the reference
de-quantizes each expert a token picked. A float checkpoint with ``quantization="fp8"`` gets
per-channel scales at load.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from worker.errors import ModelLoadError
from worker.model.moe import SparseMoe
from worker.model.quant.config import QuantConfig
from worker.model.quant.linear import FP8, FP8_MAX, Placer

_GATE, _UP, _DOWN = ("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")


class Fp8SparseMoe(SparseMoe):
    def __init__(self, hidden_size: int, moe, ops, qc: QuantConfig, device: torch.device, dtype: torch.dtype):
        nn.Module.__init__(self)
        self.moe, self.ops, self.qc = moe, ops, qc
        E, inter = moe.num_experts, moe.intermediate_size
        self.block = qc.block_size if qc.method == "fp8_block" else None
        if self.block is not None and inter % self.block[0]:
            raise ModelLoadError(f"quantization_config.weight_block_size {list(self.block)}: the experts' gate and up "
                                 f"rows ({inter} each) do not fall on whole blocks")
        self.gate = nn.Linear(hidden_size, E, bias=False, device=device, dtype=dtype)
        self.w13 = self._param(E, 2 * inter, hidden_size, dtype=FP8, device=device)
        self.w2 = self._param(E, hidden_size, inter, dtype=FP8, device=device)
        self.w13_scale = self._param(*self._scale_shape(2 * inter, hidden_size), device=device)
        self.w2_scale = self._param(*self._scale_shape(hidden_size, inter), device=device)
        self._cuda_kernel: bool | None = None

    @staticmethod
    def _param(*shape, device, dtype=torch.float32) -> nn.Parameter:
        return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device), requires_grad=False)

    def _scale_shape(self, n: int, k: int) -> tuple[int, int, int]:
        if self.block is None:
            return self.moe.num_experts, n, 1
        bn, bk = self.block
        return self.moe.num_experts, math.ceil(n / bn), math.ceil(k / bk)

    @classmethod
    def from_float(cls, moe: SparseMoe, qc: QuantConfig, reduce=None) -> "Fp8SparseMoe":
        """Quantizes loaded float experts per output channel (``quantization="fp8"``); ``reduce``
        joins a tensor-parallel rank's amax of its down columns with the other ranks'."""
        w13 = moe.w13.data
        layer = cls(w13.shape[2], moe.moe, moe.ops, qc, w13.device, w13.dtype)
        layer.gate.weight.data.copy_(moe.gate.weight.data)
        for name in ("w13", "w2"):
            w = getattr(moe, name).data
            amax = w.abs().amax(dim=2, keepdim=True).float()
            if name == "w2" and reduce is not None:  # row-parallel: each rank holds part of a row
                amax = reduce(amax)
            scale = (amax / FP8_MAX).clamp(min=1e-12)
            getattr(layer, name).data.copy_((w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8))
            getattr(layer, f"{name}_scale").data.copy_(scale)
        return layer

    # ---- loading -----------------------------------------------------------------------------
    def expert_placer(self, expert: int, which: str, kind: str, name: str) -> tuple[nn.Parameter, Placer] | None:
        """Where one expert's checkpoint tensor goes: (parameter, placer), or None to skip it."""
        inter = self.moe.intermediate_size
        if which in _DOWN:
            target, rows = "w2", slice(None)
        else:
            target, rows = "w13", slice(0, inter) if which in _GATE else slice(inter, 2 * inter)
        weight, scale = getattr(self, target), getattr(self, f"{target}_scale")
        if kind == "weight":
            return weight, lambda t: (weight.data[expert, rows], t)
        if kind == "input_scale":  # static activation scales: the kernel keeps activations in float
            return None
        if self.block is not None and kind == "weight_scale_inv":
            bn = self.block[0]
            srows = rows if rows.start is None else slice(rows.start // bn, rows.stop // bn)
            return scale, lambda t: (scale.data[expert, srows], t)
        if self.block is None and kind == "weight_scale":
            def place(t: torch.Tensor):
                dst = scale.data[expert, rows]
                t = t.reshape(-1, 1).float()
                return dst, t.expand(dst.shape[0], 1) if t.shape[0] == 1 else t
            return scale, place
        raise ModelLoadError(f"unexpected tensor {name!r} for {self.qc.method} experts")

    def fill_dummy(self, gen: torch.Generator) -> None:
        """Random e4m3 codes and scales of the checkpoint's layout (``load_format="dummy"``)."""
        for name in ("w13", "w2"):
            w = getattr(self, name)
            codes = torch.randint(-100, 100, w.shape, generator=gen, device=w.device, dtype=torch.int16)
            w.data.copy_((codes.float() / 100.0 * 64).to(FP8))
            getattr(self, f"{name}_scale").data.fill_(0.02 / 64)

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = self.ops.select_experts(self.gate(x), self.moe.top_k, self.moe.renormalize)
        if x.is_cuda and self._kernel_ok(x.device):
            from worker.kernels.moe_gemm import fused_moe

            return fused_moe(x, self.w13, self.w2, weights, ids, self.w13_scale, self.w2_scale, self.block)
        from worker.model.ops import fused_moe as reference

        return reference(x, self.w13, self.w2, weights, ids, self.w13_scale, self.w2_scale, self.block)

    def _kernel_ok(self, device: torch.device) -> bool:
        """Triton reads e4m3 on compute capability 8.9 and later (Ada, Hopper, Blackwell)."""
        if self._cuda_kernel is None:
            self._cuda_kernel = torch.cuda.get_device_capability(device) >= (8, 9)
        return self._cuda_kernel

    def dequantized(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(w13, w2) in ``dtype``: for tests and the reference."""
        from worker.model.ops import dequantize_expert

        E = self.moe.num_experts
        return tuple(torch.stack([dequantize_expert(getattr(self, n)[e], getattr(self, f"{n}_scale")[e], self.block, dtype)
                                  for e in range(E)]) for n in ("w13", "w2"))

    def extra_repr(self) -> str:
        return f"experts={self.moe.num_experts}, top_k={self.moe.top_k}, method={self.qc.method}"
