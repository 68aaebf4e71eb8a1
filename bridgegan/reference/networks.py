"""The four networks (spec section 3): Generator G, Encoder E, Mapping M, Discriminator D."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import BridgeGANConfig
from .layers import InstanceNorm, Latent, ResBlk


def tile_labels(d: torch.Tensor, size: int) -> torch.Tensor:
    """(N, A) -> (N, A, size, size)."""
    return d[:, :, None, None].expand(-1, -1, size, size)


class Generator(nn.Module):
    """G(X_s, S): IN down blocks, an IN and a SPADE middle block, SPADE up blocks.

    ``trunk`` (everything before the SPADE middle block) depends on X_s alone; ``decode``
    consumes the latent code. forward = decode(trunk(x), s).
    """

    def __init__(self, cfg: BridgeGANConfig):
        super().__init__()
        ch = cfg.g_channels()
        spade = dict(latent_channels=cfg.latent_channels, spade_hidden=cfg.spade_hidden,
                     eps=cfg.eps)
        self.stem = nn.Conv2d(3, ch[0], 1)
        self.down = nn.ModuleList(
            ResBlk(ch[i], ch[i + 1], "in", "relu", "down", eps=cfg.eps)
            for i in range(cfg.g_downs)
        )
        self.mid_in = ResBlk(ch[-1], ch[-1], "in", "relu", eps=cfg.eps)
        self.mid_spade = ResBlk(ch[-1], ch[-1], "spade", "relu", **spade)
        self.up = nn.ModuleList(
            ResBlk(ch[i + 1], ch[i], "spade", "relu", "up", **spade)
            for i in reversed(range(cfg.g_downs))
        )
        self.to_rgb = nn.Conv2d(ch[0], 3, 1)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for blk in self.down:
            h = blk(h)
        return self.mid_in(h)

    def decode(self, h: torch.Tensor, s: Latent) -> torch.Tensor:
        h = self.mid_spade(h, s)
        for blk in self.up:
            h = blk(h, s)
        return torch.tanh(self.to_rgb(F.relu(h)))

    def forward(self, x: torch.Tensor, s: Latent) -> torch.Tensor:
        return self.decode(self.trunk(x), s)


class _LatentHead(nn.Module):
    """ReLU, conv1x1, IN, ReLU: the common tail of E and M (non-negative output)."""

    def __init__(self, in_c: int, out_c: int, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, 1)
        self.norm = InstanceNorm(out_c, eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(F.relu(h))))


class Encoder(nn.Module):
    """E(X, d): image + tiled attribute difference -> latent code (C_s, S/2, S/2)."""

    def __init__(self, cfg: BridgeGANConfig):
        super().__init__()
        w = cfg.e_width
        self.stem = nn.Conv2d(3 + cfg.n_attrs, w, 1)
        self.blocks = nn.ModuleList(
            [ResBlk(w, 2 * w, "in", "relu", "down", eps=cfg.eps)]
            + [ResBlk(2 * w, 2 * w, "in", "relu", eps=cfg.eps) for _ in range(cfg.e_blocks)]
        )
        self.head = _LatentHead(2 * w, cfg.latent_channels, cfg.eps)

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        h = self.stem(torch.cat([x, tile_labels(d.to(x.dtype), x.shape[-1])], dim=1))
        for blk in self.blocks:
            h = blk(h)
        return self.head(h)


class Mapping(nn.Module):
    """M(r, d): noise + attribute difference -> latent code, through 4x4 and IN up blocks."""

    def __init__(self, cfg: BridgeGANConfig):
        super().__init__()
        self.start_channels = cfg.mapping_channels
        self.fc = nn.Linear(cfg.noise_dim + cfg.n_attrs, cfg.mapping_channels * 16)
        c = cfg.latent_channels
        self.blocks = nn.ModuleList(
            ResBlk(cfg.mapping_channels if i == 0 else c, c, "in", "relu", "up", eps=cfg.eps)
            for i in range(cfg.mapping_ups)
        )
        self.head = _LatentHead(c, c, cfg.eps)

    def forward(self, r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([r, d.to(r.dtype)], dim=1)).view(-1, self.start_channels, 4, 4)
        for blk in self.blocks:
            h = blk(h)
        return self.head(h)


class Discriminator(nn.Module):
    """D(X) -> (adversarial score (N,), attribute logits (N, A)) on a shared trunk."""

    def __init__(self, cfg: BridgeGANConfig):
        super().__init__()
        w, k = cfg.d_width, cfg.d_head_kernel
        top = w * 2 ** cfg.d_downs
        self.stem = nn.Conv2d(3, w, 1)
        self.blocks = nn.ModuleList(
            ResBlk(w * 2 ** i, w * 2 ** (i + 1), "none", "lrelu", "down")
            for i in range(cfg.d_downs)
        )
        self.adv_conv, self.adv_fc = nn.Conv2d(top, top, k), nn.Linear(top, 1)
        self.cls_conv, self.cls_fc = nn.Conv2d(top, top, k), nn.Linear(top, cfg.n_attrs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._trunk(x)
        adv = self.adv_fc(F.leaky_relu(self.adv_conv(h), 0.2).flatten(1)).squeeze(1)
        return adv, self._attributes(h)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The attribute logits alone (what inference reads: source labels are logit > 0)."""
        return self._attributes(self._trunk(x))

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for blk in self.blocks:
            h = blk(h)
        return F.leaky_relu(h, 0.2)

    def _attributes(self, h: torch.Tensor) -> torch.Tensor:
        return self.cls_fc(F.leaky_relu(self.cls_conv(h), 0.2).flatten(1))
