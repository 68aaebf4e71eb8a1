"""Finite weights and results: an engine's weights checked once (``check_weights``),
every result before it is returned (``check_output``), NaN or Inf refused as a
``NonFiniteOutputError``."""
from __future__ import annotations

import math

import torch

from ..numerics import dtype_name
from ..reference.model import BridgeGAN
from ..reference.records import listed


class NonFiniteOutputError(ValueError):
    """The model computed NaN or Inf for a call whose inputs were all valid: its
    activations overflowed the engine's dtype (fp16: |x| > 65504) or its weights are
    unsound. A ValueError, as the engine's other refusals are (``serve`` answers the
    request with it and runs the rest of its batch)."""


def check_weights(model: BridgeGAN, dtype: torch.dtype) -> None:
    """A ValueError naming every tensor of the networks the engine runs (G, E, M: cast to
    ``dtype``; D: kept in float32) that is not finite or, cast, would not be: |value|
    above the dtype's largest finite value becomes Inf (fp16: 65504). Once per engine."""
    limits = {"generator": dtype, "encoder": dtype, "mapping": dtype,
              "discriminator": torch.float32}
    bad = []
    for name, t in model.state_dict().items():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        big = torch.finfo(limits.get(name.split(".")[0], torch.float32)).max
        peak = t.detach().abs().max().item()
        if not peak <= big:  # NaN too
            bad.append(f"{name} (max |value| {peak:g})")
    if bad:
        raise ValueError(f"the model's weights are not finite in {dtype_name(dtype)} (largest "
                         f"finite value {torch.finfo(dtype).max:g}): {listed(bad)}; use a "
                         f"dtype that holds them (float32) or a sound checkpoint")


def check_output(out: torch.Tensor, dtype: torch.dtype, backend: str) -> torch.Tensor:
    """``out`` unless it holds NaN or Inf (one reduction and one host sync per call):
    then a NonFiniteOutputError, so that no NaN image reaches a caller, a file or a
    client silently."""
    # a sum is NaN or Inf where any value is (no boolean tensor to fill and reduce); one
    # that overflowed float32 alone is looked at value by value
    if math.isfinite(out.sum(dtype=torch.float32).item()):
        return out
    bad = int((~torch.isfinite(out)).sum())
    if bad:
        raise NonFiniteOutputError(
            f"the model computed NaN or Inf in {bad} of {out.numel()} output values "
            f"({backend} backend, {dtype_name(dtype)}) from valid inputs: its activations "
            f"overflowed {dtype_name(dtype)} (largest finite value {torch.finfo(dtype).max:g}) "
            f"or its weights are unsound; float32 has the widest range of the exact dtypes")
    return out

