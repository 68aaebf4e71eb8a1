"""Checkpoints: a folder holding ``config.json`` and ``model.safetensors`` (no pickles).

Writes are atomic at the folder level (``files.write_folder_atomic``): everything is
written and fsynced into a sibling temporary folder which then replaces the target, so a
killed run leaves either the old checkpoint or the new one, never a mix; a target holding
anything but checkpoint files is refused, not replaced. Loading checks the config and
every tensor name, shape and value (NaN or Inf weights are refused), and names each
mismatch.
"""
from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..files import read_small_text, write_folder_atomic
from ..numerics import dtype_name
from .config import BridgeGANConfig
from .model import BridgeGAN
from .records import listed

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "bridgegan-checkpoint/1"
SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "default"  # the packaged model
STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"  # train_state.py
EVAL_FILE, TRAINING_FILE = "eval.json", "training.json"  # a shipped model's (shipping.ship)
# every file a checkpoint folder may hold. A save replaces an earlier checkpoint whatever
# subset of these it held, and refuses a folder holding anything else.
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, STATE_TENSORS, STATE_JSON, EVAL_FILE,
                    TRAINING_FILE)


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the expected model."""


def write_tensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                  metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file``, its errors (a full disk, a quota: a SafetensorError,
    which no caller catching OSError would see) raised as an OSError of the system's error
    number where the message gives one ("os error 28"; the folder write names the file)."""
    try:
        save_file(dict(tensors), str(path), metadata=metadata)
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        raise OSError(int(code.group(1)) if code else errno.EIO, str(exc)) from None


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module,
                    dtype: torch.dtype | None = None,
                    extra: Mapping[str, Callable[[Path], None]] | None = None,
                    replaces: Iterable[str] = ()) -> Path:
    """Save ``model`` (a BridgeGAN) as config.json + model.safetensors, atomically.

    ``dtype`` casts floating tensors (e.g. torch.float16 for a small shipped file);
    ``extra`` adds more files to the same folder (training state, eval numbers). An
    existing ``path`` is replaced only when it holds nothing but ``CHECKPOINT_FILES``,
    ``extra``'s files and ``replaces`` (other files an earlier save of this kind gained,
    e.g. a shipped model's card; ``files.check_replaceable``).
    """
    config: BridgeGANConfig = model.config
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    writers = {
        CONFIG_FILE: lambda p: p.write_text(config.to_json() + "\n"),
        WEIGHTS_FILE: lambda p: write_tensors(tensors, p, {"format": FORMAT}),
    }
    writers.update(extra or {})
    return write_folder_atomic(path, writers, replaces=(*CHECKPOINT_FILES, *replaces))


def read_config(path: str | os.PathLike) -> BridgeGANConfig:
    """The configuration stored in checkpoint folder ``path``."""
    path = Path(path)
    cfg_path = path / CONFIG_FILE
    if not path.is_dir() or not cfg_path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: expected a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    try:
        return BridgeGANConfig.from_json(read_small_text(cfg_path))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{cfg_path} is not a valid BridgeGAN config: {exc}") from None


def _safetensors(file: str | os.PathLike, read):
    """``read(f)`` of the opened safetensors file, with a clear error for a missing,
    corrupt or truncated one."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"missing checkpoint file {file}")
    try:
        with safe_open(str(file), framework="pt") as f:
            return read(f)
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{file} is corrupt or truncated: {exc}") from None


def read_tensors(file: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file."""
    return _safetensors(file, lambda f: {k: f.get_tensor(k) for k in f.keys()})


def read_shapes(file: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from a safetensors file's header (no data read)."""
    return _safetensors(file, lambda f: {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})


def nonfinite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point ``tensors`` that hold NaN or Inf, in their order
    (one host sync for all: a device tensor's check would otherwise wait once each)."""
    names = [k for k, v in tensors.items() if v.is_floating_point()]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(tensors[k]).all() for k in names]).tolist()
    return [k for k, ok in zip(names, finite) if not ok]


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # weights stored


def _mismatches(expected: Mapping[str, tuple], stored: Mapping[str, tuple]) -> list[str]:
    """What in ``stored`` (name -> shape) does not match ``expected``: missing, unexpected
    and mis-shaped names, as message parts (empty: it matches)."""
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    shapes = sorted(f"{k}: checkpoint {stored[k]} vs model {expected[k]}"
                    for k in set(expected) & set(stored) if stored[k] != expected[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {listed(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {listed(shapes)}")
    return problems


def load_state(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``model`` after checking names, shapes, dtypes (a floating
    tensor stored in one of FLOAT_DTYPES, any other in the model's dtype) and values
    (finite once cast to the model's dtype: 1e300 in float64 is Inf in float32); name
    every mismatch."""
    expected = model.state_dict()
    problems = _mismatches({k: tuple(v.shape) for k, v in expected.items()},
                           {k: tuple(v.shape) for k, v in tensors.items()})
    dtypes = sorted(
        f"{k}: {dtype_name(tensors[k].dtype)}" for k in set(expected) & set(tensors)
        if (tensors[k].dtype not in FLOAT_DTYPES if expected[k].is_floating_point()
            else tensors[k].dtype != expected[k].dtype))
    if dtypes:
        accepted = ", ".join(dtype_name(d) for d in FLOAT_DTYPES)
        problems.append(f"{len(dtypes)} tensor(s) of another dtype: {listed(dtypes)} (accepted "
                        f"for weights: {accepted})")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    cast = {k: tensors[k].to(v.dtype) for k, v in expected.items()}
    damaged = sorted(nonfinite(cast))
    if damaged:
        raise CheckpointError(f"{source} holds NaN or Inf values in {len(damaged)} tensor(s): "
                              f"{listed(damaged)}; weights must be finite, in the model's "
                              f"dtype too (a diverged run or a damaged file: use an earlier "
                              f"checkpoint)")
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(cast[k])


def load_checkpoint(path: str | os.PathLike, expected_config: BridgeGANConfig | None = None,
                    map_location: str | torch.device = "cpu"):
    """Build a BridgeGAN from checkpoint folder ``path`` (float32, eval mode).

    With ``expected_config`` the stored config must equal it; each differing field is named.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"a checkpoint is a folder path (str or os.PathLike), got "
                         f"{type(path).__name__}")
    if expected_config is not None and not isinstance(expected_config, BridgeGANConfig):
        raise ValueError(f"expected_config must be a BridgeGANConfig (BridgeGANConfig."
                         f"from_json(text) reads a config.json), got "
                         f"{type(expected_config).__name__}")
    path = Path(path)
    config = read_config(path)
    if expected_config is not None:
        diffs = expected_config.differences(config)
        if diffs:
            raise CheckpointError(
                f"checkpoint {path} has another configuration than expected: " + "; ".join(diffs)
            )
    weights = path / WEIGHTS_FILE
    with torch.device("meta"):  # the shapes, nothing allocated: a mismatch refused first
        skeleton = BridgeGAN(config)
    problems = _mismatches({k: tuple(v.shape) for k, v in skeleton.state_dict().items()},
                           read_shapes(weights))
    if problems:
        raise CheckpointError(f"{weights} does not match the model: " + "; ".join(problems))
    model = BridgeGAN(config)
    load_state(model, read_tensors(weights), str(weights))
    return model.to(map_location).eval()
