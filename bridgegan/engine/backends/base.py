"""What the backend modules share: the error a backend raises when it cannot run here,
and how a torch backend places its weights. (The Stages a backend builds are the
programs' own, ``reference.programs.Stages``.) Torch-free at import: the registry, which
the command line reads, imports it."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says what it needs."""


def place(module: torch.nn.Module, dtype: torch.dtype, device: torch.device,
          channels_last: bool) -> torch.nn.Module:
    """``module`` moved to ``device`` and ``dtype`` in eval mode, its 4-d weights
    channels_last when asked."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return module.to(device=device, dtype=dtype, memory_format=fmt).eval()
