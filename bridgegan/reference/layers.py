"""Building blocks (spec section 2): instance norm, SPADE, the pre-activation ResBlk.

A latent code passed to a SPADE layer is either one tensor S (N, C_s, h, w) or a
``LatentMix``: SPADE-output-level interpolation, where every SPADE layer blends the
modulations computed from several codes (spec section 7: the official test blends SPADE
outputs; it feeds the mapping output M(r, d) alone as the label code, where this package
uses the training form M(r, d) + E(X_s, -d) at both levels).
Because x_hat * (1 + gamma) + beta is affine in (gamma, beta), blending modulations equals
blending the SPADE outputs at the same input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LatentMix:
    """Weighted codes: sum_i weights[i] * SPADE(x, codes[i]) at every SPADE layer.

    Each weight is a float or a per-sample tensor of shape (N,).
    """

    codes: tuple[torch.Tensor, ...]
    weights: tuple[Union[float, torch.Tensor], ...]


Latent = Union[torch.Tensor, LatentMix]


def make_act(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU()
    if kind == "lrelu":
        return nn.LeakyReLU(0.2)
    raise ValueError(f"activation must be 'relu' or 'lrelu', got {kind!r}")


class InstanceNorm(nn.Module):
    """Instance norm over H x W, biased variance, learnable per-channel scale and shift."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


class SPADE(nn.Module):
    """x_hat * (1 + gamma(S')) + beta(S'), S' = nearest-resized S (spec section 2)."""

    def __init__(self, channels: int, latent_channels: int, hidden: int, eps: float):
        super().__init__()
        self.eps = eps
        self.shared = nn.Conv2d(latent_channels, hidden, 3, padding=1)
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def modulation(self, s: Latent, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma, beta) at spatial ``size``; blended when ``s`` is a LatentMix."""
        if isinstance(s, LatentMix):
            gamma = beta = 0
            for code, w in zip(s.codes, s.weights):
                g, b = self.modulation(code, size)
                if isinstance(w, torch.Tensor):
                    w = w.to(g.dtype).view(-1, 1, 1, 1)
                gamma, beta = gamma + w * g, beta + w * b
            return gamma, beta
        s = F.interpolate(s, size=size, mode="nearest")
        hidden = F.relu(self.shared(s))
        return self.gamma(hidden), self.beta(hidden)

    def forward(self, x: torch.Tensor, s: Latent) -> torch.Tensor:
        gamma, beta = self.modulation(s, x.shape[-2:])
        return F.instance_norm(x, eps=self.eps) * (1 + gamma) + beta


class ResBlk(nn.Module):
    """Pre-activation residual block; ``norm`` in {"in", "spade", "none"}, ``resample`` in
    {None, "up", "down"}; ``eps`` is the norms' epsilon (the config's, unused without a
    norm). Output = residual + shortcut, no scaling."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        norm: str,
        act: str,
        resample: str | None = None,
        latent_channels: int = 0,
        spade_hidden: int = 0,
        eps: float | None = None,
    ):
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
        self.norm_kind, self.resample = norm, resample
        self.norm1 = self._norm(norm, in_c, latent_channels, spade_hidden, eps)
        self.conv1 = nn.Conv2d(in_c, out_c, 3, padding=1)
        self.norm2 = self._norm(norm, out_c, latent_channels, spade_hidden, eps)
        self.conv2 = nn.Conv2d(out_c, out_c, 3, padding=1)
        self.act = make_act(act)
        learned = in_c != out_c or resample is not None
        self.shortcut = nn.Conv2d(in_c, out_c, 1) if learned else None

    @staticmethod
    def _norm(kind: str, c: int, latent_c: int, hidden: int, eps: float | None) -> nn.Module:
        if kind in ("in", "spade") and eps is None:
            raise ValueError(f"norm {kind!r} needs eps (the config's)")
        if kind == "in":
            return InstanceNorm(c, eps)
        if kind == "spade":
            return SPADE(c, latent_c, hidden, eps)
        if kind == "none":
            return nn.Identity()
        raise ValueError(f"norm must be 'in', 'spade' or 'none', got {kind!r}")

    def _apply_norm(self, norm: nn.Module, x: torch.Tensor, s: Latent | None) -> torch.Tensor:
        return norm(x, s) if self.norm_kind == "spade" else norm(x)

    def forward(self, x: torch.Tensor, s: Latent | None = None) -> torch.Tensor:
        h = self.act(self._apply_norm(self.norm1, x, s))
        if self.resample == "up":
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv1(h)
        h = self.conv2(self.act(self._apply_norm(self.norm2, h, s)))
        sc = x
        if self.resample == "up":
            sc = F.interpolate(sc, scale_factor=2, mode="nearest")
        if self.shortcut is not None:
            sc = self.shortcut(sc)
        if self.resample == "down":
            h, sc = F.avg_pool2d(h, 2), F.avg_pool2d(sc, 2)
        return h + sc
