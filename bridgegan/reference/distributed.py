"""torch.distributed helpers for training launched by torchrun (env RANK / WORLD_SIZE).

The trainer works on GLOBAL batches: every rank loads its slice, the slices are
all-gathered so each rank sees the whole batch (references are drawn from the whole
batch), and the per-step random draws are made for the whole batch from a generator
seeded identically on every rank and sliced per rank. With mean losses and equal slices,
DistributedDataParallel's gradient average then equals the one-process gradient.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist

from ..exits import finish


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_several() -> bool:
    """Whether this process is one of two or more that torchrun launched (env RANK,
    WORLD_SIZE)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", 1)) > 1


def current() -> DistInfo:
    """The process group's view (one process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def init_from_env(device: str = "cpu", backend: str | None = None,
                  timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the default process group from torchrun's environment, if launched so.

    backend: "nccl" for CUDA, "gloo" for CPU unless given. On CUDA each process uses GPU
    LOCAL_RANK. Returns DistInfo() (one process) when not launched by torchrun.
    """
    if not launched_several():
        return current()
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_process(status: int) -> NoReturn:
    """End this process with ``status`` without finalizing the interpreter.

    A gloo worker thread drops a finished collective's tensors after the caller has seen it
    finish, and dropping a tensor Python also holds takes the GIL. If the main thread has
    begun finalizing by then, Python < 3.14 ends that thread with pthread_exit inside the
    work's noexcept destructor: std::terminate, a SIGABRT after a run that finished (about
    1 run in 50 on a 2-core machine). destroy_process_group does not stop those threads
    (DDP's reducer keeps the group alive), and nothing says when they are done. So the exit
    handlers run here, with the interpreter whole, and the process ends without the rest
    (which would also join non-daemon threads: training starts none).
    """
    finish()
    os._exit(status)


def all_gather_cat(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate equal-shaped tensors of every rank along dim 0, in rank order."""
    if not info.enabled:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(parts, t)
    return torch.cat(parts)


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over the ranks (a new tensor; identity in one process)."""
    if not info.enabled:
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / info.world_size

