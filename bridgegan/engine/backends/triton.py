"""``triton``: the rewritten inference graph with the fused Triton SPADE / instance-norm
kernels (CUDA; on a CPU only in the Triton interpreter, for testing)."""
from __future__ import annotations

from ...reference.programs import Stages
from .torch import rewritten


def build(model, rewrites, dtype, device, channels_last, onnx_dir=None) -> Stages:
    g = rewritten(model, rewrites, dtype, device, channels_last, impl="triton")
    return Stages(g.trunk, g.encode, g.map, g.decode)
