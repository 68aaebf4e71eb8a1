"""Where and in what an engine runs: its device (``engine_device``), its dtype (``auto``
resolved per device and backend) and its default memory layout."""
from __future__ import annotations

import torch

from ..devices import device_problem
from ..numerics import dtype_name, dtype_spellings
from .backends import ALL_DTYPES, REGISTRY
from .machine import cpu_has_amx


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" means fp16 on CUDA, bf16 on CPUs with AMX, float32 otherwise."""
    if isinstance(dtype, torch.dtype):
        if dtype_name(dtype) not in ALL_DTYPES:
            raise ValueError(f"dtype must be {', '.join(ALL_DTYPES[:-1])} or {ALL_DTYPES[-1]}, "
                             f"got {dtype}")
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_amx() else torch.float32
    if not isinstance(dtype, str) or dtype_name(dtype) not in ALL_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; accepted: auto, "
                         f"{', '.join(dtype_spellings(ALL_DTYPES))}")
    return getattr(torch, dtype_name(dtype))


def backend_dtype(backend: str, dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``resolve_dtype`` for backend ``backend`` (a name, or "auto"): "auto" never picks a
    dtype the named backend does not run (onnxruntime: no bf16), float32 instead."""
    picked = resolve_dtype(dtype, device)
    named = REGISTRY.get(backend) if isinstance(backend, str) else None
    if dtype == "auto" and named and dtype_name(picked) not in named.dtypes:
        return torch.float32
    return picked


def default_channels_last(device: torch.device, dtype: torch.dtype) -> bool:
    """The layout an engine takes when ``channels_last`` is None: channels_last on CUDA and
    for the low-precision dtypes on a CPU (oneDNN's bf16 / fp16 kernels), NCHW for float32
    on a CPU."""
    return device.type == "cuda" or dtype != torch.float32


def engine_device(device: str | torch.device) -> torch.device:
    """``device`` as an engine runs on it: "cuda" is the GPU current now, where the weights
    go (not whichever is current in a caller's thread); CUDA that torch cannot see is
    refused."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N (or a torch.device of those), "
                         f"got {device!r}")
    problem = device_problem(str(dev))
    if problem:
        raise RuntimeError(f"device {str(dev)!r} requested but {problem}")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev

