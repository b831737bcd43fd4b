"""`ward bench report`: Ward beside vLLM and the targets, from the JSON files the other suites wrote
(newest of each kind in a results folder, or named explicitly); prints a table, writes
report.json and, where matplotlib is installed, report.png."""
from __future__ import annotations

import glob
import json
import os

# (row, Ward's value from its files, vLLM's, target, higher is better)
TARGETS = {
    "latency_ms": (750.0, False),
    "batch1_tok_s": (170.0, True),
    "offline_256_256_req_s": (46.0, True),
    "offline_1024_128_req_s": (31.0, True),
    "mixed_out_tok_s": (9300.0, True),
    "startup_s": (60.0, False),
    "serving_c1_ttft_p50_ms": (40.0, False),
    "serving_c1_tpot_p50_ms": (5.9, False),
    "serving_c64_out_tok_s": (3200.0, True),
    "serving_c64_ttft_p50_ms": (770.0, False),
}
# the vLLM server's figures on the same card type (not rerun by `ward bench`; see the performance record)
VLLM_SERVER = {"serving_c1_ttft_p50_ms": 43.8, "serving_c1_tpot_p50_ms": 6.48, "serving_c64_out_tok_s": 2891.0,
               "serving_c64_ttft_p50_ms": 768.0}


def newest(folder: str, pattern: str) -> str | None:
    files = sorted(glob.glob(os.path.join(folder, pattern)))
    return files[-1] if files else None


def collect(folder: str, ward: str | None = None, vllm: str | None = None, serving: str | None = None,
            hf: str | None = None) -> dict:
    ward = ward or newest(folder, "*ward-offline.json")
    vllm = vllm or newest(folder, "*vllm-*.json")
    serving = serving or newest(folder, "*serving-governed.json")
    hf = hf or newest(folder, "*transformers-mixed.json")
    rows: dict[str, dict] = {}

    def put(name, ours=None, peer=None):
        rows.setdefault(name, {}).update({k: v for k, v in (("ward", ours), ("vllm", peer)) if v is not None})

    sources = {"ward": ward, "vllm": vllm, "serving": serving, "transformers": hf}
    if ward:
        w = json.load(open(ward))
        r = w["results"]
        for row, workload, key in [("latency_ms", "latency", "mean_ms"), ("batch1_tok_s", "batch1", "tok_s"),
                                   ("offline_256_256_req_s", "offline_256_256", "req_s"),
                                   ("offline_1024_128_req_s", "offline_1024_128", "req_s"),
                                   ("mixed_out_tok_s", "mixed", "out_tok_s")]:
            if workload in r:  # a run may cover only some workloads
                put(row, r[workload][key])
        put("startup_s", w["startup_s"])
        rows["card"] = w["card"]
    if vllm:
        v = json.load(open(vllm))
        put("latency_ms", peer=v["latency_bs8_32in_128out_mean_ms"])
        put("batch1_tok_s", peer=v["batch1_decode_tok_s"])
        put("offline_256_256_req_s", peer=v["offline_256_256"]["req_s"])
        put("offline_1024_128_req_s", peer=v["offline_1024_128"]["req_s"])
        put("mixed_out_tok_s", peer=v["mixed_256"]["out_tok_s"])
        put("startup_s", peer=v["init_s"])
    if serving:
        levels = {lv["concurrency"]: lv for lv in json.load(open(serving))["levels"]}
        if 1 in levels:
            put("serving_c1_ttft_p50_ms", levels[1]["ttft_p50_ms"], VLLM_SERVER["serving_c1_ttft_p50_ms"])
            put("serving_c1_tpot_p50_ms", levels[1]["tpot_p50_ms"], VLLM_SERVER["serving_c1_tpot_p50_ms"])
        if 64 in levels:
            put("serving_c64_out_tok_s", levels[64]["out_tok_s"], VLLM_SERVER["serving_c64_out_tok_s"])
            put("serving_c64_ttft_p50_ms", levels[64]["ttft_p50_ms"], VLLM_SERVER["serving_c64_ttft_p50_ms"])
    if hf and "mixed_out_tok_s" in rows:
        t = json.load(open(hf))["results"]["out_tok_s"]
        rows["mixed_vs_transformers"] = {"ward": round(rows["mixed_out_tok_s"]["ward"] / t, 1), "transformers_tok_s": t,
                                         "target": 10.0, "met": rows["mixed_out_tok_s"]["ward"] / t >= 10}
    for name, (target, higher) in TARGETS.items():
        row = rows.get(name)
        if not row or "ward" not in row:
            continue
        row["target"] = target
        row["met"] = row["ward"] >= target if higher else row["ward"] <= target
        if "vllm" in row:
            row["ward_over_vllm"] = round(row["ward"] / row["vllm"], 3)
    rows["sources"] = {k: os.path.basename(v) for k, v in sources.items() if v}
    return rows


def print_table(rows: dict) -> None:
    print(f"{'figure':<26}{'Ward':>10}{'vLLM':>10}{'Ward/vLLM':>11}{'target':>9}  met")
    for name in list(TARGETS) + ["mixed_vs_transformers"]:
        r = rows.get(name)
        if not r:
            continue
        print(f"{name:<26}{r.get('ward', ''):>10}{r.get('vllm', ''):>10}{r.get('ward_over_vllm', ''):>11}"
              f"{r.get('target', ''):>9}  {'yes' if r.get('met') else 'no'}")


def plot(rows: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [n for n in TARGETS if n in rows and "vllm" in rows[n]]
    # normalise so that higher is better everywhere: vLLM = 1
    ward = [rows[n]["ward"] / rows[n]["vllm"] if TARGETS[n][1] else rows[n]["vllm"] / rows[n]["ward"] for n in names]
    target = [rows[n]["target"] / rows[n]["vllm"] if TARGETS[n][1] else rows[n]["vllm"] / rows[n]["target"] for n in names]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [1.0] * len(names), width=0.4, label="vLLM 0.26.0", color="#999999")
    ax.bar([x + 0.2 for x in xs], ward, width=0.4, label="Ward", color="#2a6f97")
    ax.scatter(list(xs), target, marker="_", s=600, color="#c1121f", label="target", zorder=3)
    ax.set_xticks(list(xs), names, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("relative to vLLM (higher is better)")
    card = rows.get("card", {}).get("device", "")
    ax.set_title(f"Ward vs vLLM 0.26.0 on {card} (Llama-3.1-8B shape, bf16)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True
