"""TrainConfig: everything about a training run except the architecture (BridgeGANConfig),
checked when built; saved in each training checkpoint (train_state.json) and run.json."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .loss_weights import LossWeights
from .noise_modes import MODES as NOISE_MODES
from .records import from_fields
from .train_modes import AMP_MODES, INIT_SCHEMES, LR_SCHEDULES, TRAIN_DTYPES


@dataclass
class TrainConfig:
    """Everything about a training run except the architecture (BridgeGANConfig).

    ``batch`` is the GLOBAL batch (split over the processes of a DDP run); ``steps`` counts
    generator steps; ``ema`` is the EMA decay (0 disables EMA). ``d_attr_warmup``: updates of
    D on the real-image attribute loss alone before the first generator step (not in the
    paper; 0 = off): with a small batch D's attribute head otherwise stays near chance while
    the latent terms pull E and M towards an input-independent code. ``feature_classifier``:
    the folder of the frozen classifier that the ``feature`` loss weight matches (not in
    the paper; "" = none). ``lr_schedule``: "constant" (the paper) or "cosine", from ``lr``
    at step 0 to 0 at ``steps`` (not in the paper: the last points of a long CPU run).
    ``init``: how a fresh run draws its weights, "torch" (PyTorch's layer defaults: measured
    better than the authors' on the CPU recipe, docs/TRAINING.md) or "xavier" (the
    authors' code); a resumed run or one started from a checkpoint's weights keeps those,
    but for the channels a widening adds.
    """

    batch: int = 60
    n_d: int = 5
    steps: int = 50_500
    lr: float = 2e-4
    lr_schedule: str = "constant"
    beta1: float = 0.5
    beta2: float = 0.999
    weights: LossWeights = field(default_factory=LossWeights)
    noise_memory: str = "official"
    ema: float = 0.999
    seed: int = 0
    init: str = "torch"
    ckpt_every: int = 1000
    sample_every: int = 500
    log_every: int = 50
    keep_checkpoints: int = 3
    device: str = "cpu"
    amp: str = "none"
    dtype: str = "float32"
    workers: int = 4
    n_samples: int = 8
    sample_edits: int = 4
    d_attr_warmup: int = 0
    single_edits: float = 0.0
    feature_classifier: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.weights, dict):
            self.weights = LossWeights.from_dict(self.weights)
        for name in ("batch", "steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("n_d", "ckpt_every", "sample_every", "log_every", "keep_checkpoints",
                     "workers", "n_samples", "sample_edits", "d_attr_warmup"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("lr", "beta1", "beta2", "ema", "single_edits"):  # before comparing them
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ValueError(f"{name} must be a number, got {type(v).__name__} {v!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {type(self.seed).__name__} "
                             f"{self.seed!r}")
        for name in ("noise_memory", "lr_schedule", "init", "amp", "dtype", "device",
                     "feature_classifier"):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise ValueError(f"{name} must be a string, got {type(v).__name__} {v!r}")
        if not (0 < self.lr < math.inf):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        for name in ("beta1", "beta2", "ema"):
            v = getattr(self, name)
            if not (0 <= v < 1):
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        if not (isinstance(self.single_edits, (int, float)) and 0 <= self.single_edits <= 1):
            raise ValueError(f"single_edits must be a share in [0, 1], got {self.single_edits!r}")
        if bool(self.weights.feature) != bool(self.feature_classifier):
            raise ValueError("the feature loss needs both a weight > 0 (--w-feature) and a "
                             "classifier folder (--feature-classifier); got weight "
                             f"{self.weights.feature} and folder {self.feature_classifier!r}")
        if self.noise_memory not in NOISE_MODES:
            raise ValueError(f"noise_memory must be one of {NOISE_MODES}, got {self.noise_memory!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.init not in INIT_SCHEMES:
            raise ValueError(f"init must be one of {INIT_SCHEMES}, got {self.init!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.dtype not in TRAIN_DTYPES:
            raise ValueError(f"dtype must be one of {list(TRAIN_DTYPES)}, got {self.dtype!r}")
        if self.dtype == "float64" and self.amp != "none":
            raise ValueError("amp needs dtype float32 (float64 is for numerical reference runs)")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["weights"] = self.weights.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return from_fields(cls, data, "train config")
