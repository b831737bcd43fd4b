"""A checkpoint's quantization, read from ``config.json``'s ``quantization_config``.

Each layout a model hub ships is one ``method``:

- ``fp8_block``: ``quant_method: "fp8"`` with ``weight_block_size`` (Qwen3-*-FP8, DeepSeek-V3):
  e4m3 ``weight`` [out, in], ``weight_scale_inv`` float32 [ceil(out/bn), ceil(in/bk)];
  activations quantized per token (and per block of the input) at run time.
- ``fp8_tensor``: ``quant_method: "fp8"`` without blocks: e4m3 ``weight``, per-tensor ``weight_scale``.
- ``fp8_channel`` / ``fp8_tensor`` from ``quant_method: "compressed-tensors"`` (float-quantized,
  8-bit float weights, strategy channel or tensor): ``weight`` e4m3, ``weight_scale`` [out, 1] or
  [1]; activations dynamic per token (or a static ``input_scale``).
- ``awq``: 4-bit GEMM packing: ``qweight`` int32 [in, out/8], ``qzeros`` int32 [in/g, out/8],
  ``scales`` [in/g, out]; nibble i of a word holds column ``AWQ_ORDER[i]`` of its eight.
- ``gptq``: ``qweight`` int32 [in/8, out] (input rows packed, low bits first), ``qzeros`` int32
  [groups, out/8] (stored zero - 1 in v1 checkpoints), ``scales`` [groups, out], ``g_idx`` [in]
  (the group of each input row; a permutation of groups with ``desc_act``).
- ``ward_int``: Ward's own layout (``packing``), written by ``ward model import-gguf`` from GGUF
  Q4_0/Q4_1/Q8_0/Q4_K: ``qweight`` int32 [in / pack, out], ``scales`` [groups, out] and either ``zeros``
  uint8 [groups, out] (``zero_format: "int"``, w = (q - zero) * scale) or ``offsets`` [groups, out]
  (``"offset"``, w = q * scale + offset); scales and offsets in ``scale_dtype`` (float16, or
  float32 for K-quants), projections listed in ``modules_to_not_convert`` in float.
- ``fp8``: a float checkpoint quantized while loading (``quantization="fp8"``): per-channel scales.

A field the engine cannot honour is a ``ModelLoadError`` that names it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from worker.errors import ModelLoadError

from worker.config import QUANTIZATION_CHOICES
INT4_GROUP_SIZES = (32, 64, 128, -1)
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AWQ GEMM packing: nibble i of a word holds column AWQ_ORDER[i]


@dataclass(frozen=True)
class QuantConfig:
    method: str  # fp8_block, fp8_tensor, fp8_channel, fp8 (on the fly), awq, gptq
    source: str  # the checkpoint's quant_method, or "fp8" when quantized at load
    bits: int = 8
    group_size: int = -1  # int4: input rows per scale (-1: one group)
    block_size: tuple[int, int] | None = None  # fp8_block: (rows, cols) of one scale
    desc_act: bool = False  # gptq: g_idx permutes the groups
    zero_offset: int = 0  # gptq v1: stored zeros are zero - 1
    zero_format: str = "int"  # ward_int: "int" (uint8 zeros) or "offset" (float offsets)
    scale_dtype: str = "float16"  # ward_int: scales and offsets as stored (float32 for GGUF K-quants)
    static_input_scale: bool = False  # fp8: activations use the checkpoint's input_scale
    ignore: tuple[str, ...] = field(default_factory=tuple)  # module names (or suffixes) left in float

    @property
    def is_fp8(self) -> bool:
        return self.method.startswith("fp8")

    @property
    def from_checkpoint(self) -> bool:
        return self.method != "fp8"

    def skips(self, module_name: str) -> bool:
        """Whether the checkpoint left this module (a checkpoint name) in float."""
        for pattern in self.ignore:
            if pattern.startswith("re:"):
                import re

                if re.match(pattern[3:], module_name):
                    return True
            elif module_name == pattern or module_name.endswith("." + pattern) or module_name.startswith(pattern + "."):
                return True
        return False


def _need(cfg: dict, key: str, prefix: str = "quantization_config"):
    if key not in cfg:
        raise ModelLoadError(f"{prefix}.{key} is missing")
    return cfg[key]


def _int(cfg: dict, key: str, allowed, prefix: str = "quantization_config", default=None) -> int:
    value = cfg.get(key, default) if default is not None else _need(cfg, key, prefix)
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise ModelLoadError(f"{prefix}.{key} = {value!r} is not supported (supported: {', '.join(map(str, allowed))})")
    return value


def _fp8_native(q: dict) -> QuantConfig:
    fmt = q.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ModelLoadError(f"quantization_config.fmt = {fmt!r} is not supported (only e4m3)")
    scheme = q.get("activation_scheme", "dynamic")
    if scheme not in ("dynamic", "static"):
        raise ModelLoadError(f"quantization_config.activation_scheme = {scheme!r} is not supported (dynamic, static)")
    ignore = tuple(q.get("modules_to_not_convert") or q.get("ignored_layers") or ())
    block = q.get("weight_block_size")
    if block is None:
        return QuantConfig("fp8_tensor", "fp8", static_input_scale=scheme == "static", ignore=ignore)
    if (not isinstance(block, (list, tuple)) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
        raise ModelLoadError(f"quantization_config.weight_block_size = {block!r} must be two positive integers")
    if scheme != "dynamic":
        raise ModelLoadError("quantization_config.activation_scheme must be dynamic with weight_block_size")
    return QuantConfig("fp8_block", "fp8", block_size=(block[0], block[1]), ignore=ignore)


def _compressed_tensors(q: dict) -> QuantConfig:
    p = "quantization_config"
    fmt = q.get("format")
    if fmt not in ("float-quantized", "naive-quantized"):
        raise ModelLoadError(f"{p}.format = {fmt!r} is not supported (compressed-tensors: float-quantized FP8 only)")
    groups = _need(q, "config_groups")
    if not isinstance(groups, dict) or not groups:
        raise ModelLoadError(f"{p}.config_groups must be a non-empty mapping")
    if len(groups) > 1:
        raise ModelLoadError(f"{p}.config_groups: one group is supported, got {len(groups)}")
    name, group = next(iter(groups.items()))
    gp = f"{p}.config_groups.{name}"
    targets = group.get("targets", ["Linear"])
    if targets != ["Linear"]:
        raise ModelLoadError(f"{gp}.targets = {targets!r} is not supported (only [\"Linear\"])")
    w = _need(group, "weights", gp)
    if not isinstance(w, dict):
        raise ModelLoadError(f"{gp}.weights must be a mapping")
    wp = f"{gp}.weights"
    if w.get("type") != "float" or w.get("num_bits") != 8:
        raise ModelLoadError(f"{wp}: type {w.get('type')!r} with num_bits {w.get('num_bits')!r} is not supported "
                             "(8-bit float)")
    strategy = w.get("strategy")
    if strategy not in ("tensor", "channel"):
        raise ModelLoadError(f"{wp}.strategy = {strategy!r} is not supported (tensor, channel)")
    if w.get("symmetric", True) is not True:
        raise ModelLoadError(f"{wp}.symmetric must be true for FP8")
    if w.get("dynamic", False):
        raise ModelLoadError(f"{wp}.dynamic must be false (weights carry their scales)")
    a = group.get("input_activations")
    static = False
    if a is not None:
        ap = f"{gp}.input_activations"
        if a.get("type") != "float" or a.get("num_bits") != 8:
            raise ModelLoadError(f"{ap}: type {a.get('type')!r} with num_bits {a.get('num_bits')!r} is not supported")
        if a.get("dynamic", False):
            if a.get("strategy", "token") not in ("token", "tensor"):
                raise ModelLoadError(f"{ap}.strategy = {a.get('strategy')!r} is not supported (token)")
        else:
            if a.get("strategy") != "tensor":
                raise ModelLoadError(f"{ap}.strategy = {a.get('strategy')!r} is not supported for static scales (tensor)")
            static = True
    method = "fp8_channel" if strategy == "channel" else "fp8_tensor"
    return QuantConfig(method, "compressed-tensors", static_input_scale=static, ignore=tuple(q.get("ignore") or ()))


def _awq(q: dict) -> QuantConfig:
    p = "quantization_config"
    bits = _int(q, "w_bit" if "w_bit" in q else "bits", (4,))
    group = _int(q, "q_group_size" if "q_group_size" in q else "group_size", INT4_GROUP_SIZES)
    version = str(q.get("version", "gemm")).lower()
    if version != "gemm":
        raise ModelLoadError(f"{p}.version = {q.get('version')!r} is not supported (gemm packing)")
    if q.get("zero_point", True) is not True:
        raise ModelLoadError(f"{p}.zero_point = {q.get('zero_point')!r} is not supported (true)")
    return QuantConfig("awq", "awq", bits=bits, group_size=group, ignore=tuple(q.get("modules_to_not_convert") or ()))


def _gptq(q: dict) -> QuantConfig:
    p = "quantization_config"
    bits = _int(q, "bits", (4, 8))
    group = _int(q, "group_size", INT4_GROUP_SIZES)
    desc_act = q.get("desc_act", False)
    if not isinstance(desc_act, bool):
        raise ModelLoadError(f"{p}.desc_act = {desc_act!r} must be true or false")
    fmt = q.get("checkpoint_format", "gptq")
    if fmt not in ("gptq", "gptq_v2"):
        raise ModelLoadError(f"{p}.checkpoint_format = {fmt!r} is not supported (gptq, gptq_v2)")
    if q.get("lm_head", False):
        raise ModelLoadError(f"{p}.lm_head = true is not supported (a quantized LM head)")
    return QuantConfig("gptq", "gptq", bits=bits, group_size=group, desc_act=desc_act,
                       zero_offset=1 if fmt == "gptq" else 0,
                       ignore=tuple(q.get("modules_to_not_convert") or ()))


def _ward_int(q: dict) -> QuantConfig:
    p = "quantization_config"
    bits = _int(q, "bits", (4, 8))
    group = _int(q, "group_size", INT4_GROUP_SIZES)
    fmt = q.get("zero_format", "int")
    if fmt not in ("int", "offset"):
        raise ModelLoadError(f"{p}.zero_format = {fmt!r} is not supported (int, offset)")
    scale_dtype = q.get("scale_dtype", "float16")
    if scale_dtype not in ("float16", "float32"):
        raise ModelLoadError(f"{p}.scale_dtype = {scale_dtype!r} is not supported (float16, float32)")
    return QuantConfig("ward_int", "gguf", bits=bits, group_size=group, zero_format=fmt, scale_dtype=scale_dtype,
                       ignore=tuple(q.get("modules_to_not_convert") or ()))


_READERS = {"fp8": _fp8_native, "compressed-tensors": _compressed_tensors, "awq": _awq, "gptq": _gptq, "ward-int": _ward_int}


def parse_quant_config(q: dict) -> QuantConfig:
    """A checkpoint's ``quantization_config`` mapping, validated."""
    if not isinstance(q, dict):
        raise ModelLoadError(f"quantization_config must be a mapping, got {type(q).__name__}")
    method = q.get("quant_method")
    if method is None:
        raise ModelLoadError("quantization_config.quant_method is missing")
    reader = _READERS.get(str(method).lower())
    if reader is None:
        raise ModelLoadError(f"quantization_config.quant_method = {method!r} is not supported "
                             f"(supported: {', '.join(_READERS)})")
    return reader(q)


def checkpoint_quant_dict(hf_config) -> dict | None:
    q = getattr(hf_config, "quantization_config", None)
    if q is None:
        text = getattr(hf_config, "text_config", None)
        q = getattr(text, "quantization_config", None) if text is not None else None
    if q is None:
        return None
    if not isinstance(q, dict):
        q = q.to_dict() if hasattr(q, "to_dict") else vars(q)
    return q


def resolve_quant_config(requested: str, hf_config) -> QuantConfig | None:
    """The quantization to apply: the checkpoint's own (``auto``), FP8 at load (``fp8``), or none.

    A quantized checkpoint cannot be served as ``none`` (its weights are packed integers), and
    ``fp8`` on a checkpoint that ships another format is refused rather than silently ignored."""
    if requested not in QUANTIZATION_CHOICES:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATION_CHOICES)}, got {requested!r}")
    q = checkpoint_quant_dict(hf_config)
    shipped = parse_quant_config(q) if q is not None else None
    if requested == "auto":
        return shipped
    if requested == "none":
        if shipped is not None:
            raise ModelLoadError(f"the checkpoint is quantized ({shipped.source}); quantization='none' cannot load "
                                 "it (use auto)")
        return None
    if shipped is not None:
        if shipped.is_fp8:
            return shipped
        raise ModelLoadError(f"quantization='fp8' was asked, but the checkpoint ships {shipped.source} weights")
    return QuantConfig("fp8", "fp8")
