"""Whether this process can run on a device named ``cpu``, ``cuda`` or ``cuda:N``: the one
check of a device's availability, made by the engine, by training and by the commands that
run neither first (parity's kernel table, train-classifier) before their work."""
from __future__ import annotations

import torch

from .argtypes import split_device


def device_problem(name: str, distributed: bool = False) -> str | None:
    """Why work cannot run on device ``name`` (in one process of several, where
    ``distributed``: each takes GPU LOCAL_RANK); None when it can."""
    try:
        kind, index = split_device(name)
    except ValueError as exc:
        return str(exc)
    if kind == "cpu":
        return None
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if index is not None and distributed:
        return "under torchrun each process takes GPU LOCAL_RANK: give cuda"
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        return f"torch sees {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
    return None


def check_device(name: str, what: str = "--device") -> None:
    """Refuse (ValueError naming ``what``) a device this process cannot run on, before any
    work (``device_problem``)."""
    problem = device_problem(name)
    if problem:
        raise ValueError(f"{what} {name}: {problem}")
