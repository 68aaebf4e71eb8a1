"""Training state as safetensors tensors + JSON scalars (no pickles anywhere).

An optimiser's ``state_dict()`` is split into tensors named ``PREFIX.state.<param
index>.<key>`` and a JSON-able dict holding the param groups and any non-tensor state
values; ``restore_optimizer`` rebuilds the state dict and loads it. Random number
generator states: torch CPU (uint8 tensor), CUDA (uint8 tensor per device), NumPy's
legacy global MT19937 (key array as a tensor, the rest in JSON) and Python's ``random``
(JSON).
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from .checkpoint import CheckpointError


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
    """Load the state written by ``flatten_optimizer``; a CheckpointError naming ``source``
    when tensors are missing or do not fit the parameters (found now, not at the first
    step)."""
    params = [p for group in opt.param_groups for p in group["params"]]
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
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
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
