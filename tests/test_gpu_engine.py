"""The engine on an NVIDIA GPU: the Triton path (kernels, CUDA graphs) against transformers.

bf16 tolerances are wider than float32's (relative 3e-2 instead of 1e-4) because bf16 keeps 8
mantissa bits: two correct implementations that round in different places differ by ~1e-2 after
a few layers. Token-level checks in bf16 are teacher-forced (each of our greedy tokens must be the
reference model's top choice, or within 0.1 nats of it), since a near-tie may legitimately flip.
"""
from __future__ import annotations

import random

import pytest
import torch

from tests.paged_driver import PagedDriver, rel_err
from tests.prompts import PROMPTS
from tests.test_model_parity import FAMILIES

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (the CPU suite tests the torch path)"),
]

NEW = 64


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_triton_path_matches_transformers_in_bf16(family, tmp_path):
    from transformers import AutoModelForCausalLM

    from worker.attention.triton_backend import TritonBackend
    from worker.kernels import model_ops
    from worker.model.loader import build_model, load_weights
    from worker.model.spec import load_spec

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(FAMILIES[family](), dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.08)
    hf.save_pretrained(tmp_path)
    hf = hf.cuda().eval()
    spec = load_spec(str(tmp_path))
    ours = build_model(spec, TritonBackend(), torch.device("cuda"), torch.bfloat16, 128, model_ops)
    load_weights(ours, spec, str(tmp_path))
    rng = random.Random(5)
    a = [rng.randrange(spec.vocab_size) for _ in range(40)]
    b = [rng.randrange(spec.vocab_size) for _ in range(23)]
    with torch.no_grad():
        ref_a = hf(torch.tensor([a], device="cuda")).logits[0].float()
        ref_b = hf(torch.tensor([b], device="cuda")).logits[0].float()
    drv = PagedDriver(ours, spec, num_blocks=40, block_size=16, dtype=torch.bfloat16, device="cuda", seed=7)
    la1, lb1 = drv.step([("a", a[:17], 0), ("b", b[:22], 0)])
    la2, lb2 = drv.step([("a", a[17:33], 17), ("b", b[22:23], 22)])
    got = [la1, la2] + [drv.step([("a", a[p : p + 1], p)])[0] for p in range(33, 40)]
    assert rel_err(torch.cat(got), ref_a) < 3e-2, family
    assert rel_err(torch.cat([lb1, lb2]), ref_b) < 3e-2, family


@pytest.fixture(scope="module")
def hf_model(default_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).cuda().eval()
    return tok, model


def _prompts(tok):
    return [tok(p).input_ids for p in PROMPTS]


def test_float32_greedy_equals_transformers_on_cuda(default_model_dir, hf_model):
    from worker import LLM, SamplingParams

    tok, hf = hf_model
    prompts = _prompts(tok)
    expected = []
    for ids in prompts:
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids], device="cuda"), attention_mask=torch.ones(1, len(ids), dtype=torch.long, device="cuda"),
                              max_new_tokens=NEW, do_sample=False, pad_token_id=tok.eos_token_id)
        expected.append(out[0, len(ids):].tolist())
    llm = LLM(model=default_model_dir, dtype="float32", device="cuda", gpu_memory_utilization=0.3)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=NEW))
    same = sum(o.outputs[0].token_ids == e for o, e in zip(outs, expected))
    assert same == len(prompts), f"{same}/{len(prompts)} prompts identical"


def _worst_gap(hf, prompts, generations) -> float:
    """Largest shortfall, in nats, of a generated token's log-probability below the float32 reference
    model's best choice at that position (teacher-forced on the generated sequence)."""
    worst = 0.0
    for ids, gen in zip(prompts, generations):
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([ids + gen], device="cuda")).logits[0].float(), -1)
        pos = torch.arange(len(ids) - 1, len(ids) - 1 + len(gen), device="cuda")
        chosen = logp[pos, torch.tensor(gen, device="cuda")]
        worst = max(worst, (logp[pos].max(-1).values - chosen).max().item())
    return worst


@pytest.fixture(scope="module")
def hf_bf16_gap(default_model_dir, hf_model):
    """How far transformers' own bf16 greedy strays from its float32 model: the yardstick for ours."""
    from transformers import AutoModelForCausalLM

    tok, hf = hf_model
    prompts = _prompts(tok)
    bf = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.bfloat16).cuda().eval()
    gens = []
    for ids in prompts:
        with torch.no_grad():
            out = bf.generate(torch.tensor([ids], device="cuda"), attention_mask=torch.ones(1, len(ids), dtype=torch.long, device="cuda"),
                              max_new_tokens=NEW, do_sample=False, pad_token_id=tok.eos_token_id)
        gens.append(out[0, len(ids):].tolist())
    del bf
    return _worst_gap(hf, prompts, gens)


@pytest.mark.parametrize("eager", [False, True], ids=["cuda-graphs", "eager"])
def test_bf16_greedy_strays_no_further_than_transformers_bf16(default_model_dir, hf_model, hf_bf16_gap, eager):
    from worker import LLM, SamplingParams

    tok, hf = hf_model
    prompts = _prompts(tok)
    llm = LLM(model=default_model_dir, dtype="bfloat16", device="cuda", gpu_memory_utilization=0.3, enforce_eager=eager)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], SamplingParams(temperature=0, max_tokens=NEW))
    ours = _worst_gap(hf, prompts, [o.outputs[0].token_ids for o in outs])
    print(f"worst gap to the float32 model's best token: ours {ours:.3f} nats, transformers bf16 {hf_bf16_gap:.3f}")
    assert ours <= max(0.1, 1.5 * hf_bf16_gap), (ours, hf_bf16_gap)


def test_preemption_on_gpu_keeps_greedy_output(default_model_dir, hf_model):
    from worker import LLM, SamplingParams

    tok, _ = hf_model
    prompts = [{"prompt_token_ids": p} for p in _prompts(tok)]
    params = SamplingParams(temperature=0, max_tokens=NEW)
    roomy = LLM(model=default_model_dir, dtype="float32", device="cuda", num_kv_blocks=2000)
    tight = LLM(model=default_model_dir, dtype="float32", device="cuda", num_kv_blocks=40)
    a = [o.outputs[0].token_ids for o in roomy.generate(prompts, params)]
    b = [o.outputs[0].token_ids for o in tight.generate(prompts, params)]
    assert tight.engine.stats().num_preemptions > 0
    assert a == b
