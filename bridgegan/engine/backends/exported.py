"""Engine stages over exported stage graphs (onnxruntime sessions, TensorRT plans): the
engine composes them exactly as it composes the torch stages (trunk reuse in edit strips,
several references, interpolation), with no special case."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ...reference.layers import LatentMix
from ...reference.programs import Stages


def exported_stages(graphs: Mapping[str, Callable]) -> Stages:
    """Stages over the graphs ``trunk``, ``encode``, ``map``, ``decode`` and
    ``decode_mix`` (see ``export.onnx_export``); each callable takes the graph's inputs
    as tensors, in order, and returns its outputs."""
    def stage(name: str):
        return lambda *args: graphs[name](*args)[0]

    decode, mix = stage("decode"), stage("decode_mix")

    def decode_any(h: torch.Tensor, s) -> torch.Tensor:
        if not isinstance(s, LatentMix):
            return decode(h, s)
        if len(s.codes) != 2:
            raise ValueError(f"exported graphs blend two codes (decode_mix), got {len(s.codes)}")
        a, b = (torch.as_tensor(w, dtype=torch.float32, device=h.device).expand(h.shape[0])
                for w in s.weights)
        if not torch.allclose(a + b, torch.ones_like(a)):
            raise ValueError("exported graphs blend two codes with weights summing to 1")
        return mix(h, *s.codes, a)

    return Stages(stage("trunk"), stage("encode"), stage("map"), decode_any)
