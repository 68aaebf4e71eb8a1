"""Backends: how the engine's stages (trunk, encode, map, decode) are executed.

- ``reference``: the unmodified model, for comparison;
- ``torch``: the rewritten graph in PyTorch ops;
- ``triton``: the rewritten graph with the fused Triton SPADE / instance-norm kernels;
- ``compile``: torch.compile of the rewritten graph;
- ``onnxruntime``: the exported ONNX stage graphs in onnxruntime sessions;
- ``tensorrt``: TensorRT plans built from the exported stage graphs (CUDA).

The exported backends export (and build) into a cache folder on first use; see
``bridgegan.engine.export``.
"""
from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch

from ..kernels.norm_act import triton_interpreted
from ..reference.layers import LatentMix
from ..reference.model import BridgeGAN
from .backend_names import BACKENDS
from .graph import InferenceGraph, Rewrites


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says what it needs."""


@dataclass
class Stages:
    """The four stage functions the engine composes, plus the module holding weights."""

    trunk: Callable[[torch.Tensor], torch.Tensor]
    encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    map: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor, torch.Tensor | LatentMix], torch.Tensor]
    stateful: bool = False  # shared state between calls (compiled code, the Triton
    # interpreter): the engine serialises calls


def check_backend(backend: str, device: torch.device) -> None:
    """Raise BackendUnavailable naming what to install or which device is needed."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; backends are {', '.join(BACKENDS)}")
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            raise BackendUnavailable("backend 'triton' needs triton: pip install 'bridgegan[triton]'")
        import os

        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise BackendUnavailable(
                "backend 'triton' needs a CUDA device (device='cuda'); on a CPU it runs only "
                "under the Triton interpreter (TRITON_INTERPRET=1, slow, for testing)")
    if backend == "onnxruntime" and not all(
            importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
        raise BackendUnavailable("backend 'onnxruntime' needs onnx and onnxruntime: "
                                 "pip install 'bridgegan[onnx]'")
    if backend == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            raise BackendUnavailable("backend 'tensorrt' needs TensorRT 10 on a CUDA machine: "
                                     "pip install 'bridgegan[tensorrt]'")
        if device.type != "cuda":
            raise BackendUnavailable("backend 'tensorrt' needs a CUDA device (device='cuda')")


def build_stages(model: BridgeGAN, backend: str, rewrites: Rewrites, dtype: torch.dtype,
                 device: torch.device, channels_last: bool, onnx_dir=None) -> Stages:
    """Move/convert the model for ``backend`` and return its stage functions.
    ``onnx_dir``: the export folder of the exported backends (default: a cache folder)."""
    check_backend(backend, device)
    if backend == "onnxruntime":
        from .export.onnx_export import ort_stages

        return ort_stages(model, rewrites, dtype, device, onnx_dir)
    if backend == "tensorrt":
        from .export.trt_runtime import trt_stages

        return trt_stages(model, rewrites, dtype, device, onnx_dir)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if backend == "reference":
        m = copy.deepcopy(model.inference_modules())  # never convert the caller's model
        m = m.to(device=device, dtype=dtype, memory_format=fmt).eval()
        g = m["generator"]
        return Stages(g.trunk, m["encoder"], m["mapping"], g.decode)
    impl = "triton" if backend == "triton" else "ref"
    graph = InferenceGraph(model, rewrites, impl=impl).to(device=device, dtype=dtype,
                                                          memory_format=fmt).eval()
    if backend != "compile":
        # the Triton interpreter patches module-wide state during each kernel run: calls
        # from several threads fail unless they take turns
        return Stages(graph.trunk, graph.encode, graph.map, graph.decode,
                      stateful=impl == "triton" and triton_interpreted())
    # CUDA graphs come from the engine's own capture (CudaGraphed), which graphs the whole
    # program; inductor's cudagraph trees would graph each stage and recycle its outputs.
    mode = "max-autotune-no-cudagraphs" if device.type == "cuda" else None

    def compiled(fn):
        return torch.compile(fn, mode=mode, dynamic=False)

    decode_c = compiled(graph.decode)

    def decode(h, s):  # LatentMix (SPADE-level interpolation) stays eager
        return graph.decode(h, s) if isinstance(s, LatentMix) else decode_c(h, s)

    return Stages(compiled(graph.trunk), compiled(graph.encode), compiled(graph.map), decode,
                  stateful=True)
