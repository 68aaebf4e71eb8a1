"""The Engine's argument checks, each a checked conversion: bounded numbers (``BOUNDS``),
alphas, sample counts, seeds and the noise they draw, tensors and flags. Each refusal is
a ValueError naming the argument and what is accepted; ``serve`` checks its requests with
the same bounds."""
from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np
import torch

from ..argtypes import SEEDS
from ..numerics import dtype_name, real_value
from ..reference.config import MAX_SCALE
from .io import check_dense
from .options import MAX_SAMPLES

# Largest |value| the engine takes per bounded input. Noise draws are standard normal, so
# 1e4 is far outside anything drawn while keeping the latent codes finite; strength and
# alphas scale a label difference as the config's edit strength does.
BOUNDS = {"noise": 1e4, "strength": MAX_SCALE, "alpha": MAX_SCALE}


def check_bounded(values, what: str, bound: float) -> None:
    """A ValueError unless every value (a number, array or CPU tensor) is finite with
    |value| <= ``bound``; the one form of the engine's bounds, which serve checks too."""
    values = np.asarray(values, dtype=np.float64)
    outside = values[~(np.abs(values) <= bound)]  # NaN is outside too
    if outside.size:
        raise ValueError(f"{what} must be finite and within [-{bound:g}, {bound:g}], "
                         f"got {outside.flat[0]:g}")


def as_number(value, what: str, bound: float) -> float:
    """``value`` as a float, refused unless a real, finite number (not a boolean) within
    [-bound, bound]."""
    dtype = getattr(value, "dtype", None)
    boolean = (isinstance(value, (bool, np.bool_)) or dtype is torch.bool
               or getattr(dtype, "kind", None) == "b")
    x = None if boolean else real_value(value)  # None too for 10**400: no float holds it
    if x is None:
        raise ValueError(f"{what} must be a number, got {value!r}")
    check_bounded(x, what, bound)
    return x


def as_alphas(alphas) -> list[float]:
    """Interpolation weights: a non-empty sequence of numbers, each checked (no set or
    dict: the results follow the alphas' order)."""
    if isinstance(alphas, (set, frozenset, Mapping)):
        raise ValueError(f"alphas must be a list of numbers (1: label-based, 0: reference-"
                         f"based), in the order of the results; got a {type(alphas).__name__}")
    try:
        values = list(alphas)
    except TypeError:
        values = []
    if not values or isinstance(alphas, (str, bytes)):
        raise ValueError(f"alphas must be a non-empty list of numbers (1: label-based, "
                         f"0: reference-based), got {alphas!r}")
    return [as_number(a, "each alpha", BOUNDS["alpha"]) for a in values]


def as_samples(samples, least: int) -> int:
    """A count of noise samples, from ``least`` to MAX_SAMPLES, checked."""
    if (isinstance(samples, bool) or not isinstance(samples, numbers.Integral)
            or not least <= samples <= MAX_SAMPLES):
        raise ValueError(f"samples must be an integer from {least} to {MAX_SAMPLES}, "
                         f"got {samples!r}")
    return int(samples)


def is_seed(seed) -> bool:
    """Whether ``seed`` is one torch.Generator takes: an unsigned 64-bit integer."""
    return (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)
            and 0 <= seed < SEEDS)


def as_seed(seed) -> int | None:
    """None or one seed (no list: a call whose noise is one draw), checked, as an int (a
    numpy integer's sums would wrap or turn float)."""
    if seed is not None and not is_seed(seed):
        raise ValueError(f"seed must be None or an integer in [0, 2**64), got {seed!r}")
    return None if seed is None else int(seed)


def as_seeds(seed, n: int) -> int | list[int] | None:
    """None, a seed, or a list / tuple of ``n`` seeds (one per image), checked."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != n:
            raise ValueError(f"seed: a list of seeds needs one per image ({n}), got {len(seed)}")
        bad = [s for s in seed if not is_seed(s)]
        if bad:
            raise ValueError(f"seed: each seed of a list must be an integer in [0, 2**64), "
                             f"got {bad[0]!r}")
        return [int(s) for s in seed]
    if seed is not None and not is_seed(seed):
        raise ValueError(f"seed must be None or an integer in [0, 2**64) (or a list of one "
                         f"per image), got {seed!r}")
    return None if seed is None else int(seed)


def draw_noise(n: int, dim: int, seed: int | list[int] | None) -> torch.Tensor:
    """(n, dim) N(0, 1) on the CPU from a checked seed (``as_seeds``): from the global
    generator (None), one draw of the whole batch (an integer), or row i alone from
    seed[i] (a list: the row an image translated alone with that seed gets, whatever the
    batch)."""
    if isinstance(seed, list):
        return torch.cat([torch.randn(1, dim, generator=torch.Generator().manual_seed(s))
                          for s in seed]) if seed else torch.empty(0, dim)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(n, dim, generator=gen)


def as_tensor(value, what: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``value`` (a tensor, array or nested list of real numbers) as ``dtype`` on the CPU."""
    if isinstance(value, torch.Tensor):
        check_dense(value, what)
    try:  # numpy keeps a list's precision (float32 would read 1 - 1e-8 as 1) and its complex;
        # a copy: torch takes no array of negative strides (np.flip) and warns on read-only
        t = torch.as_tensor(value if isinstance(value, torch.Tensor) else np.array(value))
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ValueError(f"{what} must be a tensor, array or nested list of numbers, got "
                         f"{type(value).__name__} ({exc})") from None
    if t.is_complex():  # a cast would drop the imaginary parts with only a warning
        raise ValueError(f"{what} must hold real numbers, got {dtype_name(t.dtype)}")
    return t.to(dtype).cpu()


def as_flag(value, what: str, optional: bool = True) -> bool | None:
    """``value`` (a bool, numpy's too, or None where ``optional``), refused otherwise: a
    string such as "no" would be taken as true."""
    if not isinstance(value, (bool, np.bool_)) and not (optional and value is None):
        accepted = "True, False or None" if optional else "True or False"
        raise ValueError(f"{what} must be {accepted}, got {value!r}")
    return None if value is None else bool(value)

