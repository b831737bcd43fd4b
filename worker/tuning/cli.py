"""`ward tune gemv`: the decode GEMV's plans tuned for a model on this machine's card.

    ward tune gemv --model llama-3.1-8b                  tune every launch shape of the model, write the card's file
    ward tune gemv --model DIR --quantization fp8        the model quantized to FP8 at load (e4m3 x e4m3 launches too)
    ward tune gemv --model DIR --tensor-parallel-size 2  the shapes of one rank's part
    ward tune gemv --model DIR --list                    the shapes and the plans a worker takes now (no GPU needed)

The winners go to ``decode_gemv-<card>.json`` in ``--folder`` (default
``WARD_TUNED_CONFIG_FOLDER``, else ``~/.cache/ward/tuned-configs``); a worker on a card of that name
reads the file from ``WARD_TUNED_CONFIG_FOLDER`` (or the default) at start-up. Tuning takes a few
minutes a model (about 40 seconds a shape on an H100); run it with the card otherwise idle.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

ROW_CLASSES = {"one": (False,), "wide": (True,), "both": (False, True)}
BUSY_CARD_BYTES = 2 << 30  # memory in use before tuning starts above which the card is not idle


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kernel", choices=["gemv"], help="the kernel to tune (the decode GEMV)")
    p.add_argument("--model", required=True,
                   help="a model directory, a packaged model's name, or a benchmark shape (llama-3.1-8b)")
    p.add_argument("--quantization", default="auto", choices=["auto", "fp8", "none"],
                   help="as the worker's flag: the model as it ships, or FP8 at load")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="tune one rank's part of the model")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16"])
    p.add_argument("--rows", default="both", choices=list(ROW_CLASSES),
                   help="launch classes: one row (batch-1 decode), 8 rows (the latency batch), or both")
    p.add_argument("--folder", help="where the card's file goes (default: WARD_TUNED_CONFIG_FOLDER or "
                                    "~/.cache/ward/tuned-configs)")
    p.add_argument("--list", action="store_true", help="list the shapes and the plans taken now; time nothing")
    p.add_argument("--report", help="also write every plan tried, with its time, to this JSON file")


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from worker.errors import ModelLoadError
    from worker.kernels.gemv_tuned import FOLDER_ENV, TunedConfigError, forget_loaded

    if args.tensor_parallel_size < 1:
        print("ward tune: --tensor-parallel-size must be at least 1", file=sys.stderr)
        return 2
    try:
        from worker.tuning.gemv_tuner import model_shapes

        shapes = [s for s in model_shapes(args.model, args.quantization, args.tensor_parallel_size, args.dtype)
                  if s.wide in ROW_CLASSES[args.rows]]
    except (ModelLoadError, ValueError, OSError) as error:
        print(f"ward tune: cannot read the model: {error}", file=sys.stderr)
        return 2
    if not shapes:
        print(f"ward tune: {args.model} launches no decode GEMV (its projections are quantized in a format the "
              "GEMV does not take, or WARD_DECODE_GEMV=0)", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    if not cuda and not args.list:
        print("ward tune: timing plans needs a CUDA device, and this machine has none (--list shows the shapes)",
              file=sys.stderr)
        return 2
    if args.folder:  # the plans taken now, and each walk's start, are what a worker reading this folder takes
        os.environ[FOLDER_ENV] = args.folder
        forget_loaded()
    try:
        if args.list:
            _list(shapes, cuda)
            return 0
        return _tune(args, shapes)
    except TunedConfigError as error:
        print(f"ward tune: {error}", file=sys.stderr)
        return 2


def _shape_text(s) -> str:
    kind = "e4m3 x e4m3" if s.e4m3_x else "e4m3" if s.weight_bytes == 1 else "16-bit"
    return f"{s.n}x{s.k}{' gated' if s.silu else ''} {kind} {'8 rows' if s.wide else '1 row'}"


def _plan_text(plan) -> str:
    return ":".join(str(v) for v in dataclasses.astuple(plan))


def _list(shapes, cuda: bool) -> None:
    if cuda:
        import torch

        from worker.tuning.gemv_tuner import start_plan

        device = torch.device("cuda", torch.cuda.current_device())
    print("shape (n x k, weights, rows)                 plan now (block_n:block_k:warps:stages:split_k)")
    for s in shapes:
        plan = _plan_text(start_plan(s, device)) if cuda else "(on a CUDA device)"
        print(f"{_shape_text(s):44} {plan}")


def _tune(args: argparse.Namespace, shapes) -> int:
    import torch
    import triton

    from worker.kernels.decode_gemv import device_name
    from worker.kernels.gemv_tuned import device_config_path, forget_loaded, write_plans
    from worker.tuning.gemv_tuner import GemvTimer, improved, start_plan, tune_shape

    device = torch.device("cuda", torch.cuda.current_device())
    card = device_name(device)
    path = device_config_path(card)
    props = torch.cuda.get_device_properties(device)
    dtype = torch.float16 if args.dtype == "float16" else torch.bfloat16
    free, total = torch.cuda.mem_get_info(device)
    if total - free > BUSY_CARD_BYTES:  # a worker (or anything else) on the card disturbs every timing
        print(f"ward tune: warning: other processes hold {(total - free) / 2**30:.1f} GiB of this card; their work "
              "makes the timings noisy (tune on an idle card)", file=sys.stderr)
    print(f"tuning {len(shapes)} decode GEMV shapes of {args.model} on {card}", flush=True)
    about = dict(model=args.model, quantization=args.quantization, tensor_parallel_size=args.tensor_parallel_size,
                 torch=torch.__version__, triton=triton.__version__)
    better, report = [], []
    for s in shapes:
        t0 = time.monotonic()
        timer = GemvTimer(s, props.L2_cache_size, dtype)
        start = start_plan(s, device)
        tuned, trials = tune_shape(s, start, timer.time)
        gain = f"{tuned.start_us / tuned.us:.3f}x" if tuned.us and tuned.start_us else "-"
        print(f"{_shape_text(s):44} {_plan_text(start)} {_us(tuned.start_us)} -> {_plan_text(tuned.plan)} "
              f"{_us(tuned.us)}  {gain}  ({time.monotonic() - t0:.0f} s, {len(trials)} plans)", flush=True)
        if improved([tuned]):  # written at once: an interrupted run keeps what it found
            write_plans(path, card, [tuned], **about)
            better.append(tuned)
        report.append({"shape": dataclasses.asdict(s), "start": list(dataclasses.astuple(start)),
                       "plan": list(dataclasses.astuple(tuned.plan)), "us": tuned.us, "start_us": tuned.start_us,
                       "floor_bytes": timer.floor_bytes, "trials": trials})
        if args.report:
            with open(args.report, "w") as f:
                json.dump({"device_name": card, "model": args.model, "shapes": report}, f, indent=1)
        del timer
        torch.cuda.empty_cache()
    forget_loaded()
    if better:
        print(f"{len(better)} of {len(shapes)} shapes took a faster plan: written to {path}")
        print(f"workers on {card} read it at start-up (WARD_TUNED_CONFIG_FOLDER={path.parent})")
    else:
        print(f"no shape found a plan at least 2% faster than the one it takes now; {path} unchanged")
    return 0


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} us"
