"""What the backend modules share: the stage functions a backend builds, the error it
raises when it cannot run here, and how a torch backend places its weights. Torch-free
at import (the registry, which the command line reads, imports it)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says what it needs."""


@dataclass(frozen=True)
class Stages:
    """The four stage functions the engine composes into its programs."""

    trunk: Callable  # x -> h: source-only, reusable across edits of one source
    encode: Callable  # (x, d) -> S
    map: Callable  # (r, d) -> S
    decode: Callable  # (h, S or LatentMix) -> images


def place(module: torch.nn.Module, dtype: torch.dtype, device: torch.device,
          channels_last: bool) -> torch.nn.Module:
    """``module`` moved to ``device`` and ``dtype`` in eval mode, its 4-d weights
    channels_last when asked."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return module.to(device=device, dtype=dtype, memory_format=fmt).eval()
