"""``reference``: the unmodified networks (G's trunk and decode, E, M), for comparison."""
from __future__ import annotations

import copy

from ...reference.programs import Stages
from .base import place


def build(model, rewrites, dtype, device, channels_last, onnx_dir=None) -> Stages:
    """A converted copy of G, E and M (the caller's model stays as it is); ``rewrites``
    and ``onnx_dir`` do not apply."""
    m = place(copy.deepcopy(model.inference_modules()), dtype, device, channels_last)
    g = m["generator"]
    return Stages(g.trunk, m["encoder"], m["mapping"], g.decode)
