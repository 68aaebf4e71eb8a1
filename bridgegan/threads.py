"""`--threads N`: the CPU threads torch uses in the commands that compute.

torch's default is one thread per core. When other processes keep cores busy, its
threads oversubscribe them and wait on one another (training on a 2-core machine next to
one busy process ran 1.3-2x slower per step with 2 threads than with 1, a batch-8
translation 3.5-7x slower). So the
default leaves out the cores that are busy: cores available to this process minus the
1-minute load average, at least 1 and never more than torch's own default. OMP_NUM_THREADS
set in the environment is taken as given.

A process forked from one that has built an Engine (gunicorn --preload, a fork Pool) runs
torch on one thread (``guard_forks``).
"""
from __future__ import annotations

import argparse
import os
import warnings

from .argtypes import int_between

# --threads' bound: more threads than this would only oversubscribe any machine, and
# torch.set_num_threads overflows at 2**31 (a traceback before the command ran)
MAX_THREADS = 1024


def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--threads N`` to a command's options."""
    parser.add_argument("--threads", type=int_between(1, MAX_THREADS), default=None, metavar="N",
                        help=f"CPU threads for torch, 1 to {MAX_THREADS} (default: the idle "
                             "cores, from the load average; OMP_NUM_THREADS when set)")


def cores() -> int:
    """The cores this process may use."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return n or 1


def load_average() -> float:
    """The 1-minute load average: runnable processes, on average (0 where unknown)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def default_threads() -> int:
    """Idle cores: the cores this process may use minus the 1-minute load average."""
    import torch

    return max(1, min(torch.get_num_threads(), cores() - round(load_average())))


def apply(threads: int | None) -> int:
    """Set torch's thread count: ``threads``, else OMP_NUM_THREADS's (torch read it), else
    ``default_threads()``. Returns the count in use."""
    import torch

    if threads is None and not os.environ.get("OMP_NUM_THREADS"):
        threads = default_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


_GUARDED: list[bool] = []  # guard_forks' handler, registered once
_FORKED: list[bool] = []  # in a child it put on one thread, until its first engine call


def guard_forks() -> None:
    """From now on, a child forked from this process runs torch on one thread, and its
    first engine call warns why (``forked_warning``). torch's CPU thread pool is OpenMP's
    (GNU's in the pip builds), which is not fork-safe: a child of a process that has run a
    parallel op hangs at its first parallel op, every Engine call with more than one thread
    (torch's DataLoader sets one thread in its workers for the same reason). Called where an
    Engine is built or unpickled; a no-op where torch's thread pool is not OpenMP's."""
    if _GUARDED or not hasattr(os, "register_at_fork"):
        return
    import torch

    if "parallel backend: OpenMP" in torch.__config__.parallel_info():
        os.register_at_fork(after_in_child=_one_thread)
    _GUARDED.append(True)


def _one_thread() -> None:
    import torch

    if torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        _FORKED.append(True)


def forked_warning() -> None:
    """Once in a child that ``guard_forks`` put on one thread: a warning that says why and
    what gives a worker more threads."""
    if _FORKED:
        _FORKED.clear()
        warnings.warn(
            "bridgegan: this process was forked from one that built an Engine, so torch runs "
            "one thread here (more would hang if the parent's torch had run its OpenMP "
            "thread pool, which is not fork-safe); for more threads per worker, build the "
            "Engine in each worker and run no torch work in the parent before forking, then "
            "torch.set_num_threads in the worker", RuntimeWarning,
            stacklevel=3)
