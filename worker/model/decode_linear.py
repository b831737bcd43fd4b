"""Dense projections that read their weights through the Triton decode GEMV at decode sizes.

``use_decode_gemv`` swaps a model's float ``nn.Linear`` projections (qkv, o, gate_up, down) for
``DecodeGemvLinear`` after loading, from outside the model, as the quantized layers are swapped in.
The new layer keeps the same parameters (no copy) and takes the GEMV for inputs of at most 8 rows
in float16/bfloat16 on CUDA (the decode and latency batches); other inputs go to ``F.linear``
(cuBLAS). A gate_up layer also offers ``forward_silu_and_mul``: the GEMV with the SiLU epilogue,
which the Llama MLP uses when its gate_up layer has it. FP8 projections with per-channel scales
(``Fp8Linear``, checkpoints or FP8 at load) become ``Fp8DecodeGemvLinear``: decode-sized inputs go
through the same GEMV reading the e4m3 weights (the activations stay in their dtype), larger ones
through the layer's W8A8 path.

``WARD_DECODE_GEMV`` chooses the projections: ``0`` none (A/B timing), ``all``, or a comma list of
``qkv``, ``o``, ``gate_up``, ``down``; unset, ``DEFAULT_PROJECTIONS`` where the runner uses the
Triton ops on CUDA. Under Triton's interpreter (``TRITON_INTERPRET=1``) CPU tensors take the GEMV
too, so the swapped model can be checked on a machine without a GPU.

``WARD_NORM_GEMV=1`` (opt-in: on an H100 it did not pay at batch 1) also folds the RMSNorms into the
GEMVs around them on decode steps (``enable_norm_fusion``): o_proj adds the residual and writes
per-tile sums of squares, and gate_up normalises its input from them; likewise down_proj and the
next layer's qkv. Two norm launches fewer a layer.

``WARD_FP8_GEMV_ROWS`` (0-8, default 8) bounds the rows an FP8 projection's GEMV takes: more go
through W8A8 (``torch._scaled_mm``), with their input quantized by the norm or the SiLU before it.

``WARD_FP8_GEMV_W8A8`` makes the FP8 GEMV W8A8 as well: its input quantized per row and the dot
taken e4m3 by e4m3 on the warpgroup MMA, no weight widened (13-18% less time a layer's projections on
an H100, bench/gemv_fp8_math.py), with the numerics of the W8A8 path above 8 rows. ``all``: every
projection (the norm quantizes qkv's and gate_up's rows, the SiLU down_proj's after an unfused
gate_up, o_proj its own): on an H100 the launches that adds left the latency test 1.3% faster and
batch 1 3.4% slower. ``normed`` (the default): only qkv and gate_up, and only in layers whose RMSNorm
before them quantizes their rows in the launch it makes anyway (the Llama family's; Gemma's widen),
gate_up keeping its SiLU epilogue, down_proj and o_proj widening: no launch added, and on an H100
the latency test 9-12% faster and batch 1 7% faster than widening every weight. ``0``: off (every FP8
GEMV widens its weights).
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from worker.kernels.decode_gemv_config import MAX_ROWS
from worker.model.quant import linear as fp8_linear
from worker.model.quant.linear import Fp8Activation, Fp8Linear

if TYPE_CHECKING:
    from worker.kernels.gemv_tuned import TunedShape

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

    def takes(self, rows: int, x: torch.Tensor) -> bool:
        """Whether ``rows`` rows of x's dtype and device go to the GEMV (decode sizes) rather than cuBLAS."""
        return _gemv_takes(rows, x, self.weight.dtype)

    def _gemv_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        return _gemv_rows(x, self.in_features, self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self._gemv_rows(x)
        if x2 is None:
            return F.linear(x, self.weight, self.bias)
        from worker.kernels.decode_gemv import decode_gemv

        return decode_gemv(x2, self.weight, self.bias).reshape(*x.shape[:-1], self.out_features)

    def forward_silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` of this fused gate_up projection ([..., in] -> [..., out / 2])."""
        return self._gated(x, gelu_tanh=False)

    def forward_gelu_tanh_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """``gelu_tanh(gate) * up`` (Gemma's GeGLU) of this fused gate_up projection."""
        return self._gated(x, gelu_tanh=True)

    def _gated(self, x: torch.Tensor, gelu_tanh: bool) -> torch.Tensor:
        x2 = self._gemv_rows(x)
        if x2 is None:
            return _gated_activation(gelu_tanh)(F.linear(x, self.weight, self.bias))
        from worker.kernels.decode_gemv import decode_gemv

        y = decode_gemv(x2, self.weight, self.bias, silu=True, gelu_tanh=gelu_tanh)
        return y.reshape(*x.shape[:-1], self.out_features // 2)

    def forward_add_residual(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(self(x) + residual, sums)`` for a decode-sized x (``takes``): the new residual of the layer
        and its per-tile sums of squares, for ``forward_rms_norm_silu_and_mul``."""
        from worker.kernels.decode_gemv import decode_gemv_add_residual

        x2 = self._gemv_rows(x)
        if x2 is None:
            raise ValueError("forward_add_residual takes decode-sized inputs only (see takes)")
        h, sums = decode_gemv_add_residual(x2, self.weight, _rows(residual, self.out_features), self.bias)
        return h.reshape(*x.shape[:-1], self.out_features), sums

    def forward_rms_norm(self, h: torch.Tensor, sums: torch.Tensor, norm_weight: torch.Tensor,
                         eps: float) -> torch.Tensor:
        """This projection applied to ``rms_norm(h) * norm_weight``, with h and sums from the
        ``forward_add_residual`` of the projection before it."""
        return self._normed(h, sums, norm_weight, eps, silu=False)

    def forward_rms_norm_silu_and_mul(self, h: torch.Tensor, sums: torch.Tensor, norm_weight: torch.Tensor,
                                      eps: float) -> torch.Tensor:
        """``silu(gate) * up`` of this fused gate_up projection applied to ``rms_norm(h) * norm_weight``,
        with h and sums from ``forward_add_residual`` of the layer's o_proj."""
        return self._normed(h, sums, norm_weight, eps, silu=True)

    def _normed(self, h: torch.Tensor, sums: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                silu: bool) -> torch.Tensor:
        from worker.kernels.decode_gemv import decode_gemv_rms_norm

        out = decode_gemv_rms_norm(h.reshape(-1, self.in_features), sums, norm_weight, eps, self.weight, self.bias,
                                   silu=silu)
        return out.reshape(*h.shape[:-1], out.shape[-1])


def fp8_gemv_max_rows() -> int:
    """``WARD_FP8_GEMV_ROWS``: the most rows an FP8 projection's GEMV takes (default and at most the
    GEMV's ``MAX_ROWS``); more go through W8A8, where the norm and the SiLU quantize the input."""
    value = os.environ.get("WARD_FP8_GEMV_ROWS", "").strip()
    if not value:
        return MAX_ROWS
    if not value.isdigit() or not 0 <= int(value) <= MAX_ROWS:
        raise ValueError(f"WARD_FP8_GEMV_ROWS must be a whole number from 0 to {MAX_ROWS}, got {value!r}")
    return int(value)


W8A8_GEMV_PROJECTIONS = {"0": (), "normed": ("qkv", "gate_up"), "all": ("qkv", "o", "gate_up", "down")}


def fp8_gemv_w8a8_setting() -> str:
    """``WARD_FP8_GEMV_W8A8``: ``0``, ``normed`` (also when unset) or ``all``; any other value is refused."""
    value = os.environ.get("WARD_FP8_GEMV_W8A8", "normed").strip() or "normed"
    if value not in W8A8_GEMV_PROJECTIONS:
        raise ValueError(f"WARD_FP8_GEMV_W8A8 must be one of {', '.join(W8A8_GEMV_PROJECTIONS)}, got {value!r}")
    return value


def w8a8_projections(layer: nn.Module, setting: str) -> tuple[str, ...]:
    """The projections of ``layer`` that take the e4m3-by-e4m3 GEMV under ``setting``. ``normed`` names
    only those whose norm writes their rows in e4m3 (the layer's ``fp8_normed_projections``): in a
    layer whose norm does not (Gemma's), the projection would quantize its own input, the added launch
    that ``normed`` is there to avoid."""
    roles = W8A8_GEMV_PROJECTIONS[setting]
    if setting == "normed":
        fed = getattr(layer, "fp8_normed_projections", ())
        roles = tuple(role for role in roles if role in fed)
    return roles


class Fp8DecodeGemvLinear(Fp8Linear):
    """An ``Fp8Linear`` with per-channel scales (the same parameters, no copy) whose decode-sized calls
    on CUDA (up to ``max_rows``) run the decode GEMV over its e4m3 weights; other calls take the W8A8
    path."""

    def __init__(self, layer: Fp8Linear, w8a8: bool = False, silu_epilogue_w8a8: bool = False) -> None:
        """``w8a8``: decode rows go through the e4m3-by-e4m3 GEMV; ``silu_epilogue_w8a8`` (a gate_up
        whose down_proj widens): rows handed over quantized take the GEMV with the SiLU epilogue."""
        nn.Module.__init__(self)  # not Fp8Linear's: it would allocate new tensors
        for name in ("in_features", "out_features", "shards", "starts", "qc", "dtype", "_device"):
            setattr(self, name, getattr(layer, name))
        self.weight, self.weight_scale, self.bias = layer.weight, layer.weight_scale, layer.bias
        self.input_scale = layer.input_scale
        self._row_scales = layer.weight_scale.data.reshape(-1)  # [N] float32, the GEMV's view
        self.max_rows = fp8_gemv_max_rows()
        # dynamic per-row input scales only: a checkpoint's static input scale keeps the widening GEMV
        self.w8a8 = w8a8 and layer.input_scale is None
        self.silu_epilogue_w8a8 = self.w8a8 and silu_epilogue_w8a8

    @staticmethod
    def eligible(layer: nn.Module) -> bool:
        """Per-channel (or per-tensor, stored per channel) e4m3 weights beside float16/bfloat16 activations
        (any float dtype under the interpreter, as ``DecodeGemvLinear``)."""
        return (type(layer) is Fp8Linear and layer.qc.method != "fp8_block"
                and (layer.dtype in _GEMV_DTYPES or _INTERPRETED) and layer.weight.dtype == torch.float8_e4m3fn)

    def _gemv_rows(self, x: torch.Tensor) -> torch.Tensor | None:
        return _gemv_rows(x, self.in_features, self.dtype, self.max_rows)

    def takes(self, rows: int, x: torch.Tensor) -> bool:
        """Whether ``rows`` float rows like x go to the GEMV (decode sizes up to ``max_rows``)."""
        return _gemv_takes(rows, x, self.dtype, self.max_rows)

    def takes_fp8_activation(self, rows: int, x: torch.Tensor) -> bool:
        if _gemv_takes(rows, x, self.dtype, self.max_rows):
            return self.w8a8 and super().takes_fp8_activation(rows, x)
        return super().takes_fp8_activation(rows, x)

    def forward(self, x: torch.Tensor | Fp8Activation) -> torch.Tensor:
        if isinstance(x, Fp8Activation):
            if self.w8a8 and 0 < x.codes.shape[0] <= self.max_rows:
                return self._w8a8_gemv(x.codes, x.scales, x.dtype)
            return super().forward(x)
        x2 = self._gemv_rows(x)
        if x2 is None:
            return super().forward(x)
        if self._quantizes(x2):
            codes, scales = fp8_linear._quantize_activation(x2, None)
            return self._w8a8_gemv(codes, scales, x.dtype).reshape(*x.shape[:-1], self.out_features)
        from worker.kernels.decode_gemv import decode_gemv

        y = decode_gemv(x2, self.weight, self.bias, weight_scale=self._row_scales)
        return y.reshape(*x.shape[:-1], self.out_features)

    def fp8_rows_with_silu(self, x: Fp8Activation) -> bool:
        """Whether the MLP should hand these quantized rows to ``forward_silu_and_mul`` (the GEMV with the
        SiLU epilogue) rather than take gate_up's product for a SiLU-and-quantize launch."""
        return self.silu_epilogue_w8a8 and 0 < x.codes.shape[0] <= self.max_rows

    def forward_silu_and_mul(self, x: torch.Tensor | Fp8Activation) -> torch.Tensor:
        """``silu(gate) * up`` of this fused gate_up projection ([..., in] -> [..., out / 2])."""
        if isinstance(x, Fp8Activation):
            if not self.fp8_rows_with_silu(x):
                raise ValueError("forward_silu_and_mul takes quantized rows only where fp8_rows_with_silu says so")
            return self._w8a8_gemv(x.codes, x.scales, x.dtype, silu=True)
        return self._gated(x, gelu_tanh=False)

    def forward_gelu_tanh_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """``gelu_tanh(gate) * up`` (Gemma's GeGLU) of this fused gate_up projection (float rows)."""
        return self._gated(x, gelu_tanh=True)

    def _gated(self, x: torch.Tensor, gelu_tanh: bool) -> torch.Tensor:
        x2 = self._gemv_rows(x)
        if x2 is None:
            return _gated_activation(gelu_tanh)(super().forward(x))
        from worker.kernels.decode_gemv import decode_gemv

        if self._quantizes(x2):
            codes, scales = fp8_linear._quantize_activation(x2, None)
            y = self._w8a8_gemv(codes, scales, x.dtype, silu=True, gelu_tanh=gelu_tanh)
        else:
            y = decode_gemv(x2, self.weight, self.bias, silu=True, gelu_tanh=gelu_tanh, weight_scale=self._row_scales)
        return y.reshape(*x.shape[:-1], self.out_features // 2)

    def _quantizes(self, x: torch.Tensor) -> bool:
        """Whether a decode-sized float input is quantized per row here for the e4m3-by-e4m3 GEMV."""
        return self.w8a8 and fp8_linear._cuda_fp8_ok(x.device)

    def _w8a8_gemv(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype,
                   silu: bool = False, gelu_tanh: bool = False) -> torch.Tensor:
        """The GEMV over e4m3 ``codes`` [T, K] with per-row ``scales`` [T, 1]; the bias added after (the
        e4m3-x kernel takes none). ``silu``: the gated epilogue (in Gemma's GELU with ``gelu_tanh``)."""
        from worker.kernels.decode_gemv import decode_gemv

        if silu and self.bias is not None:  # the activation comes after the bias: through the unfused product
            return _gated_activation(gelu_tanh)(self._w8a8_gemv(codes, scales, dtype))
        width = self.out_features // 2 if silu else self.out_features
        out = torch.empty(codes.shape[0], width, dtype=dtype, device=codes.device)
        decode_gemv(codes, self.weight, silu=silu, out=out, weight_scale=self._row_scales,
                    x_scale=scales.reshape(-1), gelu_tanh=gelu_tanh)
        return self._add_bias(out)


def _gated_activation(gelu_tanh: bool):
    """The activation-and-multiply kernel of a gate_up product the GEMV does not take: Gemma's GeGLU or SiLU."""
    from worker.kernels.activation import gelu_tanh_and_mul, silu_and_mul

    return gelu_tanh_and_mul if gelu_tanh else silu_and_mul


def _gemv_takes(rows: int, x: torch.Tensor, dtype: torch.dtype, max_rows: int = MAX_ROWS) -> bool:
    """Whether ``rows`` rows of x go to the GEMV: decode sizes (up to ``max_rows``), the layer's
    activation dtype, float16 or bfloat16 on CUDA (any float dtype under the interpreter)."""
    if x.dtype != dtype or not (x.is_cuda and x.dtype in _GEMV_DTYPES or _INTERPRETED):
        return False
    return 0 < rows <= max_rows


def _gemv_rows(x: torch.Tensor, width: int, dtype: torch.dtype, max_rows: int = MAX_ROWS) -> torch.Tensor | None:
    """x as [rows, width] when the GEMV takes it, else None."""
    if x.numel() % width or not _gemv_takes(x.numel() // width, x, dtype, max_rows):
        return None
    return _rows(x, width)


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """t as [rows, width] with a contiguous last dim (a copy only when it is strided)."""
    t2 = t.reshape(-1, width)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def norm_fusion_requested() -> bool:
    """``WARD_NORM_GEMV=1``: fold the RMSNorms into the GEMVs around them (off by default: no gain timed)."""
    return os.environ.get("WARD_NORM_GEMV", "0") == "1"


def enable_norm_fusion(model: nn.Module) -> tuple[int, int]:
    """Marks every decoder layer whose o_proj and gate_up are swapped GEMV layers, whose MLP is dense
    and whose post-attention norm is the plain RMSNorm in the activations' dtype, so that its decode
    steps skip that norm's launch (``norm_fusion`` on the layer); then every marked layer followed by
    a marked layer whose qkv is a GEMV layer too (``fold_output``: the next input norm is skipped as
    well). Returns how many layers it marked each way."""
    from worker.model.llama import RMSNorm

    marked = 0
    for layer in getattr(model, "layers", []):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        norm = getattr(layer, "post_attention_layernorm", None)
        o_proj, gate_up = getattr(attn, "o_proj", None), getattr(mlp, "gate_up_proj", None)
        if not (hasattr(layer, "norm_fusion") and isinstance(o_proj, DecodeGemvLinear)
                and isinstance(gate_up, DecodeGemvLinear) and gate_up.out_features % 2 == 0
                and isinstance(norm, RMSNorm) and norm.weight.dtype == o_proj.weight.dtype):
            continue
        layer.norm_fusion = True
        marked += 1
    folded = 0
    layers = list(getattr(model, "layers", []))
    for layer, following in zip(layers, layers[1:]):
        if (getattr(layer, "norm_fusion", False) and getattr(following, "norm_fusion", False)
                and isinstance(layer.mlp.down_proj, DecodeGemvLinear)
                and isinstance(following.self_attn.qkv_proj, DecodeGemvLinear)
                and isinstance(following.input_layernorm, RMSNorm)
                and following.input_layernorm.weight.dtype == following.self_attn.qkv_proj.weight.dtype):
            layer.fold_output = True
            folded += 1
    return marked, folded


def _decode_swaps(model: nn.Module, names: tuple[str, ...], setting: str):
    """(layer, attribute path, role, module, its GEMV stand-in) for every projection named in ``names``
    that the decode GEMV takes: float ``nn.Linear`` and per-channel FP8 layers (other quantized
    layers and MoE experts are left alone)."""
    for layer in model.layers:
        w8a8 = w8a8_projections(layer, setting)
        for role in names:
            name = PROJECTIONS[role]
            try:
                module = layer.get_submodule(name)
            except AttributeError:
                continue
            if type(module) is nn.Linear:
                swapped_in = DecodeGemvLinear(module)
            elif Fp8DecodeGemvLinear.eligible(module):
                swapped_in = Fp8DecodeGemvLinear(module, w8a8=role in w8a8,
                                                 silu_epilogue_w8a8=role == "gate_up" and "down" not in w8a8)
            else:
                continue
            yield layer, name, role, module, swapped_in


def _is_gate_up(name: str, module: nn.Module) -> bool:
    return name == PROJECTIONS["gate_up"] and module.out_features % 2 == 0


def use_decode_gemv(model: nn.Module, projections: tuple[str, ...] | None = None) -> int:
    """Swaps the named float projections of every decoder layer (default: ``WARD_DECODE_GEMV``'s) for
    ``DecodeGemvLinear`` and the per-channel FP8 ones for ``Fp8DecodeGemvLinear`` (other quantized
    layers and MoE experts are left alone) and reserves the GEMV's workspace, so that nothing is
    allocated during CUDA-graph capture. Returns the number of layers swapped."""
    names = decode_gemv_projections() if projections is None else projections
    if not names:
        return 0
    from worker.kernels.decode_gemv import reserve_w8a8_workspace, reserve_workspace

    _read_tuned_plans(next(model.parameters()).device)
    swapped = 0
    for layer, name, _role, module, swapped_in in _decode_swaps(model, names, fp8_gemv_w8a8_setting()):
        parent, _, attr = name.rpartition(".")
        setattr(layer.get_submodule(parent), attr, swapped_in)
        reserve_workspace(module.weight)
        gate_up = _is_gate_up(name, module)
        if gate_up:
            reserve_workspace(module.weight, silu=True)
        if getattr(swapped_in, "w8a8", False):  # its e4m3-x launches have plans of their own
            reserve_w8a8_workspace(module.weight)
            if gate_up:
                reserve_w8a8_workspace(module.weight, silu=True)
        swapped += 1
    if norm_fusion_requested():
        enable_norm_fusion(model)
    return swapped


def _read_tuned_plans(device: torch.device) -> None:
    """The card's tuned plans (``ward tune gemv``) read now, so that a malformed file stops the load
    with a ModelLoadError naming it rather than failing the first launch."""
    from worker.errors import ModelLoadError
    from worker.kernels.decode_gemv import device_name
    from worker.kernels.gemv_tuned import TunedConfigError, device_config_path, tuned_table

    card = device_name(device)
    try:
        table = tuned_table(card)
    except TunedConfigError as error:
        raise ModelLoadError(f"the card's tuned kernel plans cannot be used: {error}") from None
    if table:  # so that an operator can see the file was found
        logging.getLogger(__name__).info("decode GEMV: %d tuned plans for %s from %s", len(table), card,
                                         device_config_path(card))


def decode_gemv_shapes(model: nn.Module, projections: tuple[str, ...] | None = None) -> list["TunedShape"]:
    """The launch shapes whose plans ``choose_plan`` (or ``choose_w8a8_plan``) picks for the
    projections ``use_decode_gemv`` would swap in ``model`` (which it leaves as it is; its tensors may be on the meta device): each
    weight at one row and at ``WIDE_ROWS``, a gate_up with the gated epilogue where its MLP takes it
    (``gate_up_gated_epilogue``: SiLU and GeGLU launches share plans), and the e4m3-by-e4m3 launches of W8A8 projections (``e4m3_x``, their
    own plans). For ``ward tune gemv``."""
    from worker.kernels.gemv_tuned import TunedShape

    names = decode_gemv_projections() if projections is None else projections
    shapes: dict[TunedShape, None] = {}
    for layer, name, _role, module, swapped_in in _decode_swaps(model, names, fp8_gemv_w8a8_setting()):
        n, k = module.weight.shape
        gate_up = _is_gate_up(name, module)
        e4m3_x = getattr(swapped_in, "w8a8", False)
        if e4m3_x:  # a W8A8 gate_up takes the SiLU epilogue only where down_proj widens
            silu = gate_up and swapped_in.silu_epilogue_w8a8
        else:  # a gate_up launches with the gated epilogue where its MLP takes it (Llama's SiLU, Gemma's GeGLU)
            silu = gate_up and getattr(getattr(layer, "mlp", None), "gate_up_gated_epilogue", False)
        for wide in (False, True):
            shapes[TunedShape(n // 2 if silu else n, k, silu, module.weight.element_size(), wide, e4m3_x)] = None
    return list(shapes)
