"""Gemma 2, Gemma 3 (text, and the text part of a Gemma 3 multimodal checkpoint as MedGemma ships),
Phi-3/4 (fused weights, partial rotary, LongRoPE), Mixtral and Qwen3-MoE (top-k routers with and
without renormalisation, a dense layer among sparse ones) against transformers on the same random
weights, each saved by transformers as a Hugging Face directory and loaded back by Ward:

- prefill logits of three prompts in one flat batch over shuffled paged blocks (float32, < 1e-4);
- chunked prefill beside a decode, then paged decode one token at a time, against one full forward
  (prefill and decode must agree with each other and with transformers);
- greedy tokens of the whole engine (scheduler, KV cache manager, runner) equal to greedy decoding
  with transformers' forward.
"""
from __future__ import annotations

import os
import random

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    MixtralConfig,
    Phi3Config,
    Qwen3MoeConfig,
)

from tests.paged_driver import PagedDriver, rel_err
from worker.attention.torch_backend import TorchBackend
from worker.engine.kv_layout import plan_kv_layout
from worker.errors import ModelLoadError
from worker.llm import LLM
from worker.model.loader import build_model, load_weights
from worker.model.spec import load_spec
from worker.sampling_params import SamplingParams

VOCAB = 256
COMMON = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
              max_position_embeddings=128, rms_norm_eps=1e-6)
LOCAL_GLOBAL_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                     "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}}
PHI_ORIGINAL_CONTEXT = 40  # LongRoPE switches to its long factors past this many positions


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and a busy machine with few cores cannot then stall them
    (with two threads a tiny forward was seen to take 100x longer while other work ran)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gemma3_text(**extra) -> Gemma3TextConfig:
    # 6 layers: transformers' default pattern, 5 sliding-window layers then 1 global
    return Gemma3TextConfig(**COMMON, num_hidden_layers=6, head_dim=16, sliding_window=5, query_pre_attn_scalar=24,
                            rope_parameters=LOCAL_GLOBAL_ROPE, **extra)


def _gemma3_multimodal() -> Gemma3Config:
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    return Gemma3Config(text_config=_gemma3_text().to_dict(), vision_config=vision, mm_tokens_per_image=4,
                        boi_token_index=250, eoi_token_index=251, image_token_index=252)


def _phi3() -> Phi3Config:
    rotary_half = int(16 * 0.75) // 2
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
            "short_factor": [1.0 + 0.1 * i for i in range(rotary_half)],
            "long_factor": [2.0 + 0.7 * i for i in range(rotary_half)],
            "original_max_position_embeddings": PHI_ORIGINAL_CONTEXT}
    return Phi3Config(**COMMON, num_hidden_layers=3, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                      original_max_position_embeddings=PHI_ORIGINAL_CONTEXT, rope_parameters=rope)


FAMILIES = {
    "gemma2-softcap-alternating": lambda: Gemma2Config(
        **COMMON, num_hidden_layers=4, head_dim=16, sliding_window=5, query_pre_attn_scalar=24,
        attn_logit_softcapping=1.5, final_logit_softcapping=2.0),
    "gemma3-text-5-local-1-global": _gemma3_text,
    "gemma3-multimodal-text-part": _gemma3_multimodal,
    "phi3-longrope-partial-rotary": _phi3,
    "mixtral-top2-renormalised": lambda: MixtralConfig(
        **COMMON, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False),
    "qwen3-moe-not-renormalised": lambda: Qwen3MoeConfig(
        **COMMON, num_hidden_layers=3, head_dim=16, num_experts=6, num_experts_per_tok=3, moe_intermediate_size=32,
        norm_topk_prob=False, mlp_only_layers=[1]),
    "qwen3-moe-renormalised": lambda: Qwen3MoeConfig(
        **COMMON, num_hidden_layers=2, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        norm_topk_prob=True, tie_word_embeddings=True),
}


def _random_hf(cfg):
    cls = Gemma3ForConditionalGeneration if isinstance(cfg, Gemma3Config) else AutoModelForCausalLM
    make = cls._from_config if cls is Gemma3ForConditionalGeneration else cls.from_config
    hf = make(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in hf.parameters():  # every weight random, norms included
            p.normal_(0.0, 0.08)
    return hf


# Engine context per family where it matters: within Phi-3's original context its LongRoPE takes the
# short factors, as transformers does for these short sequences (the long ones: the LongRoPE test).
CONTEXT = {"phi3-longrope-partial-rotary": PHI_ORIGINAL_CONTEXT}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = _random_hf(FAMILIES[request.param]())
    d = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(d)
    spec = load_spec(str(d))
    ours = build_model(spec, TorchBackend(), torch.device("cpu"), torch.float32, CONTEXT.get(request.param, 128))
    load_weights(ours, spec, str(d))
    return request.param, hf, ours, spec, str(d)


def hf_logits(hf, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=torch.tensor([tokens])).logits[0].float()


def test_prefill_logits_match_transformers(family):
    name, hf, ours, spec, _ = family
    rng = random.Random(1)
    seqs = {f"s{i}": [rng.randrange(VOCAB) for _ in range(n)] for i, n in enumerate([5, 17, 33])}
    drv = PagedDriver(ours, spec, num_blocks=40, block_size=4)
    outs = drv.step([(sid, toks, 0) for sid, toks in seqs.items()])
    for (sid, toks), got in zip(seqs.items(), outs):
        err = rel_err(got, hf_logits(hf, toks))
        assert err < 1e-4, f"{name} {sid}: relative error {err:.2e}"


def test_chunked_prefill_and_paged_decode_match_transformers(family):
    name, hf, ours, spec, _ = family
    rng = random.Random(2)
    a = [rng.randrange(VOCAB) for _ in range(30)]
    b = [rng.randrange(VOCAB) for _ in range(21)]
    ref_a, ref_b = hf_logits(hf, a), hf_logits(hf, b)
    drv = PagedDriver(ours, spec, num_blocks=40, block_size=4, seed=3)
    la1, lb1 = drv.step([("a", a[:11], 0), ("b", b[:20], 0)])
    la2, lb2 = drv.step([("a", a[11:25], 11), ("b", b[20:21], 20)])
    got_a = [la1, la2] + [drv.step([("a", a[p : p + 1], p)])[0] for p in range(25, 30)]
    assert rel_err(torch.cat(got_a), ref_a) < 1e-4, name
    assert rel_err(torch.cat([lb1, lb2]), ref_b) < 1e-4, name
    for i, p in enumerate(range(25, 30)):  # each decode over the paged cache equals the full forward's row
        assert rel_err(got_a[2 + i], ref_a[p : p + 1]) < 1e-4, f"{name} decode at {p}"


def test_engine_greedy_tokens_equal_transformers(family):
    name, hf, _, spec, model_dir = family
    rng = random.Random(4)
    prompts = [[rng.randrange(VOCAB) for _ in range(n)] for n in (9, 14)]
    new = 7
    expected = []
    for ids in prompts:
        seq = list(ids)
        for _ in range(new):  # greedy decoding with transformers' full forward
            seq.append(int(hf_logits(hf, seq)[-1].argmax()))
        expected.append(seq[len(ids):])
    llm = LLM(model=model_dir, device="cpu", dtype="float32", block_size=4, num_kv_blocks=48,
              max_model_len=CONTEXT.get(name, 64),
              max_num_batched_tokens=16)  # 16 tokens a step: the longer prompt is prefilled in chunks
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True))
    assert [o.outputs[0].token_ids for o in outs] == expected, name


@pytest.mark.parametrize("max_position, prompt_len", [
    (128, PHI_ORIGINAL_CONTEXT + 20),  # a long prompt: transformers rotates every position with the long factors
    (128, PHI_ORIGINAL_CONTEXT - 4),  # decoding across the original context, the long factors from the start
    (PHI_ORIGINAL_CONTEXT, PHI_ORIGINAL_CONTEXT - 12),  # a context within the original one: the short factors
])
def test_phi3_longrope_takes_one_table_for_the_whole_context_as_vllm_does(tmp_path, max_position, prompt_len):
    """LongRoPE picks one table from the engine's context length (vLLM's rule): the long factors for
    every position when the context may pass the original one, else the short. Each sequence is then
    rotated consistently, so its logits are transformers' for a sequence of the same kind."""
    torch.manual_seed(5)
    hf = _random_hf(_phi3())
    hf.save_pretrained(tmp_path)
    spec = load_spec(str(tmp_path))
    ours = build_model(spec, TorchBackend(), torch.device("cpu"), torch.float32, max_position)
    load_weights(ours, spec, str(tmp_path))
    rng = random.Random(6)
    prompt = [rng.randrange(VOCAB) for _ in range(prompt_len)]  # distinct tokens: positions matter
    drv = PagedDriver(ours, spec, num_blocks=40, block_size=4)
    ours_logits = [drv.step([("a", prompt, 0)])[0][-1]]
    steps = min(10, max_position - prompt_len)
    long_context = max_position > PHI_ORIGINAL_CONTEXT
    with torch.no_grad():
        # transformers takes the long factors once a sequence passes the original context (and
        # recomputes its cache when generation crosses): a whole-sequence forward at the final
        # length is its answer for every prefix of a sequence that ends past it
        seq = list(prompt)
        for _ in range(steps):
            seq.append(int(ours_logits[-1].argmax()))
            ours_logits.append(drv.step([("a", [seq[-1]], len(seq) - 1)])[0][-1])
        if long_context and len(seq) <= PHI_ORIGINAL_CONTEXT:
            pytest.fail("the case must end past the original context")
        ref = hf(input_ids=torch.tensor([seq])).logits[0]
    for i, got in enumerate(ours_logits):
        assert rel_err(got, ref[prompt_len - 1 + i]) < 1e-4, f"step {i}"
    rope = spec.ropes[0]
    assert rope.long_from == PHI_ORIGINAL_CONTEXT and not torch.allclose(rope.inv_freq, rope.long_inv_freq)


@pytest.mark.parametrize("config, field", [
    (lambda: _gemma3_text(use_bidirectional_attention=True), "use_bidirectional_attention"),
    (lambda: Qwen3MoeConfig(**COMMON, num_hidden_layers=2, num_experts=4, use_sliding_window=True, sliding_window=8),
     "use_sliding_window"),
    (lambda: Phi3Config(**COMMON, num_hidden_layers=2, pad_token_id=0, hidden_act="relu"), "hidden_act"),
    # each family's MLP has one activation: another one named in the config is refused, not ignored
    (lambda: Phi3Config(**COMMON, num_hidden_layers=2, pad_token_id=0, hidden_act="gelu_pytorch_tanh"), "hidden_act"),
    (lambda: Gemma2Config(**COMMON, num_hidden_layers=2, head_dim=16, hidden_activation="silu"), "hidden_activation"),
    (lambda: MixtralConfig(**COMMON, num_hidden_layers=2, rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                                           "rope_theta": 10000.0}), "rope_type"),
])
def test_unsupported_options_are_refused_naming_the_field(tmp_path, config, field):
    config().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        load_spec(str(tmp_path))
    assert field in str(err.value) and "\n" not in str(err.value)


def test_unsupported_architecture_is_refused(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        load_spec(str(tmp_path))
    assert "architectures ['GPT2LMHeadModel'] is not supported" in str(err.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU: CUDA is not available")
def test_gpu_path_matches_transformers(family):
    """The CUDA path of each family (Triton attention with soft-capping and windows, Triton norms,
    rotary and fused MoE) in float32 against transformers, prefill and paged decode."""
    from worker.attention.triton_backend import TritonBackend
    from worker.kernels import model_ops

    name, hf, _, spec, model_dir = family
    ours = build_model(spec, TritonBackend(), torch.device("cuda"), torch.float32, 128, model_ops)
    load_weights(ours, spec, model_dir)
    rng = random.Random(8)
    a = [rng.randrange(VOCAB) for _ in range(30)]
    ref = hf_logits(hf, a)
    drv = PagedDriver(ours, spec, num_blocks=40, block_size=16, device="cuda")
    got = [drv.step([("a", a[:24], 0)])[0]] + [drv.step([("a", a[p : p + 1], p)])[0] for p in range(24, 30)]
    assert rel_err(torch.cat(got).cpu(), ref) < 1e-3, name


def test_both_multimodal_weight_layouts_load_the_same_language_model(tmp_path):
    """Gemma 3 multimodal checkpoints name the language model ``language_model.model.*`` (as published,
    MedGemma included) or ``model.language_model.*`` (newer transformers); both load, vision skipped."""
    import shutil

    from safetensors.torch import load_file, save_file

    torch.manual_seed(9)
    legacy = tmp_path / "legacy"
    _random_hf(_gemma3_multimodal()).save_pretrained(legacy)
    tensors = load_file(str(legacy / "model.safetensors"))
    assert any(k.startswith("language_model.model.") for k in tensors)
    renamed = {}
    for key, value in tensors.items():
        for old, new in (("language_model.model.", "model.language_model."), ("vision_tower.", "model.vision_tower."),
                         ("multi_modal_projector.", "model.multi_modal_projector.")):
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    newer = tmp_path / "newer"
    newer.mkdir()
    shutil.copy(legacy / "config.json", newer / "config.json")
    save_file(renamed, str(newer / "model.safetensors"), metadata={"format": "pt"})
    models = []
    for d in (legacy, newer):
        spec = load_spec(str(d))
        model = build_model(spec, TorchBackend(), torch.device("cpu"), torch.float32, 64)
        load_weights(model, spec, str(d))
        models.append(model)
    a, b = (dict(m.named_parameters()) for m in models)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["embed_tokens.weight"], tensors["language_model.model.embed_tokens.weight"])


def test_a_published_gemma3_multimodal_config_reads_as_its_text_model(tmp_path):
    """config.json as MedGemma 4B / Gemma 3 4B were published (transformers 4.50 layout: rope_theta,
    rope_local_base_freq, rope_scaling, sliding_window_pattern; end tokens at the top level)."""
    import json

    text = {"head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2560, "intermediate_size": 10240,
            "max_position_embeddings": 131072, "model_type": "gemma3_text", "num_attention_heads": 8,
            "num_hidden_layers": 34, "num_key_value_heads": 4, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
            "rope_local_base_freq": 10000.0, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "rope_theta": 1000000.0, "sliding_window": 1024, "sliding_window_pattern": 6, "vocab_size": 262208,
            "attn_logit_softcapping": None, "final_logit_softcapping": None}
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "eos_token_id": [1, 106],
              "mm_tokens_per_image": 256, "text_config": text, "torch_dtype": "bfloat16",
              "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                                "model_type": "siglip_vision_model", "num_attention_heads": 16,
                                "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": False}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = load_spec(str(tmp_path))
    assert spec.family == "gemma3" and spec.num_layers == 34 and spec.config_dtype == torch.bfloat16
    assert spec.sliding_windows[:6] == [1024] * 5 + [None]
    # MedGemma 4B's 34 layers: one global group of its 5 global layers, six sliding groups of up to 5
    layout = plan_kv_layout(spec.sliding_windows, 131072)
    assert layout.windows == (None,) + (1024,) * 6 and layout.layers_per_block == 5
    local, global_ = spec.ropes[spec.rope_index[0]], spec.ropes[spec.rope_index[5]]
    dim = torch.arange(0, 256, 2).float() / 256
    assert torch.allclose(local.inv_freq, 1.0 / 10000.0**dim)
    assert torch.allclose(global_.inv_freq, 1.0 / 1000000.0**dim / 8.0)  # linear scaling of the global table
    assert spec.attn_scale == 256**-0.5 and spec.attn_logit_softcap is None and spec.final_logit_softcap is None
    assert spec.eos_token_ids == [1, 106] and spec.tie_word_embeddings and spec.qk_norm


@pytest.mark.parametrize("name", ["mixtral-top2-renormalised", "qwen3-moe-not-renormalised"])
def test_stacked_expert_tensors_load_like_per_expert_ones(tmp_path, name):
    """Checkpoints written from transformers 5's own state dict hold each layer's experts stacked
    (``mlp.experts.gate_up_proj`` / ``down_proj``); they load to the same weights as per-expert files."""
    from safetensors.torch import save_file

    torch.manual_seed(10)
    hf = _random_hf(FAMILIES[name]())
    per_expert, stacked = tmp_path / "per_expert", tmp_path / "stacked"
    hf.save_pretrained(per_expert)
    hf.config.save_pretrained(stacked)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in state)
    save_file(state, str(stacked / "model.safetensors"), metadata={"format": "pt"})
    models = []
    for d in (per_expert, stacked):
        spec = load_spec(str(d))
        model = build_model(spec, TorchBackend(), torch.device("cpu"), torch.float32, 64)
        load_weights(model, spec, str(d))
        models.append(dict(model.named_parameters()))
    a, b = models
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


INTERPRETED = ["gemma3-text-5-local-1-global", "qwen3-moe-not-renormalised"]  # soft-capping: tests/test_kernels.py


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine test_gpu_path_matches_transformers runs this")
def test_cuda_code_path_matches_transformers_in_the_triton_interpreter():
    """The CUDA path (Triton paged attention, norms, rotary with Gemma 3's two RoPE tables, fused MoE
    with a dense layer between sparse ones) run on the CPU by Triton's interpreter in a fresh process
    (``tests/families_interpreter.py``): prefill and paged decode against transformers."""
    from interpreter_run import run_interpreter_script

    pytest.importorskip("triton")
    runs = run_interpreter_script("families_interpreter.py", *INTERPRETED)
    assert runs.keys() == set(INTERPRETED)
    for name, run in runs.items():
        assert run["rel_err"] < 1e-4, f"{name}: relative error {run['rel_err']:.2e}"
        # both families norm q and k per head: every layer's cache write of the four steps took the norms
        assert run["head_norms_fused"] == run["cache_writes"] == 4 * run["layers"], run


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_safetensors_file_is_refused_naming_it(tmp_path, damage):
    """A half-copied or overwritten weights file stops the load with one line naming the file (the
    worker prints it and exits 1), not the safetensors library's traceback."""
    from tests.tiny_llama import tiny_llama_dir

    from worker.runner.memory import checkpoint_weight_bytes

    model_dir = tiny_llama_dir(str(tmp_path / "tiny-"))
    weights = os.path.join(model_dir, "model.safetensors")
    if damage == "truncated":
        os.truncate(weights, os.path.getsize(weights) // 2)
    else:
        with open(weights, "wb") as f:
            f.write(b"\xff" * 4096)
    with pytest.raises(ModelLoadError) as err:
        LLM(model=model_dir, device="cpu", num_kv_blocks=8, max_model_len=64)
    assert weights in str(err.value) and "\n" not in str(err.value)
    if damage == "garbage":  # the GPU path sizes the weights from the headers before loading them
        with pytest.raises(ModelLoadError) as err:
            checkpoint_weight_bytes([weights], torch.float16)
        assert weights in str(err.value)
