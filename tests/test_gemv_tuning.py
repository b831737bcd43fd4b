"""``ward tune gemv`` and the tuned-config files the decode GEMV reads (worker.kernels.gemv_tuned,
worker.tuning). The timing itself needs a card; here: the files, the plan precedence, the walk's
choice under a made-up timer, the model's shapes and the command's refusals. That a launch takes a
file's plan and computes right is the interpreter case ``decode_gemv_tuned_plan_rows8``
(tests/kernels_cpu_cases.py)."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from worker.kernels import decode_gemv_config as config
from worker.kernels import gemv_tuned
from worker.kernels.decode_gemv_config import LLAMA_8B_PLANS, GemvPlan, choose_plan
from worker.kernels.gemv_tuned import TunedConfigError, TunedPlan, TunedShape
from worker.tuning.gemv_tuner import AXES, improved, model_shapes, tune_shape

CARD = "NVIDIA H200"
QKV = TunedShape(6144, 4096, False, 2, False)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv(gemv_tuned.FOLDER_ENV, str(tmp_path))
    gemv_tuned.forget_loaded()
    yield tmp_path
    gemv_tuned.forget_loaded()


def test_file_names_carry_the_card_name_in_characters_a_configmap_key_allows(folder) -> None:
    assert gemv_tuned.device_file_name("NVIDIA H100 80GB HBM3") == "decode_gemv-NVIDIA_H100_80GB_HBM3.json"
    assert gemv_tuned.device_file_name("NVIDIA A100-SXM4-80GB (MIG 3g.40gb)") == \
        "decode_gemv-NVIDIA_A100-SXM4-80GB_MIG_3g.40gb_.json"
    assert gemv_tuned.device_config_path(CARD) == folder / "decode_gemv-NVIDIA_H200.json"
    assert gemv_tuned.device_config_path(CARD, "/x").as_posix() == "/x/decode_gemv-NVIDIA_H200.json"


def test_default_folder_is_under_the_user_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(gemv_tuned.FOLDER_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert gemv_tuned.default_folder() == tmp_path / "ward" / "tuned-configs"


def test_written_plans_read_back_and_a_second_tuning_merges(folder) -> None:
    path = gemv_tuned.device_config_path(CARD)
    first = [TunedPlan(QKV, GemvPlan(64, 256, 4, 3, 1), 20.5, 22.0),
             TunedPlan(TunedShape(4096, 14336, False, 2, True), GemvPlan(32, 512, 4, 4, 2), 40.0, 43.0)]
    gemv_tuned.write_plans(path, CARD, first, model="llama-3.1-8b")
    again = TunedPlan(QKV, GemvPlan(32, 128, 8, 4, 1), 19.0, 20.5)
    gemv_tuned.write_plans(path, CARD, [again])
    plans = {p.shape: p for p in gemv_tuned.read_plans(path, CARD)}
    assert plans[QKV] == again  # tuned again: the new plan
    assert plans[first[1].shape] == first[1]  # not tuned again: kept
    assert [p.name for p in folder.iterdir()] == [path.name]  # written by rename: no temporary left
    assert path.stat().st_mode & 0o777 == 0o644  # readable by workers running as another user
    assert json.loads(path.read_text())["device_name"] == CARD


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(kernel="other"), "not a decode_gemv tuned-config file"),
    (lambda d: d.update(device_name="NVIDIA H100 80GB HBM3"), "not of 'NVIDIA H200'"),
    (lambda d: d.update(plans={}), "'plans' must be a list"),
    (lambda d: d["plans"][0].update(plan=[48, 256, 4, 3, 1]), "powers of two"),
    (lambda d: d["plans"][0].update(plan=[32, 256, 4, 3, 9]), "split_k must be at most 8"),
    (lambda d: d["plans"][0].update(plan=[32, 256, 4, 3]), "plan must be"),
    (lambda d: d["plans"][0].update(plan=[32, 256, True, 3, 1]), "integer"),
    (lambda d: d["plans"][0].pop("silu"), "lacks 'silu'"),
    (lambda d: d["plans"][0].update(weight_bytes=3), "weight_bytes"),
    (lambda d: d["plans"][0].update(n=0), "at least 1"),
    (lambda d: d["plans"][0].update(us=-1), "non-negative"),
])
def test_a_malformed_file_is_refused_naming_the_file(folder, mutate, message) -> None:
    path = gemv_tuned.device_config_path(CARD)
    gemv_tuned.write_plans(path, CARD, [TunedPlan(QKV, GemvPlan(64, 256, 4, 3, 1), 20.5, 22.0)])
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(TunedConfigError, match=message) as refused:
        gemv_tuned.tuned_table(CARD)
    assert str(path) in str(refused.value)


def test_a_file_that_is_not_json_is_refused(folder) -> None:
    gemv_tuned.device_config_path(CARD).write_text("{not json")
    with pytest.raises(TunedConfigError, match="cannot read tuned plans"):
        gemv_tuned.tuned_table(CARD)


def test_tuned_table_is_empty_without_a_file_or_a_card(folder) -> None:
    assert gemv_tuned.tuned_table(CARD) == {}
    assert gemv_tuned.tuned_table(None) == {}


def test_tuned_table_is_read_once_per_process(folder) -> None:
    path = gemv_tuned.device_config_path(CARD)
    gemv_tuned.write_plans(path, CARD, [TunedPlan(QKV, GemvPlan(64, 256, 4, 3, 1))])
    assert gemv_tuned.tuned_table(CARD) == {QKV.key: GemvPlan(64, 256, 4, 3, 1)}
    path.unlink()
    assert gemv_tuned.tuned_table(CARD) == {QKV.key: GemvPlan(64, 256, 4, 3, 1)}  # loaded: no read per launch
    gemv_tuned.forget_loaded()
    assert gemv_tuned.tuned_table(CARD) == {}


def test_the_cards_plan_comes_after_the_environment_and_before_the_h100_tables(monkeypatch) -> None:
    tuned_one, tuned_wide = GemvPlan(64, 128, 8, 3, 1), GemvPlan(16, 256, 2, 4, 2)
    table = {QKV.key: tuned_one, dataclasses.replace(QKV, wide=True).key: tuned_wide}
    assert choose_plan(6144, 4096, 132, tuned=None) == LLAMA_8B_PLANS[(6144, 4096, False)]
    assert choose_plan(6144, 4096, 132, tuned=table) == tuned_one
    assert choose_plan(6144, 4096, 132, rows=8, tuned=table) == tuned_wide
    # keyed by the weights' width: an e4m3 launch of the same shape keeps the FP8 table's plan
    assert choose_plan(6144, 4096, 132, element_size=1, tuned=table) == config.LLAMA_8B_FP8_PLANS[(6144, 4096, False)]
    monkeypatch.setattr(config, "PLAN_OVERRIDES", config.parse_plan_overrides("6144x4096=32:512:4:2:1"))
    assert choose_plan(6144, 4096, 132, tuned=table) == GemvPlan(32, 512, 4, 2, 1)


def test_the_e4m3_by_e4m3_launches_take_their_own_tuned_plans(monkeypatch) -> None:
    from worker.kernels import decode_gemv

    w8a8 = TunedShape(6144, 4096, False, 1, True, e4m3_x=True)
    widen = TunedShape(6144, 4096, False, 1, True)
    table = {w8a8.key: GemvPlan(128, 64, 8, 2, 2), widen.key: GemvPlan(16, 512, 2, 3, 1)}
    assert config.choose_w8a8_plan(6144, 4096, rows=8, tuned=table) == GemvPlan(128, 64, 8, 2, 2)
    assert config.choose_w8a8_plan(6144, 4096, rows=1, tuned=table) == config.LLAMA_8B_W8A8_PLANS[(6144, 4096, False)]
    assert choose_plan(6144, 4096, 132, element_size=1, rows=8, tuned=table) == GemvPlan(16, 512, 2, 3, 1)
    # through the launch's lookup, on a card of that name
    monkeypatch.setattr(decode_gemv, "device_name", lambda _device: CARD)
    monkeypatch.setitem(gemv_tuned._LOADED, CARD, table)
    weight = torch.empty(6144, 4096, dtype=torch.float8_e4m3fn, device="meta")
    assert decode_gemv.w8a8_plan_for(weight, rows=8) == GemvPlan(128, 64, 8, 2, 2)
    assert decode_gemv.plan_for(weight, rows=8) == GemvPlan(16, 512, 2, 3, 1)


def test_an_e4m3_x_entry_needs_e4m3_weights(folder) -> None:
    path = gemv_tuned.device_config_path(CARD)
    shape = TunedShape(6144, 4096, False, 1, False, e4m3_x=True)
    gemv_tuned.write_plans(path, CARD, [TunedPlan(shape, GemvPlan(64, 256, 4, 4, 1))])
    assert gemv_tuned.tuned_table(CARD) == {shape.key: GemvPlan(64, 256, 4, 4, 1)}
    data = json.loads(path.read_text())
    data["plans"][0]["weight_bytes"] = 2
    path.write_text(json.dumps(data))
    gemv_tuned.forget_loaded()
    with pytest.raises(TunedConfigError, match="meets e4m3 weights only"):
        gemv_tuned.tuned_table(CARD)


def test_a_tuned_plan_is_still_fitted_to_the_cards_shared_memory() -> None:
    big = GemvPlan(64, 2048, 4, 8, 1)
    table = {QKV.key: big}
    limit = 232_448  # an H100's opt-in figure
    fitted = choose_plan(6144, 4096, 132, shared_limit=limit, tuned=table)
    assert config.pipeline_bytes(fitted, False, 2) <= limit < config.pipeline_bytes(big, False, 2)


def _made_up_timer(best: GemvPlan, calls: list | None = None):
    """Microseconds growing with each field's distance (in its axis) from ``best``; None for 8 warps (cannot run)."""
    def time_plan(plan: GemvPlan) -> float | None:
        if calls is not None:
            calls.append(plan)
        if plan.num_warps == 8:
            return None
        steps = sum(abs(AXES[axis].index(getattr(plan, axis)) - AXES[axis].index(getattr(best, axis)))
                    for axis in AXES)
        return 10.0 * (1 + 0.05 * steps)
    return time_plan


def test_the_walk_finds_the_fastest_plan_and_keeps_it_when_it_beats_the_start() -> None:
    best = GemvPlan(64, 512, 2, 3, 2)
    start = GemvPlan(32, 256, 4, 4, 1)
    tuned, trials = tune_shape(QKV, start, _made_up_timer(best))
    assert tuned.plan == best and tuned.us < tuned.start_us
    assert improved([tuned]) == [tuned]
    assert any(t["us"] is None for t in trials)  # the 8-warp plans were tried and skipped


def test_noise_never_replaces_the_start_plan() -> None:
    start = GemvPlan(32, 256, 4, 4, 1)
    other = GemvPlan(64, 256, 4, 4, 1)

    seen: list[GemvPlan] = []

    def time_plan(plan: GemvPlan) -> float:
        if plan == other and other not in seen:  # 1.5% faster once: the walk takes it ...
            seen.append(other)
            return 9.85
        return 10.0 if plan in (start, other) else 11.0

    tuned, _ = tune_shape(QKV, start, time_plan)  # ... but against the start, timed again, it is level
    assert seen == [other] and tuned.plan == start and improved([tuned]) == []


def test_a_start_that_is_already_the_fastest_stays() -> None:
    start = GemvPlan(32, 256, 4, 4, 1)
    calls: list[GemvPlan] = []
    tuned, _ = tune_shape(QKV, start, _made_up_timer(start, calls))
    assert tuned == TunedPlan(QKV, start, 10.0, 10.0)
    assert improved([tuned]) == []
    assert len(set(calls)) > 10  # every axis was walked


def test_the_shapes_are_the_models_own_launches() -> None:
    llama = model_shapes("llama-3.1-8b")
    assert {(s.n, s.k, s.silu, s.weight_bytes) for s in llama} == {
        (6144, 4096, False, 2), (4096, 4096, False, 2), (14336, 4096, True, 2), (4096, 14336, False, 2)}
    assert sorted({s.wide for s in llama}) == [False, True] and len(llama) == 8
    # FP8 at load: qkv and gate_up (with its SiLU epilogue) decode e4m3 by e4m3, o and down widen e4m3
    fp8 = model_shapes("llama-3.1-8b", quantization="fp8")
    assert {(s.n, s.k, s.silu, s.weight_bytes, s.e4m3_x) for s in fp8} == {
        (6144, 4096, False, 1, True), (14336, 4096, True, 1, True), (4096, 4096, False, 1, False),
        (4096, 14336, False, 1, False)}
    # one rank of two: column-parallel qkv and gate_up halve N, row-parallel o and down halve K
    tp2 = model_shapes("llama-3.1-8b", tensor_parallel_size=2)
    assert {(s.n, s.k, s.silu) for s in tp2} == {(3072, 4096, False), (4096, 2048, False), (7168, 4096, True),
                                                  (4096, 7168, False)}
    # Gemma's gate_up takes the gated (GeGLU) epilogue, never a plain launch
    gemma = {(s.n, s.k, s.silu) for s in model_shapes("gemma-3-27b")}
    assert gemma == {(8192, 5376, False), (5376, 4096, False), (21504, 5376, True), (5376, 21504, False)}
    assert model_shapes("llama-3.1-70b-awq") == []  # INT4 layers keep their own kernels


def _ward(*argv: str) -> int:
    from ward.cli import main

    return main(list(argv))


def test_ward_tune_lists_the_shapes_without_a_gpu(capsys) -> None:
    assert _ward("tune", "gemv", "--model", "llama-3.1-8b", "--list", "--rows", "wide") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and "14336x4096 gated 16-bit 8 rows" in lines[3]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_ward_tune_refuses_to_time_without_a_gpu(capsys) -> None:
    assert _ward("tune", "gemv", "--model", "llama-3.1-8b") == 2
    assert "needs a CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (("--model", "/no/such/model", "--list"), "neither a model directory nor a known model name"),
    (("--model", "llama-3.1-8b", "--tensor-parallel-size", "3", "--list"), "must divide the 32 attention heads"),
    (("--model", "llama-3.1-8b", "--tensor-parallel-size", "0"), "at least 1"),
    (("--model", "llama-3.1-70b-awq", "--list"), "launches no decode GEMV"),
])
def test_ward_tune_refuses_what_it_cannot_tune(capsys, argv, message) -> None:
    assert _ward("tune", "gemv", *argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU: CUDA is not available")
@pytest.mark.parametrize("shape", [TunedShape(4096, 4096, False, 2, False), TunedShape(4096, 4096, False, 1, False, True)],
                         ids=["bf16", "e4m3_x_e4m3"])
def test_tuning_on_the_card_keeps_a_plan_that_runs_and_is_not_slower(folder, shape) -> None:
    """o_proj's shape at one row (16-bit, and e4m3 by e4m3 as the W8A8 decode takes it), walked on
    the card: the plan kept launches, is at most as slow as the start (timed back to back), and the
    file it makes is the one a launch then takes, computing the product."""
    from worker.kernels.decode_gemv import decode_gemv, device_name, plan_for, w8a8_plan_for
    from worker.tuning.gemv_tuner import GemvTimer, start_plan

    device = torch.device("cuda", torch.cuda.current_device())
    timer = GemvTimer(shape, torch.cuda.get_device_properties(device).L2_cache_size)
    start = start_plan(shape, device)
    tuned, trials = tune_shape(shape, start, timer.time)
    assert len(trials) > 5 and tuned.us is not None and tuned.us <= tuned.start_us
    card = device_name(device)
    gemv_tuned.write_plans(gemv_tuned.device_config_path(card), card, [tuned])
    gemv_tuned.forget_loaded()
    weight = timer.weights[0]
    x = torch.randn(1, 4096, dtype=torch.bfloat16, device="cuda")
    if shape.e4m3_x:
        assert w8a8_plan_for(weight, rows=1) == tuned.plan
        x_scale = x.float().abs().amax(1) / 448
        codes = (x.float() / x_scale[:, None]).to(torch.float8_e4m3fn)
        out = decode_gemv(codes, weight, weight_scale=timer.scales[0], x_scale=x_scale)
        ref = (codes.float() * x_scale[:, None]) @ (weight.float() * timer.scales[0][:, None]).T
    else:
        assert plan_for(weight, rows=1) == tuned.plan
        out = decode_gemv(x, weight)
        ref = x.float() @ weight.float().T
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2


def _one_down_proj_model():
    """A model of one layer with one projection the decode GEMV takes (float32: as in the interpreter)."""
    from torch import nn

    layer = nn.Module()
    layer.mlp = nn.Module()
    layer.mlp.down_proj = nn.Linear(8, 8)
    model = nn.Module()
    model.layers = nn.ModuleList([layer])
    return model


def test_a_malformed_file_of_the_card_stops_the_model_load_naming_it(folder, monkeypatch) -> None:
    from torch import nn

    from worker.errors import ModelLoadError
    from worker.kernels import decode_gemv
    from worker.model.decode_linear import use_decode_gemv

    path = gemv_tuned.device_config_path(CARD)
    path.write_text(json.dumps({"kernel": "decode_gemv", "format": 1, "device_name": CARD, "plans": [{"n": 8}]}))
    monkeypatch.setattr(decode_gemv, "device_name", lambda _device: CARD)
    model = _one_down_proj_model()
    with pytest.raises(ModelLoadError, match="tuned kernel plans cannot be used") as refused:
        use_decode_gemv(model)
    assert str(path) in str(refused.value) and type(model.layers[0].mlp.down_proj) is nn.Linear


def test_a_worker_says_which_tuned_file_it_read(folder, monkeypatch, caplog) -> None:
    import logging

    from worker.kernels import decode_gemv
    from worker.model.decode_linear import use_decode_gemv

    path = gemv_tuned.device_config_path(CARD)
    gemv_tuned.write_plans(path, CARD, [TunedPlan(TunedShape(8, 8, False, 4, False), GemvPlan(16, 16, 1, 2, 1))])
    monkeypatch.setattr(decode_gemv, "device_name", lambda _device: CARD)
    model = _one_down_proj_model()
    with caplog.at_level(logging.INFO, logger="worker.model.decode_linear"):
        use_decode_gemv(model)
    assert f"decode GEMV: 1 tuned plans for {CARD} from {path}" in caplog.text


def test_ward_tune_writes_each_faster_plan_as_it_finds_it(folder, monkeypatch, capsys, tmp_path) -> None:
    """The command's flow with the card stood in for (the timings made up): a shape whose walk finds a
    faster plan lands in the card's file under --folder, one that does not stays out, and the report
    holds every shape."""
    from types import SimpleNamespace

    from worker.kernels import decode_gemv
    from worker.tuning import gemv_tuner

    fast = GemvPlan(64, 512, 2, 3, 2)
    start = GemvPlan(32, 256, 4, 4, 1)

    class MadeUpTimer:
        def __init__(self, shape, l2_bytes, dtype):
            self.floor_bytes = shape.n * shape.k * shape.weight_bytes
            # o_proj's shape can go faster; every other shape is at its best already
            self.time = _made_up_timer(fast if shape.n == shape.k == 4096 else start)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d: SimpleNamespace(L2_cache_size=50 << 20))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _d: (80 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(decode_gemv, "device_name", lambda _device: CARD)
    monkeypatch.setattr(gemv_tuner, "GemvTimer", MadeUpTimer)
    monkeypatch.setattr(gemv_tuner, "start_plan", lambda shape, device: start)
    out = tmp_path / "tuned"
    report = tmp_path / "report.json"
    assert _ward("tune", "gemv", "--model", "llama-3.1-8b", "--rows", "one", "--folder", str(out),
                 "--report", str(report)) == 0
    printed = capsys.readouterr().out
    assert "1 of 4 shapes took a faster plan" in printed
    plans = gemv_tuned.read_plans(gemv_tuned.device_config_path(CARD, out), CARD)
    assert [(p.shape, p.plan) for p in plans] == [(TunedShape(4096, 4096, False, 2, False), fast)]
    assert len(json.loads(report.read_text())["shapes"]) == 4
