"""Quantized projection layers: what replaces ``nn.Linear`` in a quantized model.

Each layer registers its tensors under the names the checkpoint uses, so the loader fills them in
place, including fused projections (qkv, gate_up) from the checkpoint's per-projection tensors:
``placer`` says where (and how) one shard's tensor lands. ``finalize`` then turns the checkpoint's
layout into the one the forward reads.

Forward paths: on CUDA, FP8 GEMMs through ``torch._scaled_mm`` with dynamic per-token activation
scales (Hopper and Ada; block-scaled FP8 and INT4 through Triton), and on any device a
de-quantizing reference (the weight expanded to the activation dtype, then a plain matmul): the CPU
path and the oracle of the kernels.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from worker.errors import ModelLoadError
from worker.model.quant import packing
from worker.model.quant.config import QuantConfig

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
Placer = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# a row-parallel rank's per-channel amax -> the maximum over the ranks (FP8 at load under tensor
# parallelism), so every rank scales its part of a row as one GPU would scale the whole row
AmaxReduce = Callable[[torch.Tensor], torch.Tensor]


# Activation quantization on CUDA in one Triton kernel (worker/kernels/fp8_quant.py); 0: the torch
# operations below, the same bits in eight kernels (kept for A/B timing).
FP8_QUANT_KERNEL = os.environ.get("WARD_FP8_QUANT_KERNEL", "1") != "0"
# torch._scaled_mm's fast accumulation (the tensor cores' own accumulator between promotions to
# float32, as the FP8 GEMMs of CUTLASS, FBGEMM and vLLM run): +5% on the FP8 throughput rows on an
# H100 (2026-12-07), products within 1.3% of the precise ones; 0 restores the precise accumulation.
FP8_FAST_ACCUM = os.environ.get("WARD_FP8_FAST_ACCUM", "1") != "0"
# The per-row quantization of a W8A8 projection's input done by the kernel that makes the input (the
# RMSNorm before qkv and gate_up, the SiLU-and-mul before down_proj: one launch instead of two, the
# bf16 activation never written): +1.5% on 1,000 x 256/256, +2.8% on 1,000 x 1,024/128, +1.1% on mixed
# on an H100 (2026-12-07); 0 restores a quantization launch in each projection (A/B timing).
FP8_FUSED_INPUT = os.environ.get("WARD_FP8_FUSED_INPUT", "1") != "0"


@dataclass(frozen=True)
class Fp8Activation:
    """A W8A8 projection's input already quantized per row by the kernel before it (the norm's or the
    activation's, ``rms_norm_fp8`` / ``silu_and_mul_fp8``): e4m3 ``codes`` [T, K], float32 ``scales``
    [T, 1], and the activations' dtype, which the projection's output takes. Passed to the layer's
    call (not to a method), so hooks on the layer (the tensor-parallel all-reduce) still run."""

    codes: torch.Tensor
    scales: torch.Tensor
    dtype: torch.dtype


def _cuda_fp8_ok(device: torch.device) -> bool:
    """FP8 tensor cores: Ada (8.9) and Hopper (9.0) or later."""
    return device.type == "cuda" and _capability(device.index) >= (8, 9)


@functools.lru_cache(maxsize=None)
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def quantize_fp8_per_channel(w: torch.Tensor, reduce: AmaxReduce | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (e4m3 [out, in], float32 scales [out, 1]) with w ~= q * scale."""
    amax = w.abs().amax(dim=1, keepdim=True).float()
    amax = (reduce(amax) if reduce is not None else amax).clamp(min=1e-12)
    scale = amax / FP8_MAX
    return (w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def quantize_fp8_per_token(x: torch.Tensor, static_scale: torch.Tensor | None = None):
    """[T, K] -> (e4m3 [T, K], float32 [T, 1]) dynamic per-token scales (or one static scale)."""
    if static_scale is not None:
        scale = static_scale.float().reshape(1, 1).expand(x.shape[0], 1)
    else:
        scale = (x.abs().amax(dim=-1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize_fp8_block(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
                         dtype: torch.dtype) -> torch.Tensor:
    """e4m3 [out, in] with one scale per (bn x bk) block -> [out, in] in ``dtype``."""
    bn, bk = block
    out_f, in_f = weight.shape
    s = scale_inv.float().repeat_interleave(bn, 0)[:out_f].repeat_interleave(bk, 1)[:, :in_f]
    return (weight.float() * s).to(dtype)


class QuantLinear(nn.Module):
    """Common part: sizes, the fused shards (output rows of each checkpoint projection), bias."""

    def __init__(self, in_features: int, out_features: int, shards: list[int], bias: bool, qc: QuantConfig,
                 dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.shards = shards
        self.starts = [sum(shards[:i]) for i in range(len(shards))]
        self.qc = qc
        self.dtype = dtype
        self._device = device
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None

    def _new(self, *shape, dtype) -> nn.Parameter:
        return nn.Parameter(torch.empty(*shape, dtype=dtype, device=self._device), requires_grad=False)

    def _shard(self, rows: slice | None) -> tuple[int, int, int]:
        """(shard index, first output row, rows) of a checkpoint tensor aimed at ``rows``."""
        if rows is None:
            return 0, 0, self.out_features
        i = self.starts.index(rows.start)
        return i, rows.start, rows.stop - rows.start

    def placer(self, kind: str, rows: slice | None, name: str) -> tuple[nn.Parameter, Placer]:
        if kind == "bias" and self.bias is not None:
            return self.bias, lambda t: (self.bias.data if rows is None else self.bias.data[rows], t)
        raise ModelLoadError(f"unexpected tensor {name!r} for a {self.qc.method} layer")

    def _add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, method={self.qc.method}"

    def fill_dummy(self, gen: torch.Generator) -> None:
        """Random quantized weights of the right layout (benchmarks with ``load_format=dummy``)."""
        raise NotImplementedError


class Fp8Linear(QuantLinear):
    """e4m3 weights [out, in] with per-tensor, per-channel or per-block float32 scales."""

    def __init__(self, in_features, out_features, shards, bias, qc, dtype, device) -> None:
        super().__init__(in_features, out_features, shards, bias, qc, dtype, device)
        self.weight = self._new(out_features, in_features, dtype=FP8)
        if qc.method == "fp8_block":
            bn, bk = qc.block_size
            self.weight_scale_inv = self._new(math.ceil(out_features / bn), math.ceil(in_features / bk),
                                              dtype=torch.float32)
        else:
            self.weight_scale = self._new(out_features, 1, dtype=torch.float32)
        self.input_scale = self._new(len(shards), dtype=torch.float32) if qc.static_input_scale else None

    @classmethod
    def from_float(cls, linear: nn.Linear, qc: QuantConfig, reduce: AmaxReduce | None = None) -> "Fp8Linear":
        """Quantizes a loaded float layer (``quantization="fp8"`` on a float checkpoint); ``reduce``
        joins a row-parallel rank's amax with the other ranks'."""
        w = linear.weight.data
        layer = cls(w.shape[1], w.shape[0], [w.shape[0]], linear.bias is not None, qc, w.dtype, w.device)
        q, scale = quantize_fp8_per_channel(w, reduce)
        layer.weight.data.copy_(q)
        layer.weight_scale.data.copy_(scale)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.data)
        return layer

    def placer(self, kind, rows, name):
        i, start, n = self._shard(rows)
        if kind == "weight":
            return self.weight, lambda t: (self.weight.data[start : start + n], t)
        if kind == "weight_scale_inv" and self.qc.method == "fp8_block":
            bn, _ = self.qc.block_size
            if start % bn or (n % bn and start + n != self.out_features):
                raise ModelLoadError(f"{name}: the fused projection's rows {start}..{start + n} do not fall on "
                                     f"weight_block_size {bn}-row blocks")
            lo, hi = start // bn, math.ceil((start + n) / bn)
            return self.weight_scale_inv, lambda t: (self.weight_scale_inv.data[lo:hi], t)
        if kind == "weight_scale" and self.qc.method != "fp8_block":
            # per-tensor scales ([] or [1]) become per-channel rows, so fused shards keep their own
            def place(t):
                t = t.reshape(-1, 1).float()
                return self.weight_scale.data[start : start + n], t.expand(n, 1) if t.shape[0] == 1 else t
            return self.weight_scale, place
        if kind == "input_scale" and self.input_scale is not None:
            k = len(self.shards) if rows is None else 1  # fused in the checkpoint (Phi-3): every shard's
            return self.input_scale, lambda t: (self.input_scale.data[i : i + k], t.reshape(1).float().expand(k))
        return super().placer(kind, rows, name)

    def finalize(self) -> None:
        if self.input_scale is not None:  # one static scale for the fused input: the largest
            scale = self.input_scale.data.max().reshape(1)
            del self.input_scale
            self.input_scale = nn.Parameter(scale, requires_grad=False)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.dtype
        if self.qc.method == "fp8_block":
            return dequantize_fp8_block(self.weight, self.weight_scale_inv, self.qc.block_size, dtype)
        return (self.weight.float() * self.weight_scale).to(dtype)

    def takes_fp8_activation(self, rows: int, x: torch.Tensor) -> bool:
        """Whether ``rows`` rows of x would be quantized per row with dynamic scales by ``forward`` (W8A8
        through ``torch._scaled_mm``, the one-kernel quantization), so the kernel before the layer may
        hand them over already quantized (``Fp8Activation``)."""
        return (FP8_FUSED_INPUT and self.qc.method != "fp8_block" and self.input_scale is None
                and x.dtype == self.dtype and _cuda_fp8_ok(x.device))

    def forward(self, x: torch.Tensor | Fp8Activation) -> torch.Tensor:
        if isinstance(x, Fp8Activation):
            return self._add_bias(self._scaled_mm(x.codes, x.scales, x.dtype))
        if _cuda_fp8_ok(x.device):
            block = self.qc.method == "fp8_block"
            group = self.qc.block_size[1] if block else None
            # block scales are dynamic per token and block: a static input scale does not apply
            xq, xs = _quantize_activation(x.reshape(-1, x.shape[-1]), group, None if block else self.input_scale)
            if block:
                from worker.kernels.fp8_gemm import fp8_block_gemm

                y = fp8_block_gemm(xq, xs, self.weight, self.weight_scale_inv, self.qc.block_size, x.dtype)
            else:
                y = self._scaled_mm(xq, xs, x.dtype)
            return self._add_bias(y.reshape(*x.shape[:-1], -1))
        return nn.functional.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def _scaled_mm(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return torch._scaled_mm(codes, self.weight.t(), scale_a=scales, scale_b=self.weight_scale.reshape(1, -1),
                                out_dtype=dtype, use_fast_accum=FP8_FAST_ACCUM)

    def fill_dummy(self, gen):
        w = torch.empty(self.out_features, self.in_features, device=self.weight.device).uniform_(-0.02, 0.02, generator=gen)
        q, scale = quantize_fp8_per_channel(w)
        self.weight.data.copy_(q)
        if self.qc.method == "fp8_block":
            self.weight_scale_inv.data.fill_(float(scale.max()))
        else:
            self.weight_scale.data.copy_(scale)
        if self.input_scale is not None:
            self.input_scale.data.fill_(0.02)
        if self.bias is not None:
            self.bias.data.zero_()


def _quantize_activation(x: torch.Tensor, group: int | None,
                         static_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A CUDA activation [T, K] into e4m3 with its scales, per token (``group`` None) or per token and
    ``group``-column block."""
    if FP8_QUANT_KERNEL:
        from worker.kernels.fp8_quant import quantize_fp8_groups

        return quantize_fp8_groups(x.contiguous(), group, static_scale)
    if group is None:
        return quantize_fp8_per_token(x, static_scale)
    return quantize_fp8_per_token_block(x, group)


def quantize_fp8_per_token_block(x: torch.Tensor, block_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, K] -> (e4m3 [T, K], float32 [T, ceil(K / block_k)]): one scale per token and input block."""
    T, K = x.shape
    nb = math.ceil(K / block_k)
    pad = nb * block_k - K
    xf = nn.functional.pad(x.float(), (0, pad)).reshape(T, nb, block_k)
    scale = (xf.abs().amax(dim=-1) / FP8_MAX).clamp(min=1e-12)  # [T, nb]
    q = (xf / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).reshape(T, -1)[:, :K].to(FP8)
    return q, scale


class IntLinear(QuantLinear):
    """Weight-only INT4 (AWQ, GPTQ) or INT8 (GPTQ) with group-wise scales and zeros.

    Holds the checkpoint's tensors until ``finalize``, then Ward's layout (``packing``)."""

    def __init__(self, in_features, out_features, shards, bias, qc, dtype, device) -> None:
        super().__init__(in_features, out_features, shards, bias, qc, dtype, device)
        self.bits = qc.bits
        self.pack = 32 // qc.bits
        self.group_size = qc.group_size if qc.group_size > 0 else in_features
        if in_features % self.group_size or in_features % self.pack:
            raise ModelLoadError(f"quantization_config.group_size {qc.group_size}: in_features {in_features} is not "
                                 f"a multiple of it")
        for n in shards:
            if n % self.pack:
                raise ModelLoadError(f"output size {n} is not a multiple of {self.pack} (packed zeros)")
        self.num_groups = in_features // self.group_size
        g, o, p = self.num_groups, out_features, self.pack
        self.offsets: torch.Tensor | None = None
        if qc.method == "ward_int":  # already Ward's layout (import-gguf)
            scale_dtype = getattr(torch, qc.scale_dtype)
            self.qweight = self._new(in_features // p, o, dtype=torch.int32)
            self.scales = self._new(g, o, dtype=scale_dtype)
            if qc.zero_format == "offset":
                self.offsets = self._new(g, o, dtype=scale_dtype)
            else:
                self.zeros = self._new(g, o, dtype=torch.uint8)
            self.perm = None
            return
        if qc.method == "awq":
            self.qweight = self._new(in_features, o // p, dtype=torch.int32)
        else:
            self.qweight = self._new(in_features // p, o, dtype=torch.int32)
            self.g_idx = self._new(len(shards), in_features, dtype=torch.int32)
        self.qzeros = self._new(g, o // p, dtype=torch.int32)
        # float16 as AWQ and GPTQ ship them (a bfloat16 copy would round them); kernels read float32
        self.scales = self._new(g, o, dtype=torch.float16)
        self.perm: torch.Tensor | None = None

    def placer(self, kind, rows, name):
        i, start, n = self._shard(rows)
        p = self.pack
        if self.qc.method == "ward_int" and kind in ("qweight", "scales", "zeros", "offsets") and kind in self._parameters:
            param = self._parameters[kind]
            return param, lambda t: (param.data[:, start : start + n], t)
        if kind == "qweight":
            if self.qc.method == "awq":
                return self.qweight, lambda t: (self.qweight.data[:, start // p : (start + n) // p], t)
            return self.qweight, lambda t: (self.qweight.data[:, start : start + n], t)
        if kind == "qzeros":
            return self.qzeros, lambda t: (self.qzeros.data[:, start // p : (start + n) // p], t)
        if kind == "scales":
            return self.scales, lambda t: (self.scales.data[:, start : start + n], t)
        if kind == "g_idx" and self.qc.method == "gptq":
            if rows is None:  # fused in the checkpoint (Phi-3): one input order for every shard
                return self.g_idx, lambda t: (self.g_idx.data, t.expand_as(self.g_idx))
            return self.g_idx, lambda t: (self.g_idx.data[i], t)
        return super().placer(kind, rows, name)

    def finalize(self, name: str = "") -> None:
        """Checkpoint layout -> Ward's: input rows packed in group order, zeros unpacked."""
        qc = self.qc
        if qc.method == "ward_int":
            for attr in ("qweight", "scales", "zeros", "offsets"):
                if attr in self._parameters:
                    t = self._parameters.pop(attr).data
                    if attr == "zeros" and int(t.max()) >= (1 << self.bits):
                        raise ModelLoadError(f"{name}.zeros: zero points outside the {self.bits}-bit range")
                    self.register_buffer(attr, t.contiguous())
            return
        if qc.method == "awq":
            values = packing.awq_unpack(self.qweight.data)  # [in, out]
            zeros = packing.awq_unpack(self.qzeros.data)
            perm = None
        else:
            zeros = packing.unpack_cols(self.qzeros.data, self.bits) + qc.zero_offset
            g_idx = self.g_idx.data
            if any(not torch.equal(g_idx[0], g_idx[j]) for j in range(1, g_idx.shape[0])):
                raise ModelLoadError(f"{name}: g_idx differs between the fused projections; one input order is needed")
            try:
                perm = packing.group_order(g_idx[0], self.group_size, self.num_groups)
            except ValueError as exc:
                raise ModelLoadError(f"{name}.g_idx: {exc}") from None
            values = packing.unpack_rows(self.qweight.data, self.bits) if perm is not None else None
        # GPTQ v1 stores zero - 1 in the bit width, so a zero of 0 wraps and loads as 2^bits, as every
        # v1 reader computes it: allowed (uint8 holds it)
        if int(zeros.max()) > (1 << self.bits) - 1 + qc.zero_offset or int(zeros.min()) < 0:
            raise ModelLoadError(f"{name}.qzeros: zero points outside the {self.bits}-bit range")
        if values is None:  # GPTQ rows in order: already Ward's layout
            qweight = self.qweight.data
        else:
            qweight = packing.pack_rows(values if perm is None else values[perm], self.bits)
        scales = self.scales.data
        for attr in ("qweight", "qzeros", "g_idx", "scales"):
            self._parameters.pop(attr, None)
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("zeros", zeros.to(torch.uint8).contiguous())
        self.perm = perm

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """W [in, out] with rows in group order (the reference of the kernels)."""
        return packing.dequantize_int(self.qweight, self.scales, getattr(self, "zeros", None), self.bits,
                                      self.group_size, dtype or self.dtype, self.offsets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if self.perm is not None:
            x2 = x2.index_select(1, self.perm)
        if x.device.type == "cuda":  # INT4 and INT8 through the de-quantizing Triton GEMM / GEMV
            from worker.kernels.int4_gemm import int_matmul

            y = int_matmul(x2, self.qweight, self.scales, getattr(self, "zeros", None), self.group_size,
                           bits=self.bits, offsets=self.offsets)
        else:
            y = x2 @ self.dequantized_weight(x.dtype)
        return self._add_bias(y.reshape(*x.shape[:-1], self.out_features))

    def fill_dummy(self, gen):
        """Random codes and zero points, scales that keep de-quantized weights near the float dummy
        range (|w| <= 16 x 0.002), GPTQ's input order as written (no act-order): the checkpoint's layout, so
        ``finalize`` converts it as it would a real file (benchmarks of 8B/70B shapes without one)."""
        dev = self.scales.device

        def codes(param: nn.Parameter | None) -> None:
            if param is not None:
                param.data.copy_(torch.randint(-(2**31), 2**31 - 1, tuple(param.shape), generator=gen,
                                               dtype=torch.int32, device=dev))

        def small(param: nn.Parameter | None) -> None:
            if param is not None:
                param.data.copy_(torch.empty(tuple(param.shape), device=dev).uniform_(0.001, 0.002, generator=gen))

        if self.qc.method == "ward_int":
            codes(self._parameters.get("qweight"))
            small(self._parameters.get("scales"))
            small(self._parameters.get("offsets"))
            zeros = self._parameters.get("zeros")
            if zeros is not None:
                zeros.data.fill_(1 << (self.bits - 1))
            return
        codes(self.qweight)
        codes(self.qzeros)
        small(self.scales)
        if self.qc.method == "gptq":
            order = torch.arange(self.in_features, device=dev, dtype=torch.int32) // self.group_size
            self.g_idx.data.copy_(order.expand_as(self.g_idx))
