"""The CPU cases of the kernel checks: small float32 shapes that Triton's interpreter runs quickly.

Importing this module does not import the kernels (``kernels_interpreter.py`` runs the cases in a
process that has switched the interpreter on first).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from kernels_cases import (
    AttentionCase,
    Metrics,
    check_attention,
    check_decode_gemv,
    check_decode_gemv_norm_fusion,
    check_decode_gemv_tuned_plan,
    check_fp8_w8a8_gemv_layer,
    check_fp8_w8a8_mlp_normed,
    check_fused_moe,
    check_gelu_tanh_and_mul,
    check_gemma_norms,
    check_greedy_argmax,
    check_head_norms,
    check_input_validation,
    check_moe_align,
    check_moe_routing,
    check_reshape_and_cache,
    check_rms_norm,
    check_rotary,
    check_rotary_cache,
    check_rotary_cache_head_norms,
    check_silu_and_mul,
    check_token_bitmask,
)

F32 = torch.float32

ATTENTION_CASES: dict[str, AttentionCase] = {
    "decode_varied_lengths_group4": AttentionCase((1,) * 6, (0, 5, 15, 16, 33, 70)),
    "decode_group1": AttentionCase((1, 1), (12, 47), num_heads=2, num_kv_heads=2),
    "decode_group8_head128_block32": AttentionCase(
        (1, 1, 1), (31, 64, 100), num_heads=8, num_kv_heads=1, head_dim=128, block_size=32
    ),
    "prefill_group1": AttentionCase((7, 33, 16), (0, 0, 0), num_heads=2, num_kv_heads=2),
    "prefill_large_tile_several_blocks": AttentionCase((70, 45), (0, 10), num_heads=8, num_kv_heads=2),
    "chunked_prefill_group8_block32": AttentionCase((20, 9), (35, 16), num_heads=8, num_kv_heads=1, block_size=32),
    "mixed_group4_head128": AttentionCase((1, 17, 1, 40), (50, 0, 3, 21), num_heads=8, num_kv_heads=2, head_dim=128),
    "mixed_group3": AttentionCase((1, 5, 2), (9, 20, 0), num_heads=6, num_kv_heads=2),
    "sliding_window_mixed": AttentionCase((1, 30, 1), (60, 10, 5), sliding_window=24),
    "sliding_window_decode": AttentionCase((1, 1), (100, 17), num_heads=4, num_kv_heads=2, sliding_window=16),
    "split_decode_forced": AttentionCase((1, 1, 1), (300, 77, 5), num_splits=4),
    "split_mixed_forced": AttentionCase((1, 12, 40), (200, 90, 0), num_splits=3),
    "split_sliding_window_forced": AttentionCase((1, 1), (300, 40), sliding_window=50, num_splits=4),
    "split_by_heuristic": AttentionCase((1,), (700,)),
    # pieces of 64 tokens: 5 for the longest, 1 for the shortest, the rest empty
    "split_tokens_decode": AttentionCase((1, 1, 1), (300, 77, 5), split_tokens=64),
    "split_tokens_mixed": AttentionCase((1, 12, 40), (200, 90, 0), split_tokens=100),
    # 22 tiles of 32 in pieces of one tile: capped at MAX_PIECES (16) pieces of two tiles
    "split_tokens_capped": AttentionCase((1, 1), (700, 40), split_tokens=32),
    # pieces of one tile, at most three a request (num_splits caps them)
    "split_tokens_at_most_three": AttentionCase((1, 1, 1), (300, 77, 5), split_tokens=32, num_splits=3),
    "split_tokens_window": AttentionCase((1, 1), (300, 40), sliding_window=50, split_tokens=32),
    "split_tokens_padding": AttentionCase((1, 1), (150, 60), split_tokens=64, padding_reqs=2, padding_rows=2),
    "longest_first_decode": AttentionCase((1,) * 5, (3, 70, 15, 40, 0), longest_first=True),
    "longest_first_split_tokens_padding": AttentionCase((1, 1, 1), (20, 130, 64), split_tokens=32, longest_first=True,
                                                        padding_reqs=2, padding_rows=1),
    "padding_decode": AttentionCase((1, 1, 1), (20, 3, 40), padding_reqs=2, padding_rows=3),
    "padding_mixed": AttentionCase((1, 40), (20, 5), num_heads=8, num_kv_heads=2, padding_reqs=2, padding_rows=2),
    "padding_split_forced": AttentionCase((1, 1), (150, 60), num_splits=4, padding_reqs=2, padding_rows=2),
    "backend_mixed": AttentionCase(
        (1, 23, 1), (40, 9, 0), num_heads=8, num_kv_heads=2, padding_rows=2, through_backend=True
    ),
    # a small cap (scores are ~N(0, 1) here) so that capping changes the result
    "softcap_mixed_window": AttentionCase((1, 19, 1), (30, 6, 0), num_heads=4, num_kv_heads=2, sliding_window=12,
                                          logit_softcap=0.7),
    "softcap_split_forced": AttentionCase((1, 1), (200, 33), num_splits=3, logit_softcap=0.7),
    "softcap_backend_mixed": AttentionCase((1, 9), (20, 4), num_heads=4, num_kv_heads=2, logit_softcap=0.7,
                                           through_backend=True),
    "backend_decode_split": AttentionCase(
        (1, 1), (260, 33), num_splits=2, padding_reqs=1, padding_rows=2, through_backend=True
    ),
}

OTHER_CASES: dict[str, Callable[[], Metrics | dict[str, list[str]]]] = {
    "cache_write_block16": lambda: check_reshape_and_cache(37, 2, 64, 16, 5, "cpu", F32),
    "cache_write_block32_strided": lambda: check_reshape_and_cache(40, 4, 32, 32, 3, "cpu", F32, strided_input=True),
    "cache_write_odd_shapes": lambda: check_reshape_and_cache(11, 3, 80, 16, 2, "cpu", F32),
    "rms_norm_2d": lambda: check_rms_norm((5, 96), "cpu", F32),
    "rms_norm_3d": lambda: check_rms_norm((3, 2, 256), "cpu", F32),
    # tokens, experts, top-k, hidden, intermediate: a decode-sized step (most experts idle), and a step
    # where several blocks of one expert and ragged K/N tiles occur
    "fused_moe_decode_8_experts": lambda: check_fused_moe(3, 8, 2, 64, 32, "cpu", F32),
    "fused_moe_prefill_ragged": lambda: check_fused_moe(40, 4, 3, 80, 48, "cpu", F32),
    "rotary_neox_full": lambda: check_rotary(9, 4, 2, 64, 64, True, "cpu", F32),
    "rotary_neox_partial": lambda: check_rotary(7, 4, 2, 64, 32, True, "cpu", F32),
    "rotary_gptj_full": lambda: check_rotary(9, 4, 2, 64, 64, False, "cpu", F32),
    "rotary_gptj_partial": lambda: check_rotary(5, 2, 1, 128, 96, False, "cpu", F32),
    # tokens, q heads, kv heads, head dim, rotary dim, block size, padding tokens
    "rotary_cache_full": lambda: check_rotary_cache(9, 4, 2, 64, 64, 16, 2, "cpu", F32),
    "rotary_cache_partial_block32": lambda: check_rotary_cache(7, 6, 3, 80, 32, 32, 1, "cpu", F32),
    # an e4m3 cache (FP8 KV), per-tensor and per-head scales: the same bytes as the two kernels
    "rotary_cache_fp8_tensor_scale": lambda: check_rotary_cache(9, 4, 2, 64, 64, 16, 2, "cpu", F32,
                                                                fp8_scales="tensor"),
    "rotary_cache_fp8_head_scales_partial": lambda: check_rotary_cache(7, 6, 3, 80, 32, 32, 1, "cpu", F32,
                                                                       fp8_scales="head"),
    # tokens, q heads, kv heads, head dim, block size, padding; Qwen3's head norms and Gemma 3's
    "rotary_cache_head_norms": lambda: check_rotary_cache_head_norms(9, 4, 2, 64, 16, 2, "cpu", F32, False),
    "rotary_cache_gemma_head_norms_odd_heads": lambda: check_rotary_cache_head_norms(5, 6, 3, 32, 16, 1, "cpu", F32,
                                                                                     True),
    "silu_and_mul_wide": lambda: check_silu_and_mul(7, 1000, "cpu", F32),
    "silu_and_mul_narrow": lambda: check_silu_and_mul(3, 64, "cpu", F32),
    "gelu_tanh_and_mul_wide": lambda: check_gelu_tanh_and_mul(7, 1000, "cpu", F32),
    "gemma_norms_2d": lambda: check_gemma_norms((5, 96), "cpu", F32),
    "gemma_norms_3d_ragged": lambda: check_gemma_norms((3, 2, 100), "cpu", F32),
    # tokens, q heads, kv heads, head dim: per-head views of a fused qkv output, read in place
    "head_norms_qkv_views": lambda: check_head_norms(5, 4, 2, 16, "cpu", F32),
    "input_validation": lambda: check_input_validation("cpu"),
    # tokens, experts, top_k, block_m: the one-launch expert grouping against the torch one (decode,
    # many experts, an expert count not a power of two, ranks carried across 16-pair steps)
    "moe_align_decode_mixtral": lambda: check_moe_align(1, 8, 2, 16, "cpu"),
    # tokens, experts, top_k, renormalised: the one-launch router against the torch one
    "moe_routing_mixtral": lambda: check_moe_routing(9, 8, 2, True, "cpu"),
    "moe_routing_qwen3_moe_not_renormalised": lambda: check_moe_routing(4, 128, 8, False, "cpu"),
    "moe_routing_odd_experts": lambda: check_moe_routing(3, 6, 3, True, "cpu"),
    "moe_align_qwen3_moe": lambda: check_moe_align(5, 128, 8, 16, "cpu"),
    "moe_align_odd_experts": lambda: check_moe_align(37, 6, 3, 16, "cpu"),
    "moe_align_chunks_carry": lambda: check_moe_align(60, 8, 2, 16, "cpu", chunk=16),
    # rows, N, K; plan = (block_n, block_k, warps, stages, split_k): every row count, masks on N and K,
    # split K with an even and a ragged last range, the SiLU epilogue with and without a split, bias
    "decode_gemv_rows1_ragged": lambda: check_decode_gemv(1, 72, 200, "cpu", F32, plan=(32, 64, 4, 2, 1)),
    "decode_gemv_rows2_split4": lambda: check_decode_gemv(2, 64, 512, "cpu", F32, plan=(32, 64, 4, 2, 4)),
    "decode_gemv_rows3_split3_ragged_bias": lambda: check_decode_gemv(3, 80, 300, "cpu", F32, bias=True,
                                                                      plan=(32, 64, 4, 2, 3)),
    "decode_gemv_rows4_own_plan": lambda: check_decode_gemv(4, 96, 128, "cpu", F32),
    # a card's tuned file: its three-way split (the rule would not split K = 384) at 8 rows, ragged N
    "decode_gemv_tuned_plan_rows8": lambda: check_decode_gemv_tuned_plan(8, 80, 384, "cpu", F32, (16, 64, 4, 2, 3)),
    "decode_gemv_rows5_split2": lambda: check_decode_gemv(5, 48, 256, "cpu", F32, plan=(16, 32, 4, 2, 2)),
    "decode_gemv_rows6_silu": lambda: check_decode_gemv(6, 64, 192, "cpu", F32, silu=True, plan=(32, 64, 4, 2, 1)),
    # Gemma's GeGLU epilogue: ragged N, split K with a ragged last range
    "decode_gemv_rows3_gelu_tanh_split2_ragged": lambda: check_decode_gemv(3, 40, 200, "cpu", F32, silu=True,
                                                                           plan=(32, 64, 4, 2, 2), gelu_tanh=True),
    "decode_gemv_fp8_rows2_gelu_tanh": lambda: check_decode_gemv(2, 64, 256, "cpu", F32, silu=True, fp8=True,
                                                                 plan=(32, 64, 4, 2, 1), gelu_tanh=True),
    "decode_gemv_rows7_silu_split_bias": lambda: check_decode_gemv(7, 40, 160, "cpu", F32, silu=True, bias=True,
                                                                   plan=(16, 32, 4, 2, 3)),
    "decode_gemv_rows8_silu_split2": lambda: check_decode_gemv(8, 64, 256, "cpu", F32, silu=True,
                                                               plan=(32, 64, 4, 2, 2)),
    # e4m3 weights with per-row scales: ragged, split with bias, the SiLU epilogue (gate and up scaled apart)
    "decode_gemv_fp8_rows1_ragged": lambda: check_decode_gemv(1, 72, 200, "cpu", F32, plan=(32, 64, 4, 2, 1),
                                                              fp8=True),
    "decode_gemv_fp8_rows3_split3_bias": lambda: check_decode_gemv(3, 80, 300, "cpu", F32, bias=True,
                                                                   plan=(32, 64, 4, 2, 3), fp8=True),
    "decode_gemv_fp8_rows5_silu_split2_bias": lambda: check_decode_gemv(5, 40, 256, "cpu", F32, silu=True, bias=True,
                                                                        plan=(16, 32, 4, 2, 2), fp8=True),
    # the same met in float16 (FP8_MATH 1) and as e4m3 by e4m3 over x quantized per row (FP8_MATH 2)
    "decode_gemv_fp8_f16_rows3_split3_bias": lambda: check_decode_gemv(3, 80, 300, "cpu", F32, bias=True,
                                                                       plan=(32, 64, 4, 2, 3), fp8=True, fp8_math=1),
    "decode_gemv_fp8_f16_rows5_silu": lambda: check_decode_gemv(5, 40, 256, "cpu", F32, silu=True,
                                                                plan=(16, 32, 4, 2, 1), fp8=True, fp8_math=1),
    "decode_gemv_fp8_w8a8_rows1_ragged": lambda: check_decode_gemv(1, 72, 200, "cpu", F32, plan=(32, 64, 4, 2, 1),
                                                                   fp8=True, fp8_math=2),
    "decode_gemv_fp8_w8a8_rows8_silu_split2": lambda: check_decode_gemv(8, 40, 256, "cpu", F32, silu=True,
                                                                        plan=(16, 32, 4, 2, 2), fp8=True, fp8_math=2),
    "decode_gemv_fp8_w8a8_rows4_split3": lambda: check_decode_gemv(4, 64, 384, "cpu", F32, plan=(32, 64, 4, 2, 3),
                                                                   fp8=True, fp8_math=2),
    # an FP8 layer WARD_FP8_GEMV_W8A8 names: float and pre-quantized inputs, the fused SiLU, a bias
    "fp8_w8a8_gemv_layer_rows3_bias": lambda: check_fp8_w8a8_gemv_layer(3, 96, 80, True, "cpu", F32),
    "fp8_w8a8_gemv_layer_rows8": lambda: check_fp8_w8a8_gemv_layer(8, 128, 64, False, "cpu", F32),
    "fp8_w8a8_mlp_normed_rows2": lambda: check_fp8_w8a8_mlp_normed(2, 64, 96, "cpu", F32),
    # rows, hidden, intermediate; o plan, gate_up plan: ragged tiles, a split o_proj, bias-free SiLU
    "decode_gemv_norm_fusion_rows1": lambda: check_decode_gemv_norm_fusion(1, 96, 40, "cpu", F32,
                                                                           (32, 32, 4, 2, 1), (16, 32, 4, 2, 1)),
    "decode_gemv_norm_fusion_rows5_split": lambda: check_decode_gemv_norm_fusion(5, 128, 48, "cpu", F32,
                                                                                 (32, 32, 4, 2, 2), (32, 64, 4, 2, 2)),
    # rows, vocab: several chunks with a ragged last one and planted ties, one chunk, an all -inf row
    "greedy_argmax_ragged_chunks": lambda: check_greedy_argmax(4, 9000, "cpu", F32),
    "greedy_argmax_one_chunk": lambda: check_greedy_argmax(3, 100, "cpu", F32),
    "token_bitmask_odd_vocab": lambda: check_token_bitmask(5, 1000, (0, 2, 3), "cpu"),
    "token_bitmask_padded_words": lambda: check_token_bitmask(3, 4100, (2, 0), "cpu"),
}


def all_case_names() -> list[str]:
    return [*ATTENTION_CASES, *OTHER_CASES]


def run_case(name: str) -> Metrics | dict[str, list[str]]:
    if name in ATTENTION_CASES:
        return check_attention(ATTENTION_CASES[name], "cpu", F32)
    return OTHER_CASES[name]()
