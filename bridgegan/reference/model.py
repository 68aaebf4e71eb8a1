"""BridgeGAN: G, E, M, D and the inference modes of spec section 7 (the programs in
``programs``, over this model's stages).

All image tensors are (N, 3, S, S) in [-1, 1]; labels are (N, A) 0/1 floats in the order
of ``config.attributes``. A target may be given as a label tensor or as a dict of
attribute name -> 0/1 applied to the source labels with the conflict rules.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Union

import torch
from torch import nn

from . import programs
from .attributes import apply_edits
from .config import BridgeGANConfig
from .networks import Discriminator, Encoder, Generator, Mapping as MappingNet
from .programs import Stages
from .train_modes import INIT_SCHEMES

Target = Union[torch.Tensor, Mapping[str, float]]
References = Union[torch.Tensor, Sequence[torch.Tensor]]


class BridgeGAN(nn.Module):
    def __init__(self, config: BridgeGANConfig | None = None):
        super().__init__()
        self.config = config or BridgeGANConfig.paper()
        self.generator = Generator(self.config)
        self.encoder = Encoder(self.config)
        self.mapping = MappingNet(self.config)
        self.discriminator = Discriminator(self.config)

    def initialise(self, scheme: str) -> None:
        """The weights a fresh model starts training from, by ``scheme``
        (``train_modes.INIT_SCHEMES``): "xavier" draws them as the authors' code does
        (TensorFlow slim's defaults: every convolution and linear layer Glorot-uniform within
        sqrt(6 / (fan_in + fan_out)), zero biases); "torch" keeps PyTorch's layer defaults,
        drawn when the model was built. Instance norms keep scale 1 and shift 0."""
        if scheme not in INIT_SCHEMES:
            raise ValueError(f"init must be one of {INIT_SCHEMES}, got {scheme!r}")
        for layer in self.modules() if scheme == "xavier" else ():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    # ----- inputs --------------------------------------------------------------------
    def check_images(self, x: torch.Tensor, what: str = "images") -> None:
        s = self.config.image_size
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1:] != (3, s, s):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{what} must be a tensor of shape (N, 3, {s}, {s}), got {shape}")

    def target_labels(self, source: torch.Tensor, target: Target) -> torch.Tensor:
        """Target labels from a tensor, or from a dict name -> 0/1 with the conflict rules."""
        if isinstance(target, Mapping):
            return apply_edits(source, self.config.attributes, target)
        if target.shape != source.shape:
            raise ValueError(
                f"target labels must have shape {tuple(source.shape)} "
                f"(N, {self.config.n_attrs}: {', '.join(self.config.attributes)}), "
                f"got {tuple(target.shape)}"
            )
        return target.to(source)

    def difference(self, source: torch.Tensor, target: Target,
                   strength: float | None = None) -> torch.Tensor:
        """d (``BridgeGANConfig.label_difference``) with the labels' shapes checked."""
        if source.dim() != 2 or source.shape[1] != self.config.n_attrs:
            raise ValueError(
                f"source labels must have shape (N, {self.config.n_attrs}), "
                f"got {tuple(source.shape)}"
            )
        return self.config.label_difference(source, self.target_labels(source, target), strength)

    def sample_noise(self, n: int, generator: torch.Generator | None = None,
                     like: torch.Tensor | None = None) -> torch.Tensor:
        device = like.device if like is not None else None
        dtype = like.dtype if like is not None else None
        r = torch.randn(n, self.config.noise_dim, generator=generator,
                        device=generator.device if generator is not None else device)
        return r.to(device=device, dtype=dtype)

    def stack_references(self, x: torch.Tensor, references: References) -> torch.Tensor:
        """One checked reference batch (N, 3, S, S), or several stacked (K, N, 3, S, S)."""
        refs = [references] if isinstance(references, torch.Tensor) else list(references)
        if not refs:
            raise ValueError("at least one reference batch is needed")
        for r in refs:
            self.check_images(r, "references")
            if r.shape[0] != x.shape[0]:
                raise ValueError(
                    f"each reference batch must hold one reference per source image "
                    f"({x.shape[0]}), got {r.shape[0]}"
                )
        return references if isinstance(references, torch.Tensor) else torch.stack(refs)

    def stages(self) -> Stages:
        """G's trunk and decode, E and M: what the programs (``programs``) compose."""
        return Stages(self.generator.trunk, self.encoder, self.mapping, self.generator.decode)

    # ----- inference modes (spec section 7) ------------------------------------------
    def translate(self, x: torch.Tensor, source: torch.Tensor, target: Target,
                  noise: torch.Tensor | None = None, strength: float | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Label-based translation towards ``target`` with noise r ~ N(0, 1)."""
        self.check_images(x)
        d = self.difference(source, target, strength)
        if noise is None:
            noise = self.sample_noise(x.shape[0], generator, like=x)
        return programs.translate_label(self.stages(), x, d, noise)

    def reconstruct(self, x: torch.Tensor, noise: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Label-based mode with d = 0."""
        self.check_images(x)
        d = x.new_zeros(x.shape[0], self.config.n_attrs)
        if noise is None:
            noise = self.sample_noise(x.shape[0], generator, like=x)
        return programs.translate_label(self.stages(), x, d, noise)

    def translate_reference(self, x: torch.Tensor, references: References,
                            source: torch.Tensor, target: Target,
                            strength: float | None = None) -> torch.Tensor:
        """Reference-based translation; several reference batches are averaged in S."""
        self.check_images(x)
        d = self.difference(source, target, strength)
        refs = self.stack_references(x, references)
        return programs.translate_reference(self.stages(), x, refs, d)

    def interpolate(self, x: torch.Tensor, references: References, source: torch.Tensor,
                    target: Target, alpha: float | torch.Tensor,
                    noise: torch.Tensor | None = None, strength: float | None = None,
                    level: str = "latent",
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Blend label-based (alpha = 1) and reference-based (alpha = 0) translation.

        level="latent": S_int = a S_rand + (1 - a) S_ref (the training form);
        level="spade": every SPADE layer blends its outputs under S_rand and S_ref (the
        official test's SPADE-level blend; its label code is M(r, d) alone, here S_rand is
        the training form M(r, d) + E(X_s, -d), as at the latent level).
        """
        self.check_images(x)
        d = self.difference(source, target, strength)
        if noise is None:
            noise = self.sample_noise(x.shape[0], generator, like=x)
        if isinstance(alpha, torch.Tensor):
            alpha = alpha.to(x).view(-1)
        refs = self.stack_references(x, references)
        return programs.interpolate(self.stages(), x, refs, d, noise, [alpha], level)[0]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Source labels estimated by D's attribute head (0/1)."""
        self.check_images(x)
        return (self.discriminator.classify(x) > 0).to(x.dtype)

    def inference_modules(self) -> nn.ModuleDict:
        """The networks inference needs (no D is needed when labels are given)."""
        return nn.ModuleDict(dict(generator=self.generator, encoder=self.encoder,
                                  mapping=self.mapping))
