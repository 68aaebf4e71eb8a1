"""The official code's noise memory for the label-based branch (spec sections 5 and 8.1).

One ``noise_dim`` vector per training image, initialised N(0, 1). The LEM noise of a
sample is the stored vector r0 of its REFERENCE image, refined by one step

    r = clip(r0 + sign * (0.9 / rms(g) + 5) * g, -1, 1),
    g = d/dr0 MSE(E(X_r, d), M(r0, d))            (rms per sample, no gradient through it)

and the refined r is written back when the generator steps. ``mode``:

- "official": sign = +1, as written in the official code (an ascent step on the mismatch);
- "descent":  sign = -1 (the step the paper's description suggests);
- "off":      no memory; fresh N(0, 1) noise per sample (what inference uses).

The MSE is a mean over the whole (global) batch as in the official code, so g carries a
1 / (batch elements) factor: the ``5 * g`` part of the step is then negligible next to the
normalised ``0.9 * g / rms(g)`` part. In a distributed run pass ``denominator`` = the
element count of the global batch so each process computes the same g as one process.
"""
from __future__ import annotations

import torch
from torch import nn

from .losses import f32
from .noise_modes import MODES
STEP_NORMALISED = 0.9
STEP_RAW = 5.0
CLIP = 1.0


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"noise memory mode must be one of {MODES}, got {mode!r}")
    return mode


def refinement_step(r0: torch.Tensor, g: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """clip(r0 + sign * (0.9 / rms(g) + 5) * g, -1, 1) with rms over each row of g."""
    rms = f32(g).pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-30)
    step = (STEP_NORMALISED / rms + STEP_RAW) * f32(g)
    return (f32(r0) + sign * step).clamp(-CLIP, CLIP)


def noise_gradient(r0: torch.Tensor, target: torch.Tensor, d: torch.Tensor, mapping: nn.Module,
                   denominator: int | None = None) -> torch.Tensor:
    """g = d/dr0 of MSE(target, M(r0, d)); float32, autocast off, no parameter gradients.

    ``denominator`` replaces the local element count in the mean (see the module doc).
    """
    device_type = r0.device.type
    with torch.enable_grad(), torch.autocast(device_type=device_type, enabled=False):
        r = f32(r0.detach()).requires_grad_(True)
        pred = mapping(r, d.to(r.dtype))
        se = (f32(target.detach()) - f32(pred)).pow(2).sum()
        mse = se / (denominator if denominator is not None else pred.numel())
        (g,) = torch.autograd.grad(mse, r)
    return g


class NoiseMemory:
    """The table of stored noise vectors, and the refinement step of its ``mode``.

    ``table`` is None in mode "off". Rows are indexed by dataset index.
    """

    def __init__(self, size: int, dim: int, mode: str = "official", seed: int = 0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.mode = check_mode(mode)
        self.size, self.dim = int(size), int(dim)
        self.table: torch.Tensor | None = None
        if self.mode != "off":
            gen = torch.Generator().manual_seed(seed)
            self.table = torch.randn(self.size, self.dim, generator=gen).to(device, dtype)

    @property
    def enabled(self) -> bool:
        return self.table is not None

    @property
    def sign(self) -> float:
        return -1.0 if self.mode == "descent" else 1.0

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """Stored r0 of the given dataset indices (a copy)."""
        assert self.table is not None, "noise memory is off"
        return self.table[index.to(self.table.device)].clone()

    def refine(self, r0: torch.Tensor, target: torch.Tensor, d: torch.Tensor,
               mapping: nn.Module, denominator: int | None = None) -> torch.Tensor:
        """One refinement step of r0 towards (official: away from) matching E(X_r, d)."""
        g = noise_gradient(r0, target, d, mapping, denominator)
        return refinement_step(r0, g, self.sign).detach()

    def write(self, index: torch.Tensor, rows: torch.Tensor) -> None:
        """Store refined rows (called when the generator steps)."""
        assert self.table is not None, "noise memory is off"
        self.table[index.to(self.table.device)] = rows.to(self.table)

    # ----- state ---------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.table is None else {"noise_memory": self.table.detach().cpu().contiguous()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> bool:
        """Load the table; returns False (keeping the fresh table) when the state has none."""
        if self.table is None:
            return True
        table = tensors.get("noise_memory")
        if table is None:
            return False
        if tuple(table.shape) != (self.size, self.dim):
            raise ValueError(
                f"noise memory in the checkpoint has shape {tuple(table.shape)}, expected "
                f"({self.size}, {self.dim}) (dataset size, noise_dim): another dataset?"
            )
        cast = table.to(self.table)  # finite in the run's dtype (float64 1e300 is not)
        if not table.is_floating_point() or not torch.isfinite(cast).all():
            raise ValueError(f"noise memory in the checkpoint holds {table.dtype} values that "
                             f"are not all finite {self.table.dtype} numbers: a damaged state")
        self.table.copy_(cast)
        return True
