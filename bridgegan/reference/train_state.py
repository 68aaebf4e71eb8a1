"""The training checkpoint and resume format (the run folder that holds the checkpoints:
``run_folder``). A training checkpoint folder (written atomically, see
files.write_folder_atomic; no pickles):

    config.json               the model configuration
    model.safetensors         the weights for inference (float32): EMA G/E/M with the raw D
                              when EMA is on (TrainConfig.ema > 0), otherwise the raw
                              networks; loadable with checkpoint.load_checkpoint
    train_state.safetensors   raw.* (all raw networks), ema.* (EMA G/E/M), opt_g.* and
                              opt_d.* (Adam state), noise_memory, rng.* (torch CPU / CUDA,
                              NumPy key array)
    train_state.json          step, data position, train config, optimiser param groups,
                              GradScaler states, NumPy / Python RNG scalars

With the data order a pure function of (seed, global batch) (train_data.py) and every
per-step draw seeded by (seed, step, sub-step), this is all a resumed run needs to continue
bit-identically. An optimiser's ``state_dict()`` is split into tensors named
``PREFIX.state.<param index>.<key>`` and a JSON-able dict holding the param groups and any
non-tensor state values. Random number generator states: torch CPU (uint8 tensor), CUDA
(uint8 tensor per device), NumPy's legacy global MT19937 (key array as a tensor, the rest
in JSON) and Python's ``random`` (JSON).
"""
from __future__ import annotations

import json
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..files import JSON_LIMIT, read_small_text
from .checkpoint import (STATE_JSON, STATE_TENSORS, CheckpointError,
                         load_checkpoint, load_state, nonfinite, read_config, read_tensors,
                         save_checkpoint, write_tensors)
from .model import BridgeGAN
from .noise_memory import NoiseMemory
from .records import listed
from .train_config import TrainConfig
from .widen import widen_into

STATE_FORMAT = "bridgegan-train-state/1"
STATE_JSON_LIMIT = 16 * JSON_LIMIT  # train_state.json: the optimisers' and RNGs' metadata
_STATE_KEYS = ("step", "batches", "dataset_size", "train_config", "opt_g", "opt_d")
# an optimiser's entries in train_state.json (flatten_optimizer) and what each must be
_OPT_KEYS = {
    "param_groups": lambda v: isinstance(v, list) and all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in v),
    "scalars": lambda v: isinstance(v, dict) and all(
        str(k).isdigit() and isinstance(s, dict) for k, s in v.items()),
    "tensor_keys": lambda v: isinstance(v, list) and all(
        isinstance(t, str) and re.fullmatch(r"state\.\d+\.\w+", t) for t in v)}
_EMA_NETS = ("generator", "encoder", "mapping")


def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    meta = {"param_groups": sd["param_groups"], "scalars": scalars,
            "tensor_keys": sorted(k[len(prefix) + 1:] for k in tensors)}
    return tensors, meta


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      meta: dict[str, Any], prefix: str, source: str = "training state") -> None:
    """Load the per-parameter state written by ``flatten_optimizer`` under ``opt``'s own
    hyperparameters (its param groups: the file's could turn on ``maximize`` or a weight
    decay); a CheckpointError naming ``source`` when tensors are missing, not finite or do
    not fit the parameters, or the groups do not match (found now, not at the first step)."""
    params = [p for group in opt.param_groups for p in group["params"]]
    groups = opt.state_dict()["param_groups"]
    saved = [len(g.get("params", ())) for g in meta["param_groups"]]
    mine = [len(g["params"]) for g in groups]
    if saved != mine:
        raise CheckpointError(f"{source}: the {prefix} optimiser has param groups of {saved} "
                              f"parameters, the model's {mine}: the state of another model")
    state: dict[int, dict[str, Any]] = {}
    for key in meta["tensor_keys"]:
        name = f"{prefix}.{key}"
        if name not in tensors:
            raise CheckpointError(f"{source} lacks optimiser tensor {name}")
        _, idx, field = key.split(".", 2)
        value, idx = tensors[name], int(idx)
        if idx >= len(params) or (value.dim() and value.shape != params[idx].shape):
            want = tuple(params[idx].shape) if idx < len(params) else "no parameter"
            raise CheckpointError(f"{source}: optimiser tensor {name} has shape "
                                  f"{tuple(value.shape)}, the model's parameter {want}: the "
                                  f"state of another model")
        state.setdefault(idx, {})[field] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    damaged = nonfinite({f"{prefix}.state.{i}.{k}": v for i, fields in state.items()
                         for k, v in fields.items() if isinstance(v, torch.Tensor)})
    if damaged:
        raise CheckpointError(f"{source} holds NaN or Inf values in optimiser tensor(s) "
                              f"{listed(damaged)}: a damaged training state")
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{source}: the {prefix} optimiser state does not fit the "
                              f"model: {exc}") from None


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The global RNG states of torch (CPU, CUDA), NumPy and Python ``random``."""
    tensors = {"rng.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    py = random.getstate()
    meta = {"numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)},
            "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    if "rng.torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in tensors.items() if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        for i, s in cuda[:torch.cuda.device_count()]:
            torch.cuda.set_rng_state(s, i)
    if "numpy" in meta and "rng.numpy_keys" in tensors:
        n = meta["numpy"]
        keys = tensors["rng.numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "python" in meta:
        version, state, gauss = meta["python"]
        random.setstate((version, tuple(state), gauss))


def read_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """The checked ``train_state.json`` of checkpoint folder ``path``: a CheckpointError
    naming the file and what is wrong (not a training checkpoint, corrupt JSON, another
    format, missing entries) otherwise."""
    json_path = Path(path) / STATE_JSON
    if not json_path.is_file():
        raise CheckpointError(f"{path} holds no training state ({STATE_JSON}); it is an "
                              f"inference checkpoint (or no checkpoint) and cannot be resumed")
    try:
        meta = json.loads(read_small_text(json_path, STATE_JSON_LIMIT))
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{json_path} is corrupt (truncated or not JSON): {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{json_path}: unknown format {found!r}, expected {STATE_FORMAT!r}")
    missing = [k for k in _STATE_KEYS if k not in meta]
    missing += [f"{k}.{f}" for k in ("opt_g", "opt_d") if isinstance(meta.get(k), dict)
                for f in _OPT_KEYS if not _OPT_KEYS[f](meta[k].get(f))]
    missing += [k for k in ("opt_g", "opt_d", "train_config", "rng", "scaler_g", "scaler_d")
                if k in meta and not isinstance(meta[k], dict)]
    missing += [k for k in ("step", "batches", "warmup_done", "log_n") if k in meta and not (
        type(meta[k]) is int and meta[k] >= 0)]  # counts; warmup_done, log_n: not in older ones
    if missing:
        raise CheckpointError(f"{json_path} lacks or has damaged entries {missing}: a damaged "
                              f"training state; resume from another checkpoint")
    return meta


# ----- a run's state -----------------------------------------------------------------
class Progress(NamedTuple):
    """How far a run got: generator steps, global batches consumed (where the data order
    resumes) and discriminator attribute warm-up updates."""

    step: int
    batches: int
    warmup_done: int


@dataclass(frozen=True)
class TrainState:
    """A view of what a training checkpoint holds: the trainer's own networks, optimisers,
    noise memory and gradient scalers (``restore`` loads into them in place), the facts a
    resume is checked against, and the progress at the time the view was taken."""

    model: BridgeGAN  # raw G, E, M, D
    ema: BridgeGAN | None  # EMA G, E, M sharing model's D; None when EMA is off
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    memory: NoiseMemory
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler
    config: TrainConfig
    dataset_size: int
    world_size: int
    batches_per_epoch: int
    progress: Progress
    # the loss terms summed since the last metrics.jsonl record ("terms": name -> tensor,
    # "n": how many), so that a resumed run's next record averages the same steps as an
    # uninterrupted run's; ``restore`` fills it in place
    log_acc: dict[str, Any] | None = None
    # the sha256 of the feature loss's classifier weights ("" without that loss): a resume
    # warns where the recorded folder now holds another classifier
    feature_sha256: str = ""

    @property
    def inference_model(self) -> BridgeGAN:
        """What model.safetensors holds: the EMA model (raw D) when EMA is on, else the raw
        model."""
        return self.ema if self.ema is not None else self.model

    def network_tensors(self) -> dict[str, torch.Tensor]:
        """The raw model's tensors ("raw.*") and the EMA networks' ("ema.<net>.*"), where
        they live."""
        tensors = {f"raw.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            for name in _EMA_NETS:
                tensors.update({f"ema.{name}.{k}": v
                                for k, v in getattr(self.ema, name).state_dict().items()})
        return tensors

    def tensors_and_meta(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The contents of train_state.safetensors and train_state.json."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.network_tensors().items()}
        t_g, meta_g = flatten_optimizer(self.opt_g, "opt_g")
        t_d, meta_d = flatten_optimizer(self.opt_d, "opt_d")
        tensors.update(t_g)
        tensors.update(t_d)
        tensors.update(self.memory.state_tensors())
        t_rng, meta_rng = capture_rng()
        tensors.update(t_rng)
        log_acc = self.log_acc or {}
        for k, v in (log_acc.get("terms") or {}).items():
            tensors[f"log.{k}"] = v.detach().float().cpu().clone()
        step, batches, warmup_done = self.progress
        meta = {
            "format": STATE_FORMAT, "step": step, "batches": batches,
            "warmup_done": warmup_done,
            "epoch": batches / self.batches_per_epoch, "batches_per_epoch": self.batches_per_epoch,
            "dataset_size": self.dataset_size, "world_size": self.world_size,
            "train_config": self.config.to_dict(), "opt_g": meta_g, "opt_d": meta_d,
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "rng": meta_rng, "log_n": int(log_acc.get("n", 0)),
            "feature_classifier_sha256": self.feature_sha256,
        }
        return tensors, meta

    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint folder ``path`` (atomically); returns it."""
        tensors, meta = self.tensors_and_meta()
        extra = {
            STATE_TENSORS: lambda p: write_tensors(tensors, p, {"format": STATE_FORMAT}),
            STATE_JSON: lambda p: p.write_text(json.dumps(meta, indent=1) + "\n"),
        }
        try:
            return save_checkpoint(path, self.inference_model, dtype=torch.float32, extra=extra)
        except OSError as exc:  # a full disk, a quota (the error names the file)
            raise OSError(exc.errno, f"{exc.strerror or exc} (the checkpoint {path} was not "
                                     f"written; earlier checkpoints are intact)") from None

    def load_weights(self, path: str | os.PathLike, widen: bool = False) -> None:
        """Take the weights of checkpoint folder ``path`` (its model.safetensors) into the
        raw and EMA networks alike, of a narrower model with ``widen``; optimisers and
        noise memory are left as they are."""
        if widen:
            widen_into(self.model, load_checkpoint(path))
        else:
            self.model.load_state_dict(load_checkpoint(path, self.model.config).state_dict())
        if self.ema is not None:
            for name in _EMA_NETS:
                getattr(self.ema, name).load_state_dict(getattr(self.model, name).state_dict())

    def restore(self, path: str | os.PathLike) -> Progress:
        """Load a checkpoint written by ``save`` into these objects, checked against this
        run (model configuration, dataset size; a warning where the train config changes
        the course); the optimisers' hyperparameters are this run's. Returns its progress.
        Whatever in the files does not fit is a CheckpointError naming the file."""
        path = Path(path)
        diffs = self.model.config.differences(read_config(path))
        if diffs:
            raise CheckpointError(f"checkpoint {path} has another model configuration: " + "; ".join(diffs))
        meta = read_train_state(path)
        if meta["dataset_size"] != self.dataset_size:
            raise CheckpointError(
                f"checkpoint {path} was trained on a dataset of {meta['dataset_size']} items, this "
                f"dataset has {self.dataset_size}: the data order and noise memory would not match")
        saved = meta["train_config"]
        names = ["batch", "seed", "n_d", "noise_memory", "lr_schedule", "ema"]
        if self.config.lr_schedule != "constant":  # the schedule is a function of step / steps
            names.append("steps")
        for name in names:  # a field older checkpoints lack had its default
            if saved.get(name, getattr(TrainConfig, name)) != getattr(self.config, name):
                warnings.warn(f"resuming with {name}={getattr(self.config, name)!r} but the "
                              f"checkpoint used {saved.get(name)!r}: the run will not continue "
                              f"exactly as it would have", stacklevel=3)
        digest = meta.get("feature_classifier_sha256") or ""  # older checkpoints: none
        if digest and self.feature_sha256 and digest != self.feature_sha256:
            warnings.warn(f"the feature classifier {self.config.feature_classifier} is not the "
                          f"one the checkpoint trained with (weights sha256 "
                          f"{self.feature_sha256[:12]}..., the checkpoint's {digest[:12]}...): "
                          f"the run will not continue exactly as it would have", stacklevel=3)
        source = str(path / STATE_TENSORS)
        tensors = read_tensors(path / STATE_TENSORS)
        self._restore_networks(tensors, source)
        restore_optimizer(self.opt_g, tensors, meta["opt_g"], "opt_g", source)
        restore_optimizer(self.opt_d, tensors, meta["opt_d"], "opt_d", source)
        try:
            if not self.memory.load_state_tensors(tensors):
                warnings.warn("the checkpoint has no noise memory; starting from a fresh table")
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
        try:  # entries whose values only these loaders check
            for name, scaler in (("scaler_g", self.scaler_g), ("scaler_d", self.scaler_d)):
                if scaler.is_enabled() and meta.get(name):
                    scaler.load_state_dict(meta[name])
            restore_rng(tensors, meta.get("rng", {}))
        except (TypeError, KeyError, AttributeError, IndexError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path / STATE_JSON}: its scaler or RNG entries are damaged "
                                  f"({type(exc).__name__}: {exc}); resume from another "
                                  f"checkpoint") from None
        if self.log_acc is not None:  # older checkpoints have none: the next record is shorter
            self.log_acc.clear()
            self.log_acc.update(n=int(meta.get("log_n", 0)),
                                terms={k[4:]: v for k, v in tensors.items()
                                       if k.startswith("log.")})
        return Progress(int(meta["step"]), int(meta["batches"]), int(meta.get("warmup_done", 0)))

    def _restore_networks(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """raw.* into the model; ema.* into the EMA networks (from the raw ones when the
        checkpoint has none)."""
        def sub(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        load_state(self.model, sub("raw."), source)
        if self.ema is None:
            return
        if sub("ema."):
            for name in _EMA_NETS:
                load_state(getattr(self.ema, name), sub(f"ema.{name}."), source)
            return
        warnings.warn("the checkpoint has no EMA weights; EMA restarts from the raw weights")
        with torch.no_grad():
            for name in _EMA_NETS:
                for e, p in zip(getattr(self.ema, name).parameters(),
                                getattr(self.model, name).parameters()):
                    e.copy_(p)
