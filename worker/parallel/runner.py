"""Rank 0's model runner under tensor parallelism.

The engine (scheduler, KV cache manager, sampling) runs once, here. Rank 0 spawns one process per
other rank; every step it sends them the scheduler's plan (plain data over a pipe), then runs its own
part of the model: the collectives inside the model keep the ranks in lock-step. Rank 0 samples and
broadcasts the tokens on the device, so every rank gathers step N's tokens as step N + 1's inputs
there: asynchronous scheduling works as on one GPU (step N + 1 launched before step N is collected).

The KV pool is sized by the smallest rank: each rank measures its own budget, rank 0 takes the least.

A rank that dies, or fails, is noticed within a second (``check_health`` is called while idle, and
a collective with a dead peer fails at once on gloo; NCCL times out after ``distributed_timeout``)
and raised as EngineDeadError naming the rank, which stops the worker with a non-zero exit. On
GPUs a step can instead wait on the device for a collective its dead peer will never join: a
watchdog ends the process (exit 1, naming the rank) when a step is still running STUCK_EXIT_S after
a rank died, rather than let it hang until NCCL's timeout.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import threading
import time
from multiprocessing.connection import wait

import torch

from worker.errors import EngineDeadError, ModelLoadError
from worker.model.spec import ModelSpec
from worker.parallel.group import make_group, make_store
from worker.parallel.layers import plan_shard, rank_part
from worker.parallel.rank import rank_main
from worker.runner.device import pick_device
from worker.runner.model_runner import ModelRunner

log = logging.getLogger("ward.worker.parallel")
DEATH_GRACE_S = 2.0  # after a failed collective: how long to wait for the culprit's exit
STUCK_EXIT_S = 10.0  # a step still running this long after a rank died is waiting for it on the device


class TensorParallelRunner:
    """ModelRunner's interface (launch, collect, KV sizing) over ``tensor_parallel_size`` ranks."""

    def __init__(self, config, spec: ModelSpec, model_dir: str, max_model_len: int) -> None:
        size = config.tensor_parallel_size
        plan_shard(spec, 0, size)  # refuses a shape that cannot be split before starting anything
        device = pick_device(config.device)
        if device.type == "cuda" and (device.index or 0) + size > torch.cuda.device_count():
            raise ModelLoadError(f"tensor_parallel_size {size} needs {size} GPUs from {device}; "
                                 f"{torch.cuda.device_count()} visible")
        self.size = size
        self.procs: list = []
        self.conns: list = []
        self._failure: str | None = None
        self._in_flight = 0  # steps launched and not yet collected
        self._closing = False
        timeout = config.distributed_timeout
        self._store = make_store(0, 0, size, timeout)
        ctx = multiprocessing.get_context("spawn")
        for rank in range(1, size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=rank_main, name=f"ward-tp-rank{rank}", daemon=True,
                               args=(child, config, model_dir, max_model_len, rank, size, self._store.port,
                                     torch.get_num_threads()))
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
            log.info("tensor-parallel rank %d: pid %d", rank, proc.pid)
        try:
            self._gather("joining", timeout)
            group = make_group(self._store, 0, size, device, timeout)
            self.local = ModelRunner(config, spec, model_dir, max_model_len,
                                     parallel=rank_part(spec, group, config.quantization))
            self._gather("ready", timeout)
        except BaseException:
            self.close()
            raise
        threading.Thread(target=self._watch, name="ward-tp-watchdog", daemon=True).start()
        log.info("tensor parallel: %d ranks on %s", size, device)

    # ---- what the engine reads from its runner ---------------------------------------------
    def __getattr__(self, name):  # device, dtype, spec, memory_report, graph_capture_seconds, ...
        if name == "local":
            raise AttributeError(name)
        return getattr(self.local, name)

    def determine_num_blocks(self) -> int:
        """Every rank measures its own KV budget (at once: the profile runs the model); the pool is
        sized by the smallest."""
        self._send(("num_blocks",))
        own = self.local.determine_num_blocks()
        counts = [own] + [int(m[1]) for m in self._gather("num_blocks", self.local.config.distributed_timeout)]
        log.info("KV blocks per rank: %s; the pool takes the smallest", counts)
        return min(counts)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self._send(("init_kv", num_blocks))
        self.local.initialize_kv_cache(num_blocks)  # CUDA graphs: every rank captures, collectives inside
        self._gather("ok", self.local.config.distributed_timeout)
        self.num_blocks = num_blocks

    def launch(self, sched, defer_sampling: bool = False):
        self.check_health()
        self._send(("step", _plain(sched)))
        self._in_flight += 1
        try:
            handle = self.local.launch(sched, defer_sampling)
        except Exception as exc:
            self._in_flight -= 1
            self._raise_if_a_rank_died(exc)
            raise
        if handle is None:
            self._in_flight -= 1
        return handle

    def sample(self, handle) -> None:
        self.local.sample(handle)  # its tokens are broadcast to the other ranks

    def collect(self, handle):
        try:
            return self.local.collect(handle)
        finally:
            self._in_flight -= 1

    # ---- health ------------------------------------------------------------------------------
    def check_health(self) -> None:
        """Raises EngineDeadError when a rank has exited (or reported a failure)."""
        if self._failure is not None:
            raise EngineDeadError(self._failure)
        for rank, proc in enumerate(self.procs, start=1):
            if proc.exitcode is not None:
                self._failed(rank)

    def _watch(self) -> None:
        """Ends the process when a step is stuck on the device after a rank died (see the module doc)."""
        wait([p.sentinel for p in self.procs])
        deadline = time.monotonic() + STUCK_EXIT_S
        while time.monotonic() < deadline:
            if self._closing or not self._in_flight:
                return
            time.sleep(0.1)
        dead = [(r, p.pid, p.exitcode) for r, p in enumerate(self.procs, start=1) if p.exitcode is not None]
        log.critical("tensor-parallel rank(s) %s died and the running step has waited %.0fs for them: exiting",
                     ", ".join(f"{r} (pid {pid}, exit code {code})" for r, pid, code in dead), STUCK_EXIT_S)
        logging.shutdown()
        os._exit(1)

    def _failed(self, rank: int):
        proc, conn = self.procs[rank - 1], self.conns[rank - 1]
        detail = f"exit code {proc.exitcode}" if proc.exitcode is not None else "no answer"
        try:
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "error":
                    detail = msg[1]
        except (EOFError, OSError):
            pass
        self._failure = f"tensor-parallel rank {rank} (pid {proc.pid}) failed: {detail}"
        log.error("%s", self._failure)
        raise EngineDeadError(self._failure)

    def _raise_if_a_rank_died(self, exc: BaseException) -> None:
        deadline = time.monotonic() + DEATH_GRACE_S
        while time.monotonic() < deadline:
            for rank, proc in enumerate(self.procs, start=1):
                if proc.exitcode is not None:
                    try:
                        self._failed(rank)
                    except EngineDeadError as dead:
                        raise dead from exc
            wait([p.sentinel for p in self.procs], timeout=0.1)

    # ---- messages ----------------------------------------------------------------------------
    def _send(self, msg) -> None:
        for rank, conn in enumerate(self.conns, start=1):
            try:
                conn.send(msg)
            except (BrokenPipeError, OSError):
                self._raise_if_a_rank_died(EngineDeadError(f"rank {rank}'s pipe is closed"))
                self._failed(rank)

    def _gather(self, kind: str, timeout: float) -> list:
        """One answer of ``kind`` from every rank; EngineDeadError/ModelLoadError instead of a hang."""
        answers = []
        deadline = time.monotonic() + timeout
        for rank, (proc, conn) in enumerate(zip(self.procs, self.conns), start=1):
            while True:
                ready = wait([conn, proc.sentinel], timeout=max(0.0, deadline - time.monotonic()))
                if conn in ready:
                    try:
                        msg = conn.recv()
                    except EOFError:
                        msg = ("error", f"exited with code {proc.join(DEATH_GRACE_S) or proc.exitcode}")
                    if msg[0] == kind:
                        answers.append(msg)
                        break
                    if msg[0] == "error":
                        raise ModelLoadError(f"tensor-parallel rank {rank} failed: {msg[1]}")
                    continue
                if ready:  # the process ended without a word
                    proc.join(DEATH_GRACE_S)
                    raise ModelLoadError(f"tensor-parallel rank {rank} (pid {proc.pid}) exited with code "
                                         f"{proc.exitcode}")
                raise ModelLoadError(f"tensor-parallel rank {rank} did not answer {kind!r} within {timeout:.0f}s")
        return answers

    def close(self) -> None:
        """Stops the other ranks (each exits on its own when this process ends, too)."""
        self._closing = True
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.exitcode is None:
                proc.kill()
                proc.join(timeout=5)
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []


def _plain(sched):
    """The plan as the other ranks need it: compiled grammars stay on rank 0 (it alone samples)."""
    if not any(n.sampling_params._grammar is not None for n in sched.new_reqs):
        return sched
    new = [dataclasses.replace(n, sampling_params=dataclasses.replace(n.sampling_params, _grammar=None))
           for n in sched.new_reqs]
    return dataclasses.replace(sched, new_reqs=new)
