"""The ranks' process group: a TCP store on rank 0, gloo on the CPU, NCCL on GPUs.

The group is a plain process group object, not torch's global default one, so several engines can
live in one process (tests) and the single-GPU path never touches torch.distributed."""
from __future__ import annotations

import datetime

import torch

LOCALHOST = "127.0.0.1"


class ParallelGroup:
    """This process's rank among ``size`` and the collectives the parallel layers need."""

    def __init__(self, rank: int, size: int, pg) -> None:
        self.rank, self.size, self.pg = rank, size, pg

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sums ``x`` over the ranks, in place."""
        self.pg.allreduce([x]).wait()
        return x

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        """The element-wise maximum of ``x`` over the ranks, in place."""
        import torch.distributed as dist

        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.MAX
        self.pg.allreduce([x], opts).wait()
        return x

    def broadcast_(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """``x`` becomes rank ``src``'s ``x`` on every rank, in place (stream-ordered on GPUs)."""
        self.pg.broadcast(x, src).wait()
        return x

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenates every rank's ``x`` along its last dimension, in rank order."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)]
        self.pg.allgather([parts], [x]).wait()
        return torch.cat(parts, dim=-1)


def make_store(port: int, rank: int, size: int, timeout_s: float):
    """Rank 0 hosts the rendezvous store (``port`` 0: a free one, read back from ``store.port``)."""
    from torch.distributed import TCPStore

    return TCPStore(LOCALHOST, port, size, rank == 0, timeout=datetime.timedelta(seconds=timeout_s),
                    wait_for_workers=False)


def make_group(store, rank: int, size: int, device: torch.device, timeout_s: float) -> ParallelGroup:
    """Joins the group (returns once every rank has joined, or raises after ``timeout_s``).

    A collective that waits longer than ``timeout_s`` for a peer raises instead of hanging."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    prefixed = dist.PrefixStore("ward-tp", store)
    if device.type == "cuda":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = dist.ProcessGroupNCCL(prefixed, rank, size, opts)
    else:  # over loopback: the ranks share one host, whatever its name resolves to
        opts = dist.ProcessGroupGloo._Options()
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=LOCALHOST)]
        opts._timeout = timeout
        pg = dist.ProcessGroupGloo(prefixed, rank, size, opts)
    return ParallelGroup(rank, size, pg)


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Rank r runs on the r-th GPU from the one configured (cuda -> cuda:r, cuda:N -> cuda:N+r)."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", (device.index or 0) + rank)
