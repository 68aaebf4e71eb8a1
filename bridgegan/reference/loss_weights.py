"""LossWeights: the weight of each term of the training objective (``losses``); torch-free,
so that the command line states their defaults without importing torch."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from .records import from_fields


@dataclass(frozen=True)
class LossWeights:
    """Weights of every term; the defaults are the paper's / official code's."""

    adv: float = 1.0            # generator adversarial term
    attr: float = 10.0          # generator attribute BCE on the three fakes
    rec: float = 100.0          # reconstruction (both forms, d = 0)
    latent: float = 50.0        # latent similarity L1(S_rand, S_ref)
    cycle: float = 50.0         # the three cycle terms
    mode_seeking: float = 0.005  # mode seeking with fresh r1
    gp: float = 10.0            # gradient penalty in the discriminator loss
    d_attr: float = 1.0         # attribute BCE on real images in the discriminator loss
    paired: float = 0.0         # not in the paper: L1 of the fakes to the true edit (see losses)
    paired_edit: float = 0.0    # not in the paper: that L1 over the pixels each edit changes
    feature: float = 0.0        # not in the paper: a frozen classifier's features matched

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < math.inf:
                raise ValueError(f"loss weight {f.name} must be a finite number >= 0, got {v!r}")

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LossWeights":
        return from_fields(cls, data, "loss weight")
