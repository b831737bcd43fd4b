"""`ward worker`: serve one model over gRPC (generation engine or embedding model)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from worker.config import BACKEND_NAMES, KV_CACHE_DTYPES, QUANTIZATION_CHOICES, EngineConfig
from worker.server.addresses import is_loopback

log = logging.getLogger("ward.worker")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m-instruct", help="model directory or packaged model name")
    p.add_argument("--served-model-name", default=None, help="name clients use (default: the model name)")
    p.add_argument("--task", choices=["auto", "generate", "embed"], default="auto")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port (printed when ready)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"])
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--decode-step-tokens", type=int, default=2048,
                   help="while any request is decoding, a step holds at most this many tokens, so prefill chunks "
                        "shrink and output keeps a steady pace under load; a prompt with none decoding takes the "
                        "whole --max-num-batched-tokens (default 2048; 0: that budget always)")
    p.add_argument("--reserved-output-tokens", type=int, default=0,
                   help="N > 0: admission keeps KV room for every running request's prompt and first N outputs "
                        "instead of preempting later (default 0: admit while blocks are free, preempt when they run out)")
    p.add_argument("--reserve-beyond-seqs", type=int, default=None,
                   help="N: once N requests run, a further one is admitted only while the KV pool holds every "
                        "running request's whole output (max_tokens), so a large --max-num-seqs does not preempt")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--num-kv-blocks", type=int, default=None)
    p.add_argument("--kv-cache-memory", type=int, default=None, help="KV pool budget in bytes")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--attention-backend", default="auto", choices=list(BACKEND_NAMES),
                   help="auto: flash-attn or FlashInfer where installed and self-checked, else Triton on CUDA")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="split the model over this many GPUs (one process per GPU; gloo on --device cpu)")
    p.add_argument("--quantization", default="auto", choices=list(QUANTIZATION_CHOICES),
                   help="auto: as the checkpoint ships (FP8, compressed-tensors FP8, AWQ, GPTQ); fp8: quantize a "
                        "float checkpoint's projections to FP8 at load; none: refuse quantized checkpoints")
    p.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES),
                   help="auto: the model's dtype; fp8: e4m3 with per-tensor or per-head scales (half the bytes)")
    p.add_argument("--engine-process", action="store_true",
                   help="run the engine core (scheduler, model, sampling) in a process of its own, apart from "
                        "gRPC, tokenization and streaming")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds SIGTERM waits for in-flight requests")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="Prometheus /metrics port (0: off; gateways relay the same metrics on their /metrics)")
    p.add_argument("--max-waiting-requests", type=int, default=None,
                   help="admission: requests queued before refusing (default: 4 x --max-num-seqs; embeddings: 64)")
    p.add_argument("--max-waiting-tokens", type=int, default=None,
                   help="admission: prompt tokens queued before refusing (default: twice the KV pool)")
    p.add_argument("--tls-cert", default=None, help="server certificate (PEM)")
    p.add_argument("--tls-key", default=None, help="server private key (PEM)")
    p.add_argument("--client-ca", default=None, help="CA whose client certificates (gateways) may call this worker")
    p.add_argument("--insecure", action="store_true", help="allow plaintext on a non-loopback address")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads on a CPU device (default: cores - 1, leaving one core to gRPC)")
    p.add_argument("--log-level", default="INFO")


def _credentials(args):
    import grpc

    if not (args.tls_cert or args.tls_key):  # flag_error has refused incomplete or unreadable TLS flags
        return None
    with open(args.tls_key, "rb") as f:
        key = f.read()
    with open(args.tls_cert, "rb") as f:
        cert = f.read()
    ca = None
    if args.client_ca:
        with open(args.client_ca, "rb") as f:
            ca = f.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def _cpu_threads(args) -> int | None:
    """torch threads for a CPU engine (None on a GPU). torch's threads and the worker's own gRPC
    threads share the cores; oversubscribing them costs more than a thread of matmul earns
    (measured: +230 ms p50 per request on 2 cores)."""
    import os

    import torch

    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        return args.threads or max(1, (os.cpu_count() or 2) - 1)
    return None


def _set_cpu_threads(args) -> None:
    import torch

    threads = _cpu_threads(args)
    if threads:
        torch.set_num_threads(threads)


def engine_config(args: argparse.Namespace, name: str) -> EngineConfig:
    """The generation engine's configuration from the worker's arguments (ValueError when invalid)."""
    return EngineConfig(
        model=args.model, served_model_name=name, dtype=args.dtype, device=args.device,
        load_format=args.load_format, max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, block_size=args.block_size,
        reserved_output_tokens=args.reserved_output_tokens, decode_step_tokens=args.decode_step_tokens or None,
        reserve_beyond_seqs=args.reserve_beyond_seqs,
        num_kv_blocks=args.num_kv_blocks, kv_cache_memory_bytes=args.kv_cache_memory,
        gpu_memory_utilization=args.gpu_memory_utilization, enable_prefix_caching=not args.no_prefix_caching,
        attention_backend=args.attention_backend, enforce_eager=args.enforce_eager,
        tensor_parallel_size=args.tensor_parallel_size,
        quantization=args.quantization, kv_cache_dtype=args.kv_cache_dtype,
    )


def _task_and_name(args: argparse.Namespace) -> tuple[str, str]:
    from worker.model.registry import packaged_task

    task = args.task
    if task == "auto":
        task = packaged_task(args.model) or "generate"
    return task, args.served_model_name or args.model.rstrip("/").split("/")[-1]


def _tls_error(args: argparse.Namespace) -> str | None:
    """Why the TLS flags cannot serve, or None (grpc would report a bad file only as a failure to
    bind the port)."""
    from worker.server.tls_files import tls_files_problem

    if not (args.tls_cert or args.tls_key):
        return "--client-ca needs --tls-cert and --tls-key" if args.client_ca else None
    if not (args.tls_cert and args.tls_key):
        return "--tls-cert and --tls-key go together"
    return tls_files_problem(args.tls_cert, args.tls_key, args.client_ca)


def flag_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags, found before the model loads (minutes for a large one), or None."""
    for flag, value, zero in (("--port", args.port, "a free port"), ("--metrics-port", args.metrics_port, "off")):
        if not 0 <= value <= 65535:  # grpc would take 99999 as 99999 % 65536
            return f"{flag} must be 0 ({zero}) up to 65535, got {value}"
    for flag, value in (("--max-waiting-requests", args.max_waiting_requests),
                        ("--max-waiting-tokens", args.max_waiting_tokens), ("--threads", args.threads)):
        if value is not None and value < 0:  # 0 keeps the default
            return f"{flag} must be >= 1, got {value}"
    if args.shutdown_timeout < 0:
        return f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}"
    tls_error = _tls_error(args)
    if tls_error is not None:
        return tls_error
    task, name = _task_and_name(args)
    if task == "generate":
        try:
            engine_config(args, name)
        except ValueError as exc:
            return str(exc)
    return None


def _build(args):
    from worker.errors import ModelLoadError
    from worker.model.registry import resolve_model

    _set_cpu_threads(args)

    task, name = _task_and_name(args)
    if task == "embed":
        from worker.server.embedding import EmbeddingModel

        if args.tensor_parallel_size != 1:
            raise ModelLoadError("--tensor-parallel-size applies to generation models only")
        if args.engine_process:
            raise ModelLoadError("--engine-process applies to generation models only")

        return task, name, EmbeddingModel(resolve_model(args.model), device=args.device)
    from worker.engine.llm_engine import LLMEngine

    config = engine_config(args, name)
    if args.engine_process:
        from worker.server.engine_process import EngineProcess

        return task, name, EngineProcess(config, torch_threads=_cpu_threads(args), log_level=args.log_level)
    return task, name, LLMEngine(config)


async def serve(args) -> int:
    import grpc

    from proto.batching import MESSAGE_LIMIT_BYTES
    from proto.ward.worker.v1 import worker_pb2_grpc as pb_grpc
    from worker.gc_heap import freeze_startup_heap
    from worker.server.admission import AdmissionLimits
    from worker.server.async_engine import AsyncEngine
    from worker.server.metrics import WorkerMetrics
    from worker.server.servicer import WorkerServicer, default_limits

    error = flag_error(args)
    if error is not None:
        print(f"ward worker: {error}", file=sys.stderr)
        return 2
    creds = _credentials(args)
    if creds is None and not is_loopback(args.host) and not args.insecure:
        print(f"ward worker: refusing to serve plaintext on non-loopback address {args.host}; "
              "give --tls-cert/--tls-key/--client-ca, or --insecure if you really mean it", file=sys.stderr)
        return 2
    task, name, model = await asyncio.to_thread(_build, args)
    freeze_startup_heap()  # the model, tokenizer and libraries out of every full collection's scan
    engine = embedder = None
    metrics = None
    if task == "embed":
        embedder = model
        metrics = WorkerMetrics(None, name)
    else:
        engine = model if getattr(args, "engine_process", False) else AsyncEngine(model)
        metrics = WorkerMetrics(engine.stats, name)
        engine._on_finished = metrics.observe_finished
        engine.start()
    limits = default_limits(engine, embedder)
    try:
        limits = AdmissionLimits(args.max_waiting_requests or limits.max_waiting_requests,
                                 args.max_waiting_tokens or limits.max_waiting_tokens)
    except ValueError as exc:
        print(f"ward worker: {exc}", file=sys.stderr)
        return 2
    servicer = WorkerServicer(name, engine=engine, embedder=embedder, limits=limits)
    metrics.watch_admission(servicer.admission)
    metrics.watch_gc()
    servicer.metrics_text = metrics.text
    if engine is not None:
        servicer.observe_team_request = metrics.observe_team_request
    # SO_REUSEPORT off: gRPC turns it on by default, which lets a second worker start silently on a
    # port already in use and share its connections with the first.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),
                                      ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES),
                                      ("grpc.so_reuseport", 0)])
    pb_grpc.add_WorkerServicer_to_server(servicer, server)
    address = f"{args.host}:{args.port}"
    try:
        port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    except RuntimeError:  # recent grpcio raises instead of returning 0
        port = 0
    if port == 0:
        print(f"ward worker: cannot bind {address}", file=sys.stderr)
        return 2
    if args.metrics_port:  # bound before serving, so a busy port is an error like the gRPC port's
        try:
            metrics.serve(args.host, args.metrics_port)
        except OSError as exc:
            print(f"ward worker: cannot bind the metrics port {args.host}:{args.metrics_port}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 2
    await server.start()
    print(f"WARD_WORKER_READY port={port} model={name} task={task}", flush=True)
    log.info("worker serving %s (%s) on %s:%d", name, task, args.host, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.ensure_future(stop.wait())]
    if engine is not None:
        waits.append(asyncio.ensure_future(engine.dead.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    if engine is not None and engine.dead.is_set():
        log.error("engine failed; stopping the worker")
        await server.stop(0)
        return 1
    # Drain: refuse new work (readiness turns false), let in-flight requests finish.
    servicer.draining = True
    deadline = loop.time() + args.shutdown_timeout
    while (servicer.num_in_flight or (engine is not None and engine.num_in_flight)) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await server.stop(grace=1.0)
    servicer.close()
    if engine is not None:
        engine.shutdown()
    log.info("worker stopped")
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from worker.errors import ModelLoadError

    try:
        return asyncio.run(serve(args))
    except ModelLoadError as exc:
        print(f"ward worker: {exc}", file=sys.stderr)
        return 1
