"""A tensor-parallel rank > 0: its own process (spawned by rank 0), its own part of the model, and
a loop that runs whatever rank 0 tells it, in the same order, so their collectives pair up.

Messages from rank 0 (over a pipe): ("num_blocks",) -> ("num_blocks", n); ("init_kv", n) -> ("ok",);
("step", scheduler output) -> no answer (the sampled tokens come by broadcast); ("stop",).
Any failure is sent back as ("error", text) before the process exits non-zero; when rank 0 goes
away (the pipe closes) the rank exits too."""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import traceback

log = logging.getLogger("ward.worker.parallel")


def rank_main(conn, config, model_dir: str, max_model_len: int, rank: int, size: int, store_port: int,
              threads: int) -> None:
    """Entry point of the rank's process."""
    from worker.parent_watch import exit_with_parent

    exit_with_parent()  # also while the model loads, when the pipe is not read
    try:
        code = _serve(conn, config, model_dir, max_model_len, rank, size, store_port, threads)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        code = 0  # rank 0 has gone: nothing left to serve
    except BaseException as exc:
        text = f"{type(exc).__name__}: {exc}"
        try:
            conn.send(("error", text, traceback.format_exc()))
        except Exception:
            pass
        print(f"ward tensor-parallel rank {rank}: {text}", file=sys.stderr, flush=True)
        code = 1
    os._exit(code)  # skip interpreter teardown: the process group's peers may be gone already


def _serve(conn, config, model_dir, max_model_len, rank, size, store_port, threads) -> int:
    import torch

    from worker.model.spec import load_spec
    from worker.parallel.group import make_group, make_store, rank_device
    from worker.parallel.layers import rank_part
    from worker.runner.device import pick_device
    from worker.runner.model_runner import ModelRunner

    torch.set_num_threads(threads)
    device = rank_device(pick_device(config.device), rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    config = dataclasses.replace(config, device=str(device))
    timeout = config.distributed_timeout
    store = make_store(store_port, rank, size, timeout)
    conn.send(("joining",))
    group = make_group(store, rank, size, device, timeout)
    spec = load_spec(model_dir)
    runner = ModelRunner(config, spec, model_dir, max_model_len, parallel=rank_part(spec, group, config.quantization))
    conn.send(("ready",))
    handle = None
    while True:
        msg = conn.recv()
        kind = msg[0]
        if kind == "step":
            # Launch this step, then collect the one before (its tokens came by broadcast from rank 0):
            # rank 0's order under asynchronous scheduling, and never behind it by more than one step.
            launched = runner.launch(msg[1])
            if handle is not None:
                runner.collect(handle)
            handle = launched
        elif kind == "num_blocks":
            conn.send(("num_blocks", runner.determine_num_blocks()))
        elif kind == "init_kv":
            runner.initialize_kv_cache(msg[1])
            conn.send(("ok",))
        elif kind == "stop":
            return 0
        else:
            raise ValueError(f"unknown message {kind!r} from rank 0")
