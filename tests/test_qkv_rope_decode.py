"""The decode qkv launch with rotary and the KV-cache write in its epilogue (``WARD_QKV_ROPE_GEMV=1``):
when a layer takes it, and that an engine decodes the same greedy tokens with it as without.

The kernel's numerics are checked in ``test_kernels.py`` (interpreter and GPU cases) and through tiny
models of several families in ``test_decode_fusion.py``; the GPU case here runs a whole engine with
CUDA graphs in bfloat16.
"""
from __future__ import annotations

import gc

import pytest
import torch

from worker.attention.triton_backend import TritonAttention
from worker.kernels.decode_gemv_config import GemvPlan
from worker.kernels.qkv_rope_gemv import DEFAULT_PLAN, block_n_for, fusable, plan_from_env

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_a_layer_fuses_only_a_full_width_rotary_with_tiles_a_compiled_dot_takes() -> None:
    assert fusable(128, 128, CUDA) and fusable(64, 64, CUDA) and fusable(256, 256, CUDA)
    assert not fusable(128, 64, CUDA)  # partial rotary (Phi-3's kind): the two launches
    assert not fusable(16, 16, CUDA)  # 8 dims a half: too narrow for a compiled tl.dot
    assert fusable(16, 16, CPU)  # the interpreter takes it (tiny test models)
    assert fusable(96, 96, CUDA) and block_n_for(96) == 16  # 48 dims a half: three tiles of 16
    assert not fusable(80, 80, CUDA)  # 40 dims a half: tiles of 16 do not cover it exactly


def test_plan_from_the_environment() -> None:
    assert plan_from_env("") == DEFAULT_PLAN
    assert plan_from_env("32:128:4:3") == GemvPlan(32, 128, 4, 3, 1)
    for bad in ("32:128:4", "24:128:4:3", "a:b:c:d", "0:128:4:3"):
        with pytest.raises(ValueError):
            plan_from_env(bad)


def _attention(monkeypatch: pytest.MonkeyPatch, on: str) -> TritonAttention:
    monkeypatch.setenv("WARD_QKV_ROPE_GEMV", on)
    return TritonAttention(4, 2, 32, 32**-0.5, None)


def test_the_backend_takes_the_launch_only_when_switched_on_with_a_cache_it_can_write(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = torch.empty(2, 16, 2, 32, dtype=torch.bfloat16)
    hidden = torch.empty(1, 128, dtype=torch.bfloat16)
    assert not _attention(monkeypatch, "0").takes_projected_cache_write(32, 32, cache, hidden)
    attn = _attention(monkeypatch, "1")
    assert attn.takes_projected_cache_write(32, 32, cache, hidden)
    assert not attn.takes_projected_cache_write(32, 16, cache, hidden)  # partial rotary
    assert not attn.takes_projected_cache_write(32, 32, cache.float(), hidden)  # cache of another dtype
    attn.k_scale = attn.v_scale = torch.ones(1)  # an FP8 cache scales its writes
    assert not attn.takes_projected_cache_write(32, 32, cache, hidden)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA graphs, the compiled GEMV)")
def test_engine_decodes_the_same_greedy_tokens_with_the_fused_qkv_launch_on_gpu(tmp_path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from worker.kernels import qkv_rope_gemv
    from worker.llm import LLM
    from worker.sampling_params import SamplingParams

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=211, max_position_embeddings=1024, rms_norm_eps=1e-6)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    prompts = [{"prompt_token_ids": [(7 * i + 3) % 200 + 5 for i in range(n)]} for n in (40, 9, 70)]
    params = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
    launches = []
    original = qkv_rope_gemv.decode_qkv_rope_cache

    def counted(*args, **kwargs):
        launches.append(args[0].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(qkv_rope_gemv, "decode_qkv_rope_cache", counted)
    runs = {}
    for on in ("1", "0"):
        monkeypatch.setenv("WARD_QKV_ROPE_GEMV", on)
        launches.clear()
        llm = LLM(str(tmp_path), device="cuda", dtype="bfloat16", max_model_len=1024, num_kv_blocks=256)
        try:
            runs[on] = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params)]
        finally:
            llm.engine.close()
            del llm
            gc.collect()
            torch.cuda.empty_cache()
        # on: the decode steps (captured into the graphs, or run eagerly) took the launch; off: never
        assert bool(launches) == (on == "1"), launches
    assert runs["1"] == runs["0"]
