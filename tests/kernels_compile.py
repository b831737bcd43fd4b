"""Compile every kernel variant for an H100 (sm_90) without a GPU and print a JSON report.

Triton's interpreter checks numerics but not compilation (layouts, loop-carried types, dot shapes),
so ``tests/test_kernels.py`` runs this file in a fresh process (compiled mode, no interpreter) to catch
code that would only fail on the card. Arguments are declared as a real launch specialises them:
pointers and strides 16-aligned. For each variant the report also counts the PTX instructions that
show how the loop was lowered (``cp.async`` = pipelined loads, ``wgmma``/``mma.sync`` = tensor cores)
and the programmatic-dependent-launch instructions (``griddepcontrol``) of the ``USE_PDL`` variants.

Usage: python tests/kernels_compile.py
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

os.environ.pop("TRITON_INTERPRET", None)  # compile, never interpret

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from worker.kernels import (  # noqa: E402
    activation, argmax, decode_gemv, fp8_gemm, fp8_quant, int4_gemm, kv_cache, moe_align_kernel, moe_gemm, moe_routing, norm,
    rotary,
    rotary_cache, token_bitmask,
)
from worker.kernels.attention_config import choose_tile_config, next_power_of_2  # noqa: E402
from worker.kernels.attention_kernels import merge_splits_kernel, paged_attention_kernel  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)


def compile_variant(
    fn: Any, pointers: dict[str, str], constexprs: dict[str, Any], floats: tuple[str, ...] = (),
    divisible: tuple[str, ...] = (), **options: int
) -> dict[str, int]:
    # constexprs a variant leaves out take the kernel's defaults, as at a launch (not runtime ints)
    constexprs = {**{p.name: p.default for p in fn.params if p.is_constexpr and p.has_default}, **constexprs}
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        else:
            signature[name] = "fp32" if name in floats else "i32"
    aligned = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if signature[name].startswith("*") or (name.startswith("stride") and name != "stride_bt_req")
        or name in divisible
    }
    source = ASTSource(fn, signature=signature, constexprs=constexprs, attrs=aligned)
    kernel = triton.compile(source, target=HOPPER, options=options)
    ptx = kernel.asm["ptx"]
    return {
        "shared_bytes": int(kernel.metadata.shared),
        "cp_async": ptx.count("cp.async.cg") + ptx.count("cp.async.ca"),
        "wgmma": ptx.count("wgmma.mma_async"),
        "mma_sync": ptx.count("mma.sync"),
        "gdc_wait": ptx.count("griddepcontrol.wait"),
        "gdc_launch": ptx.count("griddepcontrol.launch_dependents"),
        "local_bytes": _local_bytes(kernel.asm.get("cubin")),
    }


def _local_bytes(cubin: bytes | None) -> int:
    """Thread-local memory the assembled kernel uses (register spills), from cuobjdump's resource
    report when Triton ships the tool; -1 when it cannot be read."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not cubin or not os.path.exists(tool):
        return -1
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        report = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"LOCAL:(\d+)", report)
    return int(found.group(1)) if found else -1


def attention_variant(
    max_query_len: int, group: int, head_dim: int, split: bool, window: bool, dtype: str, softcap: bool = False,
    kv_fp8: bool = False, ordered: bool = False, pdl: bool = False,
) -> Callable:
    def build() -> dict[str, int]:
        config = choose_tile_config(max_query_len, group, head_dim, 4 if dtype == "*fp32" else 2)
        cache = "*fp8e4nv" if kv_fp8 else dtype
        pointers = {
            "q_ptr": dtype, "key_cache_ptr": cache, "value_cache_ptr": cache, "out_ptr": dtype,
            "part_out_ptr": "*fp32", "part_max_ptr": "*fp32", "part_sum_ptr": "*fp32",
            "query_start_loc_ptr": "*i32", "seq_lens_ptr": "*i32", "block_tables_ptr": "*i32",
            "k_scale_ptr": "*fp32", "v_scale_ptr": "*fp32", "order_ptr": "*i32",
        }
        constexprs = dict(
            HEAD_DIM=head_dim, HEAD_DIM_P=next_power_of_2(head_dim), GROUP=group, GROUP_P=next_power_of_2(group),
            BLOCK_M=config.block_m, BLOCK_Q=config.block_q, TILE_N=config.tile_n, PAGE_SIZE=16,
            SINGLE_BLOCK_PER_REQ=max_query_len <= config.block_q, USE_WINDOW=window, SPLIT=split,
            EXACT_FP32=dtype == "*fp32", USE_SOFTCAP=softcap, KV_FP8=kv_fp8, SCALE_STRIDE=int(kv_fp8),
            USE_ORDER=ordered, USE_PDL=pdl,
        )
        return compile_variant(
            paged_attention_kernel, pointers, constexprs, ("qk_scale_log2", "softcap_log2"),
            num_warps=config.num_warps, num_stages=config.num_stages,
        )

    return build


BF16 = "*bf16"


def decode_gemv_variant(block_n: int, block_k: int, split_k: int, silu: bool, bias: bool, stages: int,
                        even: bool = True, pdl: bool = False, add_residual: bool = False,
                        norm_input: bool = False, fp8: bool = False, warps: int = 4,
                        fp8_math: int = 0, gelu_tanh: bool = False) -> dict[str, int]:
    return compile_variant(
        decode_gemv._decode_gemv_kernel,
        {"x_ptr": "*fp8e4nv" if fp8_math == 2 else BF16, "w_ptr": "*fp8e4nv" if fp8 else BF16, "b_ptr": BF16,
         "y_ptr": BF16, "part_ptr": "*fp32", "ticket_ptr": "*i32", "res_ptr": BF16, "sq_ptr": "*fp32", "nw_ptr": BF16,
         "ws_ptr": "*fp32", "xs_ptr": "*fp32"},
        dict(BLOCK_M=decode_gemv.W8A8_BLOCK_M if fp8_math == 2 else 16, BLOCK_N=block_n, BLOCK_K=block_k,
             SPLIT_K=split_k, SILU=silu, HAS_BIAS=bias, EVEN_N=even, EVEN_K=even, EXACT_FP32=False, USE_PDL=pdl,
             ADD_RESIDUAL=add_residual, NORM_INPUT=norm_input, SQ_TILES_P=128, W_SCALED=fp8, FP8_MATH=fp8_math,
             GELU_TANH=gelu_tanh),
        ("eps",),
        # a launch specialises sizes that are multiples of 16 as such (Llama's N and K, the split length)
        divisible=("N", "K", "K_PER_SPLIT") if even else ("K_PER_SPLIT",), num_warps=warps, num_stages=stages,
    )


def rotary_cache_variant(q_heads: int, kv_heads: int, head_dim: int, half: int, page: int, cache: str = BF16,
                         positions: str = "*i64", **constexprs: Any) -> dict[str, int]:
    """The rotary cache write over bf16 q/k/v into a ``cache``-typed cache (``constexprs``: USE_PDL,
    HEAD_NORM, FP8 with SCALE_STRIDE)."""
    pointers = {"positions_ptr": positions, "q_ptr": BF16, "k_ptr": BF16, "v_ptr": BF16, "key_cache_ptr": cache,
                "value_cache_ptr": cache, "slot_mapping_ptr": "*i64", "cos_sin_ptr": "*fp32", "qn_ptr": BF16,
                "kn_ptr": BF16, "k_scale_ptr": "*fp32", "v_scale_ptr": "*fp32"}
    return compile_variant(
        rotary_cache._rotary_cache_kernel, pointers,
        dict(NUM_Q_HEADS=q_heads, Q_HEADS_P=next_power_of_2(q_heads), NUM_KV_HEADS=kv_heads,
             KV_HEADS_P=next_power_of_2(kv_heads), HEAD_DIM=head_dim, HEAD_DIM_P=next_power_of_2(head_dim),
             HALF=half, HALF_P=next_power_of_2(half), PAGE_SIZE=page, **constexprs), ("eps",),
    )


VARIANTS: dict[str, Callable[[], dict[str, int]]] = {
    "attention_decode_group4_d128": attention_variant(1, 4, 128, False, False, BF16),
    "attention_decode_split_group4_d128": attention_variant(1, 4, 128, True, False, BF16),
    "attention_decode_split_ordered_group4_d128": attention_variant(1, 4, 128, True, False, BF16, ordered=True),
    "attention_decode_split_ordered_group4_d128_pdl": attention_variant(1, 4, 128, True, False, BF16, ordered=True,
                                                                        pdl=True),
    "attention_decode_group8_d64_window": attention_variant(1, 8, 64, False, True, BF16),
    "attention_mid_group4_d128_split_window": attention_variant(16, 4, 128, True, True, BF16),
    "attention_prefill_group4_d128": attention_variant(2048, 4, 128, False, False, BF16),
    "attention_prefill_group1_d64_window": attention_variant(512, 1, 64, False, True, BF16),
    "attention_prefill_group4_d128_fp32": attention_variant(2048, 4, 128, False, False, "*fp32"),
    "attention_decode_group2_d256_softcap_window": attention_variant(1, 2, 256, False, True, BF16, softcap=True),
    "attention_prefill_group2_d256_softcap_split": attention_variant(512, 2, 256, True, False, BF16, softcap=True),
    "attention_decode_split_group4_d128_kv_fp8": attention_variant(1, 4, 128, True, False, BF16, kv_fp8=True),
    "attention_prefill_group4_d128_kv_fp8": attention_variant(2048, 4, 128, False, False, BF16, kv_fp8=True),
    "merge_splits": lambda: compile_variant(
        merge_splits_kernel,
        {
            "out_ptr": BF16, "part_out_ptr": "*fp32", "part_max_ptr": "*fp32", "part_sum_ptr": "*fp32",
            "query_start_loc_ptr": "*i32",
        },
        dict(HEAD_DIM=128, HEAD_DIM_P=128, SPLITS_P=16),
    ),
    "merge_splits_pdl": lambda: compile_variant(
        merge_splits_kernel,
        {
            "out_ptr": BF16, "part_out_ptr": "*fp32", "part_max_ptr": "*fp32", "part_sum_ptr": "*fp32",
            "query_start_loc_ptr": "*i32",
        },
        dict(HEAD_DIM=128, HEAD_DIM_P=128, SPLITS_P=16, USE_PDL=True),
    ),
    "reshape_and_cache": lambda: compile_variant(
        kv_cache._reshape_and_cache_kernel,
        {
            "key_ptr": BF16, "value_ptr": BF16, "key_cache_ptr": BF16, "value_cache_ptr": BF16,
            "slot_mapping_ptr": "*i64", "k_scale_ptr": "*i64", "v_scale_ptr": "*i64",
        },
        dict(NUM_KV_HEADS=8, HEAD_DIM=128, HEADS_P=8, HEAD_DIM_P=128, PAGE_SIZE=16, FP8=False, SCALE_STRIDE=0),
    ),
    "reshape_and_cache_fp8": lambda: compile_variant(
        kv_cache._reshape_and_cache_kernel,
        {
            "key_ptr": BF16, "value_ptr": BF16, "key_cache_ptr": "*fp8e4nv", "value_cache_ptr": "*fp8e4nv",
            "slot_mapping_ptr": "*i64", "k_scale_ptr": "*fp32", "v_scale_ptr": "*fp32",
        },
        dict(NUM_KV_HEADS=8, HEAD_DIM=128, HEADS_P=8, HEAD_DIM_P=128, PAGE_SIZE=16, FP8=True, SCALE_STRIDE=1),
    ),
    "int4_gemm": lambda: compile_variant(
        int4_gemm._int4_gemm_kernel,
        {"x_ptr": BF16, "qw_ptr": "*i32", "s_ptr": BF16, "z_ptr": "*u8", "y_ptr": BF16},
        dict(GROUP=128, BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, HAS_OFFSETS=False), num_warps=4, num_stages=3,
    ),
    "int4_gemv": lambda: compile_variant(  # decode at batch 1: y stored in bf16, no split
        int4_gemm._int4_gemv_kernel,
        {"x_ptr": BF16, "qw_ptr": "*i32", "s_ptr": BF16, "z_ptr": "*u8", "y_ptr": BF16},
        dict(GROUP=128, ROWS=2, BLOCK_N=64, BLOCK_K=128, HAS_OFFSETS=False, BITS=4, ATOMIC=False), num_warps=4,
    ),
    "int4_gemv_split": lambda: compile_variant(  # K split across programs, float32 partial sums
        int4_gemm._int4_gemv_kernel,
        {"x_ptr": BF16, "qw_ptr": "*i32", "s_ptr": BF16, "z_ptr": "*u8", "y_ptr": "*fp32"},
        dict(GROUP=128, ROWS=2, BLOCK_N=32, BLOCK_K=128, HAS_OFFSETS=False, BITS=4, ATOMIC=True), num_warps=4,
    ),
    "int4_gemv_rows8": lambda: compile_variant(
        int4_gemm._int4_gemv_rows_kernel,
        {"x_ptr": BF16, "qw_ptr": "*i32", "s_ptr": BF16, "z_ptr": "*u8", "y_ptr": "*fp32"},
        dict(GROUP=128, ROWS=8, BLOCK_N=128, BLOCK_K=32, HAS_OFFSETS=False, BITS=4), num_warps=4,
    ),
    "int4_gemv_offsets": lambda: compile_variant(
        int4_gemm._int4_gemv_kernel,
        {"x_ptr": BF16, "qw_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*fp16", "y_ptr": "*fp32"},
        dict(GROUP=32, ROWS=2, BLOCK_N=32, BLOCK_K=32, HAS_OFFSETS=True, BITS=4, ATOMIC=True), num_warps=4,
    ),
    "int8_gemm": lambda: compile_variant(
        int4_gemm._int4_gemm_kernel,
        {"x_ptr": BF16, "qw_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*u8", "y_ptr": BF16},
        dict(GROUP=32, BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, HAS_OFFSETS=False, BITS=8), num_warps=4, num_stages=3,
    ),
    "int8_gemv_float32_offsets": lambda: compile_variant(
        int4_gemm._int4_gemv_kernel,
        {"x_ptr": BF16, "qw_ptr": "*i32", "s_ptr": "*fp32", "z_ptr": "*fp32", "y_ptr": "*fp32"},
        dict(GROUP=32, ROWS=2, BLOCK_N=32, BLOCK_K=32, HAS_OFFSETS=True, BITS=8, ATOMIC=True), num_warps=4,
    ),
    "fp8_quant_bf16": lambda: compile_variant(  # W8A8 activations, per token or per block
        fp8_quant._quant_kernel,
        {"x_ptr": BF16, "q_ptr": "*fp8e4nv", "s_ptr": "*fp32", "static_ptr": "*fp32"},
        dict(STATIC=False, BLOCK=1024), num_warps=4,
    ),
    "fp8_quant_static": lambda: compile_variant(
        fp8_quant._quant_kernel,
        {"x_ptr": BF16, "q_ptr": "*fp8e4nv", "s_ptr": "*fp32", "static_ptr": "*fp32"},
        dict(STATIC=True, BLOCK=128), num_warps=1,
    ),
    "fp8_block_gemm": lambda: compile_variant(
        fp8_gemm._fp8_block_gemm_kernel,
        {"a_ptr": "*fp8e4nv", "as_ptr": "*fp32", "b_ptr": "*fp8e4nv", "bs_ptr": "*fp32", "y_ptr": BF16},
        dict(SCALE_N=128, BLOCK_M=64, BLOCK_N=128, BLOCK_K=128), num_warps=4, num_stages=3,
    ),
    "fp8_channel_gemm": lambda: compile_variant(
        fp8_gemm._fp8_block_gemm_kernel,
        {"a_ptr": "*fp8e4nv", "as_ptr": "*fp32", "b_ptr": "*fp8e4nv", "bs_ptr": "*fp32", "y_ptr": BF16},
        dict(SCALE_N=1, BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, PER_CHANNEL=True), num_warps=4, num_stages=3,
    ),
    "decode_gemv_qkv_split2": lambda: decode_gemv_variant(32, 256, 2, silu=False, bias=False, stages=3),
    "decode_gemv_o_split4_bias": lambda: decode_gemv_variant(32, 256, 4, silu=False, bias=True, stages=4),
    "decode_gemv_down_split4": lambda: decode_gemv_variant(32, 512, 4, silu=False, bias=False, stages=4),
    "decode_gemv_gate_up_unfused": lambda: decode_gemv_variant(32, 512, 1, silu=False, bias=False, stages=4),
    "decode_gemv_gate_up_silu": lambda: decode_gemv_variant(32, 256, 1, silu=True, bias=False, stages=4),
    # Gemma's GeGLU epilogue (Gemma 3 27B's gate_up: 2 x 21,504 rows over K = 5,376), split in two
    "decode_gemv_gate_up_gelu_tanh_split2": lambda: decode_gemv_variant(32, 256, 2, silu=True, bias=False, stages=4,
                                                                        gelu_tanh=True),
    # e4m3 weights (FP8 layers at decode): plans of LLAMA_8B_FP8_PLANS (qkv's 16-wide tiles in two warps,
    # o's three K splits), and a split with bias and PDL
    "decode_gemv_fp8_qkv": lambda: decode_gemv_variant(16, 256, 1, silu=False, bias=False, stages=3, fp8=True,
                                                       warps=2),
    "decode_gemv_fp8_o_split3": lambda: decode_gemv_variant(32, 128, 3, silu=False, bias=False, stages=3, fp8=True),
    "decode_gemv_fp8_gate_up_silu": lambda: decode_gemv_variant(32, 256, 1, silu=True, bias=False, stages=3,
                                                                fp8=True),
    # the latency batch's e4m3 gate_up plan (LLAMA_8B_FP8_WIDE_PLANS): SiLU after two K splits
    "decode_gemv_fp8_gate_up_silu_split2": lambda: decode_gemv_variant(32, 256, 2, silu=True, bias=False, stages=3,
                                                                       fp8=True),
    "decode_gemv_fp8_down_split2_bias_pdl": lambda: decode_gemv_variant(32, 512, 2, silu=False, bias=True, stages=4,
                                                                        pdl=True, fp8=True),
    # e4m3 weights met in float16 (FP8_MATH 1) and e4m3 x by e4m3 weights (FP8_MATH 2, W8A8 at decode)
    "decode_gemv_fp8_f16_gate_up_silu_pdl": lambda: decode_gemv_variant(32, 256, 1, silu=True, bias=False, stages=3,
                                                                        pdl=True, fp8=True, fp8_math=1),
    "decode_gemv_fp8_w8a8_gate_up_silu_pdl": lambda: decode_gemv_variant(32, 256, 1, silu=True, bias=False,
                                                                         stages=3, pdl=True, fp8=True, fp8_math=2),
    "decode_gemv_fp8_w8a8_down_split3": lambda: decode_gemv_variant(32, 512, 3, silu=False, bias=False, stages=3,
                                                                    fp8=True, fp8_math=2),
    "decode_gemv_qkv_split2_pdl": lambda: decode_gemv_variant(32, 256, 2, silu=False, bias=False, stages=3,
                                                              pdl=True),
    "decode_gemv_gate_up_silu_pdl": lambda: decode_gemv_variant(32, 256, 1, silu=True, bias=False, stages=4,
                                                                pdl=True),
    # the post-attention RMSNorm fused away: o_proj adds the residual and writes its sums of squares,
    # gate_up (SiLU) normalises its input from them
    "decode_gemv_o_add_residual_pdl": lambda: decode_gemv_variant(32, 512, 1, silu=False, bias=False, stages=4,
                                                                  pdl=True, add_residual=True),
    "decode_gemv_o_add_residual_split2": lambda: decode_gemv_variant(32, 256, 2, silu=False, bias=True, stages=3,
                                                                     add_residual=True),
    "decode_gemv_gate_up_silu_norm_pdl": lambda: decode_gemv_variant(32, 256, 1, silu=True, bias=False, stages=3,
                                                                     pdl=True, norm_input=True),
    "decode_gemv_silu_split_ragged_pdl": lambda: decode_gemv_variant(32, 256, 2, silu=True, bias=True, stages=3,
                                                                     even=False, pdl=True),
    "decode_gemv_silu_split_ragged": lambda: decode_gemv_variant(32, 256, 2, silu=True, bias=True, stages=3,
                                                                 even=False),
    "rms_norm": lambda: compile_variant(
        norm._rms_norm_kernel,
        {"x_ptr": BF16, "residual_ptr": BF16, "weight_ptr": BF16, "out_ptr": BF16, "residual_out_ptr": BF16},
        dict(HIDDEN=4096, BLOCK=4096, ADD_RESIDUAL=False), ("eps",), num_warps=8,
    ),
    # a q/k norm over a [T, 32, 128] per-head view of the fused qkv output, read in place
    "rms_norm_qk_heads": lambda: compile_variant(
        norm._rms_norm_kernel,
        {"x_ptr": BF16, "residual_ptr": BF16, "weight_ptr": BF16, "out_ptr": BF16, "residual_out_ptr": BF16},
        dict(HIDDEN=128, BLOCK=128, ADD_RESIDUAL=False, HEADS=32), ("eps",), num_warps=1,
    ),
    "fused_add_rms_norm": lambda: compile_variant(
        norm._rms_norm_kernel,
        {"x_ptr": BF16, "residual_ptr": BF16, "weight_ptr": BF16, "out_ptr": BF16, "residual_out_ptr": BF16},
        dict(HIDDEN=4096, BLOCK=4096, ADD_RESIDUAL=True), ("eps",), num_warps=8,
    ),
    "fused_add_rms_norm_pdl": lambda: compile_variant(
        norm._rms_norm_kernel,
        {"x_ptr": BF16, "residual_ptr": BF16, "weight_ptr": BF16, "out_ptr": BF16, "residual_out_ptr": BF16},
        dict(HIDDEN=4096, BLOCK=4096, ADD_RESIDUAL=True, USE_PDL=True), ("eps",), num_warps=8,
    ),
    # Gemma 3 27B's hidden size: a sandwich norm, its residual add and the next norm in one launch
    "gemma_add_rms_norm_next_pdl": lambda: compile_variant(
        norm._gemma_norm_kernel,
        {"x_ptr": BF16, "residual_ptr": BF16, "weight_ptr": BF16, "next_weight_ptr": BF16, "out_ptr": BF16,
         "residual_out_ptr": BF16},
        dict(HIDDEN=5376, BLOCK=8192, ADD_TO_RESIDUAL=True, NORM_AGAIN=True, USE_PDL=True), ("eps",), num_warps=16,
    ),
    "gemma_rms_norm_head": lambda: compile_variant(
        norm._gemma_norm_kernel,
        {"x_ptr": BF16, "residual_ptr": BF16, "weight_ptr": BF16, "next_weight_ptr": BF16, "out_ptr": BF16,
         "residual_out_ptr": BF16},
        dict(HIDDEN=128, BLOCK=128, ADD_TO_RESIDUAL=False, NORM_AGAIN=False), ("eps",), num_warps=1,
    ),
    # a W8A8 projection's input: the norm quantizes its own output to e4m3 (scales per row)
    "fused_add_rms_norm_fp8_pdl": lambda: compile_variant(
        norm._rms_norm_kernel,
        {"x_ptr": BF16, "residual_ptr": BF16, "weight_ptr": BF16, "out_ptr": "*fp8e4nv", "residual_out_ptr": BF16,
         "scale_ptr": "*fp32"},
        dict(HIDDEN=4096, BLOCK=4096, ADD_RESIDUAL=True, USE_PDL=True, QUANT_FP8=True), ("eps",), num_warps=8,
    ),
    "rotary_neox": lambda: compile_variant(
        rotary._rotary_kernel,
        {"positions_ptr": "*i64", "q_ptr": BF16, "k_ptr": BF16, "cos_sin_ptr": "*fp32"},
        dict(NUM_Q_HEADS=32, Q_HEADS_P=32, NUM_K_HEADS=8, K_HEADS_P=8, HALF=64, HALF_P=64, IS_NEOX=True),
    ),
    "rotary_gptj_partial": lambda: compile_variant(
        rotary._rotary_kernel,
        {"positions_ptr": "*i32", "q_ptr": BF16, "k_ptr": BF16, "cos_sin_ptr": "*fp32"},
        dict(NUM_Q_HEADS=32, Q_HEADS_P=32, NUM_K_HEADS=8, K_HEADS_P=8, HALF=32, HALF_P=32, IS_NEOX=False),
    ),
    "rotary_cache_llama": lambda: rotary_cache_variant(32, 8, 128, 64, 16),
    "rotary_cache_llama_pdl": lambda: rotary_cache_variant(32, 8, 128, 64, 16, USE_PDL=True),
    # an e4m3 cache (FP8 KV) with per-head scales
    "rotary_cache_llama_fp8": lambda: rotary_cache_variant(32, 8, 128, 64, 16, cache="*fp8e4nv", FP8=True,
                                                           SCALE_STRIDE=1),
    # Qwen3-8B's q/k head norms (HEAD_NORM 1) and Gemma 3 27B's (1 + w) ones (2) in the cache write
    "rotary_cache_qwen3_head_norms": lambda: rotary_cache_variant(32, 8, 128, 64, 16, HEAD_NORM=1),
    "rotary_cache_gemma3_head_norms": lambda: rotary_cache_variant(32, 16, 128, 64, 16, HEAD_NORM=2),
    "rotary_cache_partial": lambda: rotary_cache_variant(24, 8, 96, 16, 32, positions="*i32"),
    # the one-launch expert grouping: Mixtral's 8 experts, Qwen3-MoE's 128
    "moe_align_mixtral": lambda: compile_variant(
        moe_align_kernel._moe_align_kernel,
        {"ids_ptr": "*i64", "sorted_ptr": "*i32", "block_experts_ptr": "*i32", "num_rows_ptr": "*i32"},
        dict(E=8, E_P=8, BLOCK_M=16, CHUNK=1024), num_warps=4,
    ),
    "moe_align_qwen3_moe": lambda: compile_variant(
        moe_align_kernel._moe_align_kernel,
        {"ids_ptr": "*i64", "sorted_ptr": "*i32", "block_experts_ptr": "*i32", "num_rows_ptr": "*i32"},
        dict(E=128, E_P=128, BLOCK_M=16, CHUNK=64), num_warps=4,
    ),
    # the router: Mixtral's 8 experts (bf16 logits, top 2, renormalised), Qwen3-MoE's 128 (top 8)
    "moe_routing_mixtral": lambda: compile_variant(
        moe_routing._route_kernel, {"logits_ptr": BF16, "weights_ptr": "*fp32", "ids_ptr": "*i64"},
        dict(E=8, E_P=8, TOP_K=2, K_P=2, RENORMALIZE=True), num_warps=1,
    ),
    "moe_routing_qwen3_moe": lambda: compile_variant(
        moe_routing._route_kernel, {"logits_ptr": BF16, "weights_ptr": "*fp32", "ids_ptr": "*i64"},
        dict(E=128, E_P=128, TOP_K=8, K_P=8, RENORMALIZE=False), num_warps=1,
    ),
    # each token's top-k expert rows summed and cast (Qwen3-MoE: hidden 2,048, top 8)
    "moe_sum_rows_qwen3_moe": lambda: compile_variant(
        moe_gemm._sum_rows_kernel, {"rows_ptr": "*fp32", "y_ptr": BF16}, dict(HIDDEN=2048, TOP_K=8, BLOCK=1024),
        num_warps=4,
    ),
    "moe_gemm_up_bf16": lambda: compile_variant(
        moe_gemm._moe_gemm_kernel,
        {"a_ptr": BF16, "b_ptr": BF16, "c_ptr": BF16, "weights_ptr": "*fp32", "sorted_ids_ptr": "*i32",
         "block_experts_ptr": "*i32", "num_rows_ptr": "*i32", "scale_ptr": "*fp32"},
        dict(A_ROW_DIV=2, MUL_WEIGHT=False, EXACT_FP32=False, SCALE_MODE=0, SCALE_BN=1, SCALE_BK=1, BLOCK_M=16,
             BLOCK_N=64, BLOCK_K=64),
    ),
    "moe_gemm_down_weighted_bf16": lambda: compile_variant(
        moe_gemm._moe_gemm_kernel,
        {"a_ptr": BF16, "b_ptr": BF16, "c_ptr": "*fp32", "weights_ptr": "*fp32", "sorted_ids_ptr": "*i32",
         "block_experts_ptr": "*i32", "num_rows_ptr": "*i32", "scale_ptr": "*fp32"},
        dict(A_ROW_DIV=1, MUL_WEIGHT=True, EXACT_FP32=False, SCALE_MODE=0, SCALE_BN=1, SCALE_BK=1, BLOCK_M=64,
             BLOCK_N=64, BLOCK_K=64),
    ),
    "moe_gemm_up_fp8_block": lambda: compile_variant(
        moe_gemm._moe_gemm_kernel,
        {"a_ptr": BF16, "b_ptr": "*fp8e4nv", "c_ptr": BF16, "weights_ptr": "*fp32", "sorted_ids_ptr": "*i32",
         "block_experts_ptr": "*i32", "num_rows_ptr": "*i32", "scale_ptr": "*fp32"},
        dict(A_ROW_DIV=8, MUL_WEIGHT=False, EXACT_FP32=False, SCALE_MODE=2, SCALE_BN=128, SCALE_BK=128, BLOCK_M=16,
             BLOCK_N=64, BLOCK_K=64),
    ),
    "moe_gemm_down_fp8_channel": lambda: compile_variant(
        moe_gemm._moe_gemm_kernel,
        {"a_ptr": BF16, "b_ptr": "*fp8e4nv", "c_ptr": "*fp32", "weights_ptr": "*fp32", "sorted_ids_ptr": "*i32",
         "block_experts_ptr": "*i32", "num_rows_ptr": "*i32", "scale_ptr": "*fp32"},
        dict(A_ROW_DIV=1, MUL_WEIGHT=True, EXACT_FP32=False, SCALE_MODE=1, SCALE_BN=1, SCALE_BK=1, BLOCK_M=64,
             BLOCK_N=64, BLOCK_K=64),
    ),
    "silu_and_mul": lambda: compile_variant(
        activation._silu_and_mul_kernel, {"x_ptr": BF16, "out_ptr": BF16}, dict(INTERMEDIATE=14336, BLOCK=1024)
    ),
    "gelu_tanh_and_mul": lambda: compile_variant(
        activation._silu_and_mul_kernel, {"x_ptr": BF16, "out_ptr": BF16},
        dict(INTERMEDIATE=21504, BLOCK=1024, GELU_TANH=True),
    ),
    "silu_and_mul_fp8": lambda: compile_variant(
        activation._silu_and_mul_fp8_kernel, {"x_ptr": BF16, "q_ptr": "*fp8e4nv", "s_ptr": "*fp32"},
        dict(INTERMEDIATE=14336, BLOCK=1024)
    ),
    # Llama-3.1-8B's 14,336-wide row held in registers (16 warps), as silu_and_mul_fp8 launches it
    "silu_and_mul_fp8_one_pass": lambda: compile_variant(
        activation._silu_and_mul_fp8_kernel, {"x_ptr": BF16, "q_ptr": "*fp8e4nv", "s_ptr": "*fp32"},
        dict(INTERMEDIATE=14336, BLOCK=16384, ONE_PASS=True), num_warps=16
    ),
    "token_bitmask": lambda: compile_variant(
        token_bitmask._apply_token_bitmask_kernel, {"logits_ptr": "*fp32", "mask_ptr": "*i32", "rows_ptr": "*i64"},
        dict(BLOCK=2048)
    ),
    "greedy_argmax_chunks_bf16": lambda: compile_variant(
        argmax._chunk_argmax_kernel, {"x_ptr": BF16, "value_ptr": "*fp32", "index_ptr": "*i32"},
        dict(CHUNK=argmax.CHUNK), num_warps=8,
    ),
    "greedy_argmax_pick": lambda: compile_variant(
        argmax._pick_chunk_kernel, {"value_ptr": "*fp32", "index_ptr": "*i32", "out_ptr": "*i64"},
        dict(CHUNKS_P=32), num_warps=1,
    ),
}


def main() -> int:
    report: dict[str, dict[str, Any]] = {}
    for name, build in VARIANTS.items():
        try:
            report[name] = build()
        except Exception:  # reported per variant; the test fails with the traceback
            report[name] = {"error": traceback.format_exc()}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
