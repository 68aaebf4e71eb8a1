"""BridgeGAN training loop (spec section 5): WGAN-GP with n_d critic steps per generator
step, EMA of G/E/M, the noise memory, exact resume, DDP, AMP, logs and sample grids.

One training *step* is n_d discriminator updates followed by one generator update, each
on a fresh global batch with its own permutation and random draws, so a step consumes
n_d + 1 batches. All per-step randomness comes from generators seeded by
(seed, step, sub-step) and the data order from (seed, epoch) (train_data.py), which is
what makes a resumed run bit-identical to an uninterrupted one and a DDP run equal to one
process on the same global batch.

Checkpoint folder (written atomically, see files.write_folder_atomic):

    config.json               the model configuration
    model.safetensors         the weights for inference (float32): EMA G/E/M with the raw D
                              when EMA is on (TrainConfig.ema > 0), otherwise the raw
                              networks; loadable with checkpoint.load_checkpoint
    train_state.safetensors   raw.* (all raw networks), ema.* (EMA G/E/M), opt_g.* and
                              opt_d.* (Adam state), noise_memory, rng.* (torch CPU / CUDA,
                              NumPy key array)
    train_state.json          step, data position, train config, optimiser param groups,
                              GradScaler states, NumPy / Python RNG scalars
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..files import remove_stale, write_file_atomic
from .attributes import apply_edits
from .checkpoint import (CONFIG_FILE, CheckpointError, load_checkpoint, load_state, read_config,
                         read_tensors, save_checkpoint)
from .config import BridgeGANConfig
from .distributed import DistInfo, all_gather_cat, all_reduce_mean, current
from .losses import DiscriminatorObjective, GeneratorObjective, LossWeights, make_fakes
from .model import BridgeGAN
from .noise_memory import MODES as NOISE_MODES
from .noise_memory import NoiseMemory
from .train_data import (STREAM_INIT, STREAM_MEMORY, STREAM_SAMPLES, STREAM_STEP,
                         IndexedDataset, ResumableBatchSampler, derive_seed, generator)
from .train_state import capture_rng, flatten_optimizer, restore_optimizer, restore_rng

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
STATE_FORMAT = "bridgegan-train-state/1"
METRICS_FILE = "metrics.jsonl"
AMP_MODES = ("none", "bf16", "fp16")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
_CKPT_RE = re.compile(r"^step-(\d+)$")


@dataclass
class TrainConfig:
    """Everything about a training run except the architecture (BridgeGANConfig).

    ``batch`` is the GLOBAL batch (split over the processes of a DDP run); ``steps`` counts
    generator steps; ``ema`` is the EMA decay (0 disables EMA). ``d_attr_warmup``: updates of
    D on the real-image attribute loss alone before the first generator step (not in the
    paper; 0 = off): with a small batch D's attribute head otherwise stays near chance while
    the latent terms pull E and M towards an input-independent code.
    """

    batch: int = 60
    n_d: int = 5
    steps: int = 50_500
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    weights: LossWeights = field(default_factory=LossWeights)
    noise_memory: str = "official"
    ema: float = 0.999
    seed: int = 0
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
        if not (self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        for name in ("beta1", "beta2", "ema"):
            v = getattr(self, name)
            if not (0 <= v < 1):
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        if not (isinstance(self.single_edits, (int, float)) and 0 <= self.single_edits <= 1):
            raise ValueError(f"single_edits must be a share in [0, 1], got {self.single_edits!r}")
        if self.noise_memory not in NOISE_MODES:
            raise ValueError(f"noise_memory must be one of {NOISE_MODES}, got {self.noise_memory!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown train config field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder with the highest step under ``out_dir/checkpoints``."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _CKPT_RE.match(p.name)) and (p / STATE_JSON).is_file()]
    return max(found)[1] if found else None


_STATE_KEYS = ("step", "batches", "dataset_size", "train_config", "opt_g", "opt_d")
_OPT_KEYS = ("param_groups", "scalars", "tensor_keys")


def read_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """The checked ``train_state.json`` of checkpoint folder ``path``: a CheckpointError
    naming the file and what is wrong (not a training checkpoint, corrupt JSON, another
    format, missing entries) otherwise."""
    json_path = Path(path) / STATE_JSON
    if not json_path.is_file():
        raise CheckpointError(f"{path} holds no training state ({STATE_JSON}); it is an "
                              f"inference checkpoint (or no checkpoint) and cannot be resumed")
    try:
        meta = json.loads(json_path.read_text())
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{json_path} is corrupt (truncated or not JSON): {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{json_path}: unknown format {found!r}, expected {STATE_FORMAT!r}")
    missing = [k for k in _STATE_KEYS if k not in meta]
    missing += [f"{k}.{f}" for k in ("opt_g", "opt_d") if isinstance(meta.get(k), dict)
                for f in _OPT_KEYS if f not in meta[k]]
    missing += [k for k in ("opt_g", "opt_d") if k in meta and not isinstance(meta[k], dict)]
    if missing:
        raise CheckpointError(f"{json_path} lacks or has damaged entries {missing}: a damaged "
                              f"training state; resume from another checkpoint")
    return meta


def drop_metrics_after(out_dir: str | os.PathLike, step: int) -> None:
    """Rewrite ``metrics.jsonl`` (atomically) without the records past ``step``: a resumed
    run logs those steps again. Lines cut short by a kill go too."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    write_file_atomic(path, "".join(kept).encode())


class Trainer:
    """Trains a BridgeGAN on ``dataset`` (items (image, labels)); see the module doc.

    ``dist``: the process group view (default: torch.distributed's, one process when not
    initialised). Only rank 0 writes files. ``sample_set``: images for the sample grids
    (default: the first ``n_samples`` items of ``dataset``).
    """

    def __init__(self, model_config: BridgeGANConfig, config: TrainConfig, dataset: Dataset,
                 out_dir: str | os.PathLike | None = None, dist: DistInfo | None = None,
                 sample_set: Dataset | None = None, progress: bool = True):
        self.model_config, self.config = model_config, config
        self.dist = dist or current()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.device = self._pick_device(config.device)
        self._check_dataset(dataset, model_config)
        self.dataset, self.sample_set = dataset, sample_set or dataset
        if config.batch % self.dist.world_size:
            raise ValueError(f"the global batch ({config.batch}) must be divisible by the number "
                             f"of processes ({self.dist.world_size})")
        self.local_batch = config.batch // self.dist.world_size
        if len(dataset) < config.batch:
            raise ValueError(f"the dataset has {len(dataset)} items, fewer than one batch "
                             f"({config.batch})")
        paired = config.weights.paired or config.weights.paired_edit
        if paired and not callable(getattr(dataset, "render_labels", None)):
            raise ValueError("the paired loss needs data that can render the true edit "
                             "(render_labels: the procedural faces, --data synthetic); "
                             f"{type(dataset).__name__} cannot")
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp fp16 needs a CUDA device (bf16 or none work on the CPU)")

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, STREAM_INIT))
            self.model = BridgeGAN(model_config)
        self.dtype = DTYPES[config.dtype]
        self.model.to(self.device, self.dtype)
        m = self.model
        self.gen_params = [p for mod in (m.generator, m.encoder, m.mapping) for p in mod.parameters()]
        self.ema: BridgeGAN | None = None
        if config.ema > 0:
            self.ema = copy.deepcopy(m)
            for name in ("generator", "encoder", "mapping"):
                getattr(self.ema, name).requires_grad_(False)
            self.ema.discriminator = m.discriminator  # shared: saved raw with the EMA G/E/M
            self.ema_params = [p for mod in (self.ema.generator, self.ema.encoder, self.ema.mapping)
                               for p in mod.parameters()]
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.gen_params, lr=config.lr, betas=betas)
        self.opt_d = torch.optim.Adam(m.discriminator.parameters(), lr=config.lr, betas=betas)
        self.memory = NoiseMemory(len(dataset), model_config.noise_dim, config.noise_memory,
                                  seed=derive_seed(config.seed, STREAM_MEMORY), device=self.device,
                                  dtype=self.dtype)

        self.g_objective: nn.Module = GeneratorObjective(m.generator, m.encoder, m.mapping, config.weights)
        self.d_objective: nn.Module = DiscriminatorObjective(m.discriminator, config.weights)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.g_objective = DDP(self.g_objective, device_ids=ids)
            self.d_objective = DDP(self.d_objective, device_ids=ids)

        fp16 = config.amp == "fp16"
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)

        self.step = 0          # generator steps done
        self.batches = 0       # global batches consumed
        self.warmup_done = 0   # discriminator attribute warm-up updates done
        self.sampler = ResumableBatchSampler(len(dataset), config.batch, config.seed,
                                             self.dist.rank, self.dist.world_size)
        self._loader_iter = None
        self._acc: dict[str, torch.Tensor] = {}
        self._acc_n = 0
        self._log_t0 = time.perf_counter()
        self._log_step0 = 0
        if self.is_main and self.out_dir is not None:  # leftovers of killed checkpoint writes
            remove_stale(self.out_dir / "checkpoints")

    # ----- setup -----------------------------------------------------------------------
    def _pick_device(self, name: str) -> torch.device:
        if name.startswith("cuda"):
            if not torch.cuda.is_available():
                raise RuntimeError("device 'cuda' requested but CUDA is not available")
            if name == "cuda":
                return torch.device("cuda", self.dist.local_rank if self.dist.enabled
                                    else torch.cuda.current_device())
        return torch.device(name)

    @staticmethod
    def _check_dataset(dataset: Dataset, cfg: BridgeGANConfig) -> None:
        attrs = getattr(dataset, "attributes", None)
        if attrs is not None and tuple(attrs) != tuple(cfg.attributes):
            raise ValueError(f"the dataset's attributes {list(attrs)} differ from the model's "
                             f"{list(cfg.attributes)}")
        image, labels = dataset[0][:2]
        s = cfg.image_size
        if tuple(image.shape) != (3, s, s):
            raise ValueError(f"dataset images have shape {tuple(image.shape)}, the model needs "
                             f"(3, {s}, {s})")
        if tuple(labels.shape) != (cfg.n_attrs,):
            raise ValueError(f"dataset labels have shape {tuple(labels.shape)}, the model needs "
                             f"({cfg.n_attrs},)")

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def epoch(self) -> float:
        return self.batches / self.sampler.batches_per_epoch

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ----- data and random draws ---------------------------------------------------------
    def _loader(self):
        self.sampler.start = self.batches
        loader = DataLoader(IndexedDataset(self.dataset), batch_sampler=self.sampler,
                            num_workers=self.config.workers,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=False)
        return iter(loader)

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next GLOBAL batch (images, labels, dataset indices) on the device."""
        if self._loader_iter is None:
            self._loader_iter = self._loader()
        x, y, idx = next(self._loader_iter)
        self.batches += 1
        nb = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=nb).to(self.dtype)
        y = y.to(self.device, non_blocking=nb).to(self.dtype)
        idx = idx.to(self.device, non_blocking=nb)
        if self.dist.enabled:
            x, y, idx = (all_gather_cat(t, self.dist) for t in (x, y, idx))
        return x, y, idx

    def _draws(self, sub: int) -> dict[str, torch.Tensor]:
        """Random draws of one sub-step for the whole global batch (identical on all ranks)."""
        B, nd = self.config.batch, self.model_config.noise_dim
        g = generator(self.config.seed, STREAM_STEP, self.step, sub)
        draws = {
            "perm": torch.randperm(B, generator=g),
            "alpha": torch.rand(B, generator=g),
            "noise": torch.randn(B, nd, generator=g),
            "r1": torch.randn(B, nd, generator=g),
            "gp_eps": torch.rand(3, B, generator=g),
            "single": torch.rand(B, generator=g),
            "pick": torch.rand(B, generator=g),
        }
        return {k: v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device)
                for k, v in draws.items()}

    def _local(self, batch, draws) -> dict[str, torch.Tensor]:
        """This rank's sources, their references (from the whole batch) and draws."""
        x_all, y_all, idx_all = batch
        lo = self.dist.rank * self.local_batch
        sl = slice(lo, lo + self.local_batch)
        ref = draws["perm"][sl]
        yr = self._single_edits(y_all[sl], y_all[ref], draws["single"][sl], draws["pick"][sl])
        out = dict(x=x_all[sl], y=y_all[sl], index=idx_all[sl], xr=x_all[ref], yr=yr,
                   ref_index=idx_all[ref],
                   r1=draws["r1"][sl], alpha=draws["alpha"][sl], gp_eps=draws["gp_eps"][:, sl])
        out["noise"] = self.memory.lookup(out["ref_index"]) if self.memory.enabled else draws["noise"][sl]
        return out

    def _single_edits(self, y: torch.Tensor, yr: torch.Tensor, single: torch.Tensor,
                      pick: torch.Tensor) -> torch.Tensor:
        """The targets: the reference's labels, or for a share ``single_edits`` of the
        samples (draw ``single`` below it) the source's labels with one attribute taken from
        the reference (chosen by ``pick`` among those that differ; conflict rules applied),
        as single-attribute edits are used at inference."""
        share = self.config.single_edits
        if not share:
            return yr
        names = self.model_config.attributes
        y_c, out, pick = y.cpu(), yr.cpu().clone(), pick.cpu()  # one transfer, not one a row
        for k in (single.cpu() < share).nonzero().flatten().tolist():
            differ = (y_c[k] != out[k]).nonzero().flatten()
            if differ.numel():
                j = int(differ[min(int(pick[k] * differ.numel()), differ.numel() - 1)])
                out[k] = apply_edits(y_c[k:k + 1], names, {names[j]: int(out[k, j])})[0]
        return out.to(yr)

    def _refine(self):
        if not self.memory.enabled:
            return None
        B = self.config.batch

        def refine(r0, target, d, mapping):
            return self.memory.refine(r0, target, d, mapping, denominator=B * target[0].numel())
        return refine

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_mean(t, self.dist)

    # ----- one step ----------------------------------------------------------------------
    def _d_step(self, sub: int) -> dict[str, torch.Tensor]:
        p = self._local(self._next_batch(), self._draws(sub))
        m = self.model
        with self._autocast():
            fakes, _ = make_fakes(m.generator, m.encoder, m.mapping, p["x"], p["y"], p["xr"], p["yr"],
                                  p["noise"], p["alpha"], self._refine())
            loss, terms = self.d_objective(p["x"], p["y"], fakes, p["gp_eps"],
                                           gp_scale=self.scaler_d.get_scale())
        self._update_d(loss)
        return terms

    def _update_d(self, loss: torch.Tensor) -> None:
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()

    def _d_attr_step(self) -> dict[str, torch.Tensor]:
        """One warm-up update of D on BCE(D_cls(X_s), y_s) alone."""
        p = self._local(self._next_batch(), self._draws(0))
        with self._autocast():
            loss, terms = self.d_objective(p["x"], p["y"], ())
        self._update_d(loss)
        return terms

    def warm_up(self) -> dict[str, float]:
        """Run the remaining ``d_attr_warmup`` updates (before the first generator step);
        logs their mean terms to metrics.jsonl with step 0 every ``log_every`` updates and
        at the end."""
        todo = self.config.d_attr_warmup - self.warmup_done if self.step == 0 else 0
        if todo <= 0:
            return {}
        bar = None
        if self.progress and self.is_main:
            from tqdm import tqdm

            bar = tqdm(total=todo, desc="D attribute warm-up", unit="step", dynamic_ncols=True)
        try:
            every = self.config.log_every
            for i in range(todo):
                self._accumulate(self._d_attr_step())
                self.warmup_done += 1
                if every and self.warmup_done % every == 0 and i < todo - 1:
                    self.log()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return self.log()

    def _g_step(self, sub: int) -> dict[str, torch.Tensor]:
        p = self._local(self._next_batch(), self._draws(sub))
        D = self.model.discriminator
        D.requires_grad_(False)
        try:
            with self._autocast():
                loss, terms, r = self.g_objective(
                    p["x"], p["y"], p["xr"], p["yr"], p["noise"], p["r1"], p["alpha"],
                    critic=D, refine=self._refine(), reduce=self._reduce,
                    x_true=self._true_edits(p["index"], p["yr"]))
            self.opt_g.zero_grad(set_to_none=True)
            self.scaler_g.scale(loss).backward()
            self.scaler_g.step(self.opt_g)
            self.scaler_g.update()
        finally:
            D.requires_grad_(True)
        if self.memory.enabled:
            self.memory.write(all_gather_cat(p["ref_index"], self.dist),
                              all_gather_cat(r.to(self.dtype), self.dist))
        return terms

    def _true_edits(self, index: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Each source rendered with its target labels, for the paired loss (else None)."""
        if not (self.config.weights.paired or self.config.weights.paired_edit):
            return None
        images = [self.dataset.render_labels(int(i), t) for i, t in zip(index.tolist(), target.cpu())]
        return torch.stack(images).to(self.device, self.dtype)

    def ema_decay(self) -> float:
        """The EMA decay at this step: min(ema, (1 + step) / (10 + step)), so that early
        weights are not dominated by the initial ones (0.999^750 is still 0.47)."""
        return min(self.config.ema, (1 + self.step) / (10 + self.step))

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is not None:
            torch._foreach_lerp_(self.ema_params, [p.detach() for p in self.gen_params],
                                 1.0 - self.ema_decay())

    def train_step(self) -> dict[str, torch.Tensor]:
        """n_d discriminator updates, one generator update, the EMA update. Returns the
        generator terms and the last discriminator terms (detached tensors)."""
        terms: dict[str, torch.Tensor] = {}
        for sub in range(self.config.n_d):
            terms.update(self._d_step(sub))
        terms.update(self._g_step(self.config.n_d))
        self._update_ema()
        self.step += 1
        return terms

    # ----- the loop ----------------------------------------------------------------------
    def _out_of_time(self, deadline: float | None) -> bool:
        """Whether the wall-clock ``deadline`` passed on any rank (all ranks agree)."""
        if deadline is None:
            return False
        late = time.monotonic() > deadline
        if not self.dist.enabled:
            return late
        return bool(self._reduce(torch.tensor(float(late), device=self.device)).item() > 0)

    def train(self, steps: int | None = None, time_limit: float | None = None) -> dict[str, float]:
        """Train until ``steps`` generator steps are done (default config.steps) or
        ``time_limit`` seconds have passed, with logs, samples and checkpoints at their
        intervals and a final checkpoint (so a time-limited run resumes where it stopped)."""
        cfg = self.config
        deadline = None if time_limit is None else time.monotonic() + time_limit
        target = cfg.steps if steps is None else steps
        bar = None
        if self.progress and self.is_main:
            from tqdm import tqdm

            bar = tqdm(total=target, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        last: dict[str, float] = {}
        self._log_t0, self._log_step0 = time.perf_counter(), self.step
        saved_at = None
        self.warm_up()
        try:
            while self.step < target and not self._out_of_time(deadline):
                terms = self.train_step()
                self._accumulate(terms)
                if bar is not None:
                    bar.update(1)
                if cfg.log_every and self.step % cfg.log_every == 0:
                    last = self.log()
                    if bar is not None:
                        bar.set_postfix({k.split("/")[1]: f"{last[k]:.3g}" for k in
                                         ("d/adv", "g/adv", "g/rec") if k in last})
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.save_samples()
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save()
                    saved_at = self.step
        finally:
            if bar is not None:
                bar.close()
        if self._acc_n:
            last = self.log()
        if self.out_dir is not None and saved_at != self.step:
            self.save()
        return last

    def _accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            v = v.detach().float()
            self._acc[k] = self._acc[k] + v if k in self._acc else v
        self._acc_n += 1

    def log(self) -> dict[str, float]:
        """Mean of the terms since the last log (over all ranks), appended to metrics.jsonl."""
        if not self._acc_n:
            return {}
        keys = sorted(self._acc)
        values = self._reduce(torch.stack([self._acc[k] for k in keys]) / self._acc_n).tolist()
        now = time.perf_counter()
        dt = now - self._log_t0
        steps = self.step - self._log_step0
        record: dict[str, Any] = {"step": self.step, "epoch": round(self.epoch, 4),
                                  "images": self.batches * self.config.batch}
        record.update({k: v for k, v in zip(keys, values)})
        if steps:
            record["sec_per_step"] = dt / steps
            record["images_per_sec"] = steps * (self.config.n_d + 1) * self.config.batch / max(dt, 1e-9)
        self._acc, self._acc_n = {}, 0
        self._log_t0, self._log_step0 = now, self.step
        if self.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.out_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
        return record

    # ----- samples ---------------------------------------------------------------------
    def inference_model(self) -> BridgeGAN:
        """The EMA model (raw D) when EMA is on, else the raw model."""
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def sample_rows(self) -> list[torch.Tensor]:
        """Rows of the sample grid: sources, reconstructions, one label edit per chosen
        attribute (flipped, with the conflict rules), references, reference edits."""
        cfg, mc = self.config, self.model_config
        n = min(max(cfg.n_samples, 1), len(self.sample_set))
        items = [self.sample_set[i] for i in range(n)]
        x = torch.stack([it[0] for it in items]).to(self.device, self.dtype)
        y = torch.stack([torch.as_tensor(it[1]) for it in items]).to(self.device, self.dtype)
        g = generator(cfg.seed, STREAM_SAMPLES)
        noise = torch.randn(n, mc.noise_dim, generator=g).to(self.device, self.dtype)
        model = self.inference_model()
        rows = [x, model.reconstruct(x, noise=noise)]
        k = min(cfg.sample_edits, mc.n_attrs)
        chosen = sorted({round(i * (mc.n_attrs - 1) / max(k - 1, 1)) for i in range(k)}) if k else []
        for a in chosen:
            name = mc.attributes[a]
            target = y.clone()
            for value in (0.0, 1.0):
                rows_to_set = y[:, a] != value
                if rows_to_set.any():
                    target[rows_to_set] = apply_edits(y[rows_to_set], mc.attributes, {name: value})
            rows.append(model.translate(x, y, target, noise=noise, strength=1.0))
        if n > 1:
            refs, yr = x.roll(1, 0), y.roll(1, 0)
            rows += [refs, model.translate_reference(x, refs, y, yr, strength=1.0)]
        return rows

    def save_samples(self, path: str | os.PathLike | None = None) -> Path | None:
        if not self.is_main or (path is None and self.out_dir is None):
            return None
        from .data import save_grid

        path = Path(path) if path is not None else self.out_dir / "samples" / f"step-{self.step:08d}.png"
        rows = self.sample_rows()
        save_grid(torch.cat(rows).float().clamp(-1, 1).cpu(), path, nrow=rows[0].shape[0])
        return path

    # ----- checkpoints -----------------------------------------------------------------
    def state_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        for k, v in self.model.state_dict().items():
            tensors[f"raw.{k}"] = v.detach().cpu().contiguous()
        if self.ema is not None:
            for name in ("generator", "encoder", "mapping"):
                for k, v in getattr(self.ema, name).state_dict().items():
                    tensors[f"ema.{name}.{k}"] = v.detach().cpu().contiguous()
        t_g, meta_g = flatten_optimizer(self.opt_g, "opt_g")
        t_d, meta_d = flatten_optimizer(self.opt_d, "opt_d")
        tensors.update(t_g)
        tensors.update(t_d)
        tensors.update(self.memory.state_tensors())
        t_rng, meta_rng = capture_rng()
        tensors.update(t_rng)
        meta = {
            "format": STATE_FORMAT, "step": self.step, "batches": self.batches,
            "warmup_done": self.warmup_done,
            "epoch": self.epoch, "batches_per_epoch": self.sampler.batches_per_epoch,
            "dataset_size": len(self.dataset), "world_size": self.dist.world_size,
            "train_config": self.config.to_dict(), "opt_g": meta_g, "opt_d": meta_d,
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "rng": meta_rng,
        }
        return tensors, meta

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write a checkpoint folder (rank 0 only); default out_dir/checkpoints/step-NNNNNNNN.

        Older numbered checkpoints beyond ``keep_checkpoints`` are removed.
        """
        if not self.is_main:
            return None
        if path is None:
            if self.out_dir is None:
                raise ValueError("no checkpoint path given and the trainer has no out_dir")
            path = self.out_dir / "checkpoints" / f"step-{self.step:08d}"
        tensors, meta = self.state_tensors()
        extra = {
            STATE_TENSORS: lambda p: save_file(tensors, str(p), metadata={"format": STATE_FORMAT}),
            STATE_JSON: lambda p: p.write_text(json.dumps(meta, indent=1) + "\n"),
        }
        path = save_checkpoint(path, self.inference_model(), dtype=torch.float32, extra=extra)
        if self.out_dir is not None and path.parent == self.out_dir / "checkpoints":
            self._prune_checkpoints()
        return path

    def _prune_checkpoints(self) -> None:
        keep = self.config.keep_checkpoints
        if not keep:
            return
        root = self.out_dir / "checkpoints"
        found = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _CKPT_RE.match(p.name)))
        for _, p in found[:-keep]:
            shutil.rmtree(p, ignore_errors=True)

    def init_weights(self, path: str | os.PathLike) -> None:
        """Start from the weights of checkpoint folder ``path`` (its model.safetensors: G/E/M,
        the EMA ones for a trained checkpoint, and D), raw and EMA alike; the optimisers,
        the noise memory and the step start afresh (fine-tuning, or continuing a shipped
        model whose training state is gone)."""
        source = load_checkpoint(path, expected_config=self.model_config)
        self.model.load_state_dict(source.state_dict())
        if self.ema is not None:
            for name in ("generator", "encoder", "mapping"):
                getattr(self.ema, name).load_state_dict(getattr(self.model, name).state_dict())

    def load(self, path: str | os.PathLike, restore_rng_states: bool = True) -> None:
        """Restore a checkpoint written by ``save`` so that training continues exactly;
        metrics.jsonl loses the records past its step (logged again from there)."""
        path = Path(path)
        config = read_config(path)
        diffs = self.model_config.differences(config)
        if diffs:
            raise CheckpointError(f"checkpoint {path} has another model configuration: " + "; ".join(diffs))
        meta = read_train_state(path)
        if meta["dataset_size"] != len(self.dataset):
            raise CheckpointError(
                f"checkpoint {path} was trained on a dataset of {meta['dataset_size']} items, this "
                f"dataset has {len(self.dataset)}: the data order and noise memory would not match")
        saved = meta["train_config"]
        for name in ("batch", "seed", "n_d", "noise_memory"):
            if saved.get(name) != getattr(self.config, name):
                warnings.warn(f"resuming with {name}={getattr(self.config, name)!r} but the "
                              f"checkpoint used {saved.get(name)!r}: the run will not continue "
                              f"exactly as it would have", stacklevel=2)
        tensors = read_tensors(path / STATE_TENSORS)

        def sub(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        load_state(self.model, sub("raw."), str(path / STATE_TENSORS))
        if self.ema is not None:
            ema = sub("ema.")
            if ema:
                for name in ("generator", "encoder", "mapping"):
                    load_state(getattr(self.ema, name), sub(f"ema.{name}."), str(path / STATE_TENSORS))
            else:
                warnings.warn("the checkpoint has no EMA weights; EMA restarts from the raw weights")
                with torch.no_grad():
                    for e, p in zip(self.ema_params, self.gen_params):
                        e.copy_(p)
        source = str(path / STATE_TENSORS)
        restore_optimizer(self.opt_g, tensors, meta["opt_g"], "opt_g", source)
        restore_optimizer(self.opt_d, tensors, meta["opt_d"], "opt_d", source)
        for opt in (self.opt_g, self.opt_d):  # allow a changed learning rate on resume
            for group in opt.param_groups:
                group["lr"] = self.config.lr
                group["betas"] = (self.config.beta1, self.config.beta2)
        if not self.memory.load_state_tensors(tensors):
            warnings.warn("the checkpoint has no noise memory; starting from a fresh table")
        if self.scaler_g.is_enabled() and meta.get("scaler_g"):
            self.scaler_g.load_state_dict(meta["scaler_g"])
        if self.scaler_d.is_enabled() and meta.get("scaler_d"):
            self.scaler_d.load_state_dict(meta["scaler_d"])
        self.step = int(meta["step"])
        self.batches = int(meta["batches"])
        self.warmup_done = int(meta.get("warmup_done", 0))
        self._loader_iter = None
        if restore_rng_states:
            restore_rng(tensors, meta.get("rng", {}))
        if self.is_main and self.out_dir is not None:
            drop_metrics_after(self.out_dir, self.step)
