"""``compile``: torch.compile of the rewritten inference graph, one compiled function per
stage (fixed shapes). Compiled code is shared state: the registry has the engine run
calls one at a time."""
from __future__ import annotations

import torch

from ...reference.layers import LatentMix
from ...reference.programs import Stages
from .torch import rewritten


def build(model, rewrites, dtype, device, channels_last, onnx_dir=None) -> Stages:
    graph = rewritten(model, rewrites, dtype, device, channels_last)
    # CUDA graphs come from the engine's own capture (CudaGraphed), which graphs the whole
    # program; inductor's cudagraph trees would graph each stage and recycle its outputs.
    mode = "max-autotune-no-cudagraphs" if torch.device(device).type == "cuda" else None

    def compiled(fn):
        return torch.compile(fn, mode=mode, dynamic=False)

    decode_c = compiled(graph.decode)

    def decode(h, s):  # LatentMix (SPADE-level interpolation) stays eager
        return graph.decode(h, s) if isinstance(s, LatentMix) else decode_c(h, s)

    return Stages(compiled(graph.trunk), compiled(graph.encode), compiled(graph.map), decode)
