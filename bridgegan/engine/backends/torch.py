"""``torch``: the rewritten inference graph (``engine.graph``) in PyTorch ops."""
from __future__ import annotations

from ...reference.programs import Stages
from ..graph import InferenceGraph
from .base import place


def rewritten(model, rewrites, dtype, device, channels_last, impl: str = "torch"
              ) -> InferenceGraph:
    """The inference graph of ``model`` with ``rewrites``, its SPADE / instance-norm ops
    from ``impl`` ("torch": torch ops, "triton": the fused kernels), placed."""
    return place(InferenceGraph(model, rewrites, impl=impl), dtype, device, channels_last)


def build(model, rewrites, dtype, device, channels_last, onnx_dir=None) -> Stages:
    g = rewritten(model, rewrites, dtype, device, channels_last)
    return Stages(g.trunk, g.encode, g.map, g.decode)
