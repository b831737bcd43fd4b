"""`ward bench`: measured figures beside the card's own ceilings, printed as a table and written as JSON.

    ward bench offline --model llama-3.1-8b --out DIR      engine workloads (dummy weights)
    ward bench card                                         copy bandwidth and matmul rate only
    ward bench hf --device cpu                              32 requests: engine together vs transformers one by one
    ward bench hf-mixed                                     transformers generate on the mixed workload (GPU)
    ward bench serving --load-tool T --tokenizer-tool T     the whole stack (worker + governed gateway) under load
    ward bench report [--results bench/results]             Ward beside vLLM and the targets: table, JSON, PNG
    ward bench all --out DIR [--load-tool T --tokenizer-tool T] [--with-transformers]
                                                            offline, serving, transformers, then the report over DIR
    ward bench gateway [--redis-url URL --postgres URL]     gateway overhead: identity, quotas, audit off vs on (CPU)
    ward bench quota [--redis-url URL]                      latency quotas add: in-process, Redis (CPU)
    ward bench audit [--postgres URL]                       audit write latency and records/s: SQLite, PostgreSQL (CPU)
    ward bench fairness --model M --device D [--base-url URL --served-model NAME]
                                                            noisy neighbour: team B's latency beside a flooding team A
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

WORKLOADS = ["latency", "batch1", "offline_256_256", "offline_1024_128", "mixed", "gpu_busy"]
# also offered, not in the default list: "structured" (needs --tokenizer with a shape)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", choices=["all", "offline", "card", "hf", "hf-mixed", "serving", "report", "gateway", "quota", "audit", "fairness"])
    p.add_argument("--with-transformers", action="store_true", help="all: also run hf-mixed (several minutes)")
    p.add_argument("--device", default="auto", help="for `hf`: cpu or cuda (auto: cuda when present)")
    p.add_argument("--model", default="llama-3.1-8b", help="a shape name (dummy weights) or a model directory")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--quantization", default="auto", choices=["auto", "fp8", "none"],
                   help="offline: as the model ships (a shape ending in -awq is 4-bit AWQ), or FP8 at load")
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"], help="offline: the KV cache's dtype")
    p.add_argument("--tokenizer", help="offline: a model directory whose tokenizer joins a shape's dummy weights "
                                       "(the structured workload needs one)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=16384)
    p.add_argument("--decode-step-tokens", type=int, default=None,
                   help="offline: a step's token budget while any request is decoding (default: no cap)")
    p.add_argument("--reserved-output-tokens", type=int, default=0,
                   help="offline: KV room kept for every running request's first N outputs (0: none, preempt)")
    p.add_argument("--reserve-beyond-seqs", type=int, default=None,
                   help="offline: once N requests run, admit another only while the KV pool holds every running "
                        "request's whole output")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="offline: GPUs the model is split over")
    p.add_argument("--redis-url", help="gateway, quota: a Redis to measure (its keys are removed afterwards)")
    p.add_argument("--postgres", help="gateway, audit: a PostgreSQL server; a scratch database is made there and dropped")
    p.add_argument("--requests", type=int, default=2000, help="gateway, quota, audit: measured requests per row")
    p.add_argument("--rounds", type=int, default=3, help="gateway: measurement rounds (medians are reported)")
    p.add_argument("--peer", choices=["litellm"], help="gateway: also measure LiteLLM's proxy in the same rounds "
                   "(installed into .peer/litellm on first use)")
    p.add_argument("--baseline-tree", help="gateway: also measure `on` served from this checkout "
                   "(A/B against an earlier commit in one run)")
    p.add_argument("--results", default="bench/results", help="report: folder of earlier suites' JSON files")
    from ward.benchmarks import fairness, serving

    serving.add_arguments(p.add_argument_group("serving"))
    fairness.add_arguments(p.add_argument_group("fairness"))


def _rooflines(card: dict, cfg: dict, results: dict) -> dict:
    from ward.benchmarks.models import kv_bytes_per_token, param_counts

    if "copy_bandwidth_tb_s" not in card:
        return {}
    read_params, _ = param_counts(cfg)
    bw = card["copy_bandwidth_tb_s"] * 1e12
    step_bytes = read_params * 2 + 512 * kv_bytes_per_token(cfg)
    out = {"batch1_step_bytes_gb": round(step_bytes / 1e9, 2),
           "batch1_roofline_tok_s": round(bw / step_bytes, 1)}
    if "batch1" in results:
        out["batch1_fraction_of_roofline"] = round(results["batch1"]["tok_s"] / out["batch1_roofline_tok_s"], 3)
    flops = card["bf16_matmul_tflop_s"] * 1e12
    for name, n_in, n_out in [("offline_256_256", 256, 256), ("offline_1024_128", 1024, 128)]:
        total = 1000 * (2 * read_params * (n_in + n_out))  # matmul FLOPs; attention adds a few percent
        floor_s = total / flops
        out[f"{name}_compute_floor_req_s"] = round(1000 / floor_s, 1)
        if name in results:
            out[f"{name}_fraction_of_compute_floor"] = round(results[name]["req_s"] / (1000 / floor_s), 3)
    return out


def run_all(args: argparse.Namespace) -> int:
    """Every GPU figure in one command; the vLLM peer is run beside it by bench/peer_and_ward.sh."""
    import copy
    import shutil

    out = args.out
    os.makedirs(out, exist_ok=True)
    steps = [("offline", "ward-offline.json")]
    if args.load_tool and args.tokenizer_tool:
        steps.append(("serving", "serving-governed.json"))
    if args.with_transformers:
        steps.append(("hf-mixed", "transformers-mixed.json"))
    date = datetime.date.today().isoformat()
    for suite, name in steps:
        sub = copy.copy(args)
        sub.suite, sub.out = suite, os.path.join(out, suite)
        if suite == "hf-mixed":
            sub.max_num_seqs = 128  # transformers' largest static batch that fits an 80 GB card
        if run(sub) != 0:
            return 1
        produced = "serving_stack.json" if suite == "serving" else f"ward_bench_{suite}.json"
        shutil.copy(os.path.join(sub.out, produced), os.path.join(out, f"{date}-{name}"))
    report = copy.copy(args)
    report.suite, report.results = "report", out
    return run(report)


def _model_suites_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the engine suites' arguments, found before any card is measured or model
    loaded (the offline suite takes minutes to reach its workloads)."""
    from ward.benchmarks.models import SHAPES

    if args.suite in ("offline", "all"):
        unknown = [w.strip() for w in args.workloads.split(",") if w.strip() and w.strip() not in (*WORKLOADS, "structured")]
        if unknown:
            return f"unknown workload {unknown[0]!r} (known: {', '.join(WORKLOADS)}, structured)"
        if args.model not in SHAPES:
            from worker.errors import ModelLoadError
            from worker.model.registry import resolve_model

            try:
                args.model = resolve_model(args.model)
            except ModelLoadError as exc:
                return f"{exc} (or a shape: {', '.join(SHAPES)})"
            if not os.path.isfile(os.path.join(args.model, "config.json")):
                return f"{args.model} has no config.json: not a Hugging Face model directory"
    if args.suite == "hf-mixed" and args.model not in SHAPES:
        return f"hf-mixed takes a shape ({', '.join(SHAPES)}), not {args.model!r}"
    if args.suite == "hf" and args.device not in ("auto", "cpu", "cuda"):
        return f"--device must be auto, cpu or cuda, not {args.device!r}"
    if args.suite == "hf" and args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "--device cuda, but this machine has no CUDA device"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _model_suites_problem(args) if args.suite in ("offline", "all", "hf", "hf-mixed") else None
    if problem is not None:
        print(f"ward bench: {problem}", file=sys.stderr)
        return 2
    if args.suite == "all":
        return run_all(args)
    if args.suite in ("gateway", "quota", "audit"):
        return _run_gateway_suite(args)
    if args.suite == "fairness":
        from ward.benchmarks import fairness

        if args.device == "auto" and not args.base_url:
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        return fairness.run(args)
    if args.suite == "serving":
        from ward.benchmarks import serving

        if args.device == "auto":
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        return serving.run(args)
    if args.suite == "report":
        from ward.benchmarks import report as rep

        os.makedirs(args.out, exist_ok=True)
        rows = rep.collect(args.results)
        rep.print_table(rows)
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump(rows, f, indent=1)
        png = os.path.join(args.out, "report.png")
        print(f"wrote {png}" if rep.plot(rows, png) else "matplotlib is not installed: no PNG (pip install matplotlib)")
        return 0
    from ward.benchmarks.card import measure_card

    os.makedirs(args.out, exist_ok=True)
    card = measure_card()
    report = {"date": datetime.date.today().isoformat(), "card": card}
    print(json.dumps(card), flush=True)
    if args.suite == "offline":
        from worker import LLM
        from worker.gc_heap import freeze_startup_heap
        from ward.benchmarks.models import SHAPES, copy_tokenizer, write_config_dir
        from ward.benchmarks.offline import OfflineBench

        if args.model in SHAPES:
            model_dir = write_config_dir(args.model, tempfile.mkdtemp(prefix="ward-bench-"))
            cfg, load = SHAPES[args.model], "dummy"
            if args.tokenizer:  # for the structured workload: a real tokenizer beside the dummy weights
                copy_tokenizer(args.tokenizer, model_dir)
        else:
            model_dir = args.model
            with open(os.path.join(model_dir, "config.json")) as f:
                cfg = json.load(f)
            load = "auto"
        t0 = time.perf_counter()
        llm = LLM(model=model_dir, load_format=load, dtype="bfloat16", max_model_len=args.max_model_len,
                  quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype,
                  gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager,
                  max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                  reserved_output_tokens=args.reserved_output_tokens, decode_step_tokens=args.decode_step_tokens,
                  reserve_beyond_seqs=args.reserve_beyond_seqs, tensor_parallel_size=args.tensor_parallel_size)
        report["startup_s"] = round(time.perf_counter() - t0, 1)
        # as a serving worker does once started (and vLLM's engine core): full collections skip the start-up heap
        report["gc_frozen_objects"] = freeze_startup_heap()
        report["config"] = {"max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens,
                            "reserved_output_tokens": args.reserved_output_tokens,
                            "reserve_beyond_seqs": args.reserve_beyond_seqs,
                            "decode_step_tokens": args.decode_step_tokens}
        report["engine"] = {"kv_blocks": llm.engine.kv.num_blocks, "memory": llm.engine.runner.memory_report,
                            "graph_capture_s": round(llm.engine.runner.graph_capture_seconds, 1)}
        print("startup", report["startup_s"], "s", report["engine"], flush=True)
        bench = OfflineBench(llm)
        bench.warmup()
        wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
        results = {}
        for w in wanted:
            if w == "latency":
                results[w] = bench.latency()
            elif w == "batch1":
                results[w] = bench.batch1_decode()
            elif w == "offline_256_256":
                results[w] = bench.throughput(1000, 256, 256)
            elif w == "offline_1024_128":
                results[w] = bench.throughput(1000, 1024, 128)
            elif w == "mixed":
                results[w] = bench.mixed()
            elif w == "gpu_busy":
                results[w] = bench.gpu_busy()
            elif w == "structured":
                results[w] = bench.structured()
            else:
                print(f"ward bench: unknown workload {w!r}", file=sys.stderr)
                return 2
            print(w, json.dumps(results[w]), flush=True)
        report["results"] = results
        report["rooflines"] = _rooflines(card, cfg, results)
    if args.suite == "hf":
        import torch

        from ward.benchmarks.hf_compare import run as run_hf

        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        report["results"] = run_hf(device=device)
        print(json.dumps(report["results"]), flush=True)
    if args.suite == "hf-mixed":
        from ward.benchmarks.hf_baseline import run_mixed
        from ward.benchmarks.models import SHAPES

        report["results"] = run_mixed(SHAPES[args.model], batch=args.max_num_seqs)
        print(json.dumps(report["results"]), flush=True)
    path = os.path.join(args.out, f"ward_bench_{args.suite}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report), flush=True)
    return 0


def _run_gateway_suite(args: argparse.Namespace) -> int:
    """The serving-layer suites: CPU only, no card is measured."""
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"ward_bench_{args.suite}.json")
    report: dict = {"date": datetime.date.today().isoformat(), "cpus": os.cpu_count()}
    if args.suite == "gateway":
        from ward.benchmarks.gateway.overhead import as_json, format_table, run_benchmark

        rows = run_benchmark(requests=args.requests, clients=[1, 16], rounds=args.rounds,
                             redis_url=args.redis_url, postgres=args.postgres, peer=args.peer,
                             baseline_tree=args.baseline_tree)
        print(format_table(rows))
        report["rows"] = as_json(rows)
    elif args.suite == "quota":
        from dataclasses import asdict

        from ward.benchmarks.quota import measure

        rows = measure(args.redis_url, args.requests, 200, ["gateway", "layer"])
        for r in rows:
            print(f"{r.path:<9}{r.mode:<12}p50 {r.p50_ms:.3f} ms  p99 {r.p99_ms:.3f} ms  "
                  f"added p50 {r.added_p50_ms:.3f}  added p99 {r.added_p99_ms:.3f}")
        report["rows"] = [asdict(r) for r in rows]
    else:
        from ward.benchmarks.audit import format_table as audit_table
        from ward.benchmarks.audit import run_benchmark as audit_benchmark

        results = audit_benchmark(args.postgres, args.requests, 64)
        print(audit_table(results))
        report["results"] = results
        if not all(r["verify_ok"] for r in results.values()):
            print("the audit chain written by the benchmark did not verify", file=sys.stderr)
            return 1
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {path}")
    return 0
