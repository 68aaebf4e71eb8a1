"""The project's shared numerics: design.md's tolerance table, float64 upcast references,
error measures and PSNR.

One place for the numbers, so that the kernels' parity table, the engine's parity, the
evaluation and the tests cannot drift apart. Torch-free at import (tensor methods only),
so that any module can read the table.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    """What a result computed in one dtype must meet against the float64 reference."""

    dtype: str  # the row's name: torch's dtype name, or tf32
    op_rel: float  # single ops: ||out - ref|| / ||ref|| (design.md)
    image_max_abs: float | None = None  # end-to-end images in [-1, 1]: max abs error (design.md)
    image_min_psnr_db: float | None = None  # end-to-end images: PSNR in dB (design.md)
    # Tightened beyond design.md for ops whose outputs stay within |8| (the kernel tests'
    # inputs): max abs error, about two half-ulps at 8 in fp16 and bf16 (half an ulp at 8 is
    # 3.9e-3 in fp16, 3.1e-2 in bf16; float32's 2e-5 leaves room for its sums' rounding).
    # Larger outputs (the GPU parity shapes) are held to op_rel only.
    op_max_abs: float | None = None

    def _require_image_limit(self) -> None:
        if self.image_max_abs is None and self.image_min_psnr_db is None:
            raise ValueError(f"dtype {self.dtype!r} has no end-to-end image limit (design.md "
                             f"gives it an op limit only, op_rel {self.op_rel:g}); images "
                             f"have limits in {', '.join(IMAGE_LIMIT_DTYPES)}")

    @property
    def image_limit(self) -> str:
        """The end-to-end image limit in words; ValueError for a row without one (tf32)."""
        self._require_image_limit()
        if self.image_max_abs is not None:
            return f"max abs <= {self.image_max_abs:g}"
        return f"PSNR >= {self.image_min_psnr_db:g} dB"

    def image_ok(self, max_abs: float, psnr_db: float) -> bool:
        """Whether end-to-end images meet the limit (NaN never does); ValueError for a row
        without one (tf32)."""
        self._require_image_limit()
        if self.image_max_abs is not None:
            return max_abs <= self.image_max_abs
        return psnr_db >= self.image_min_psnr_db


# design.md, "Numerics": keyed by torch's dtype names (tf32: float32 storage, TF32 math).
TOLERANCES = {t.dtype: t for t in (
    Tolerance("float32", op_rel=1e-5, image_max_abs=1e-4, op_max_abs=2e-5),
    Tolerance("tf32", op_rel=5e-4),
    Tolerance("float16", op_rel=2e-3, image_min_psnr_db=40.0, op_max_abs=1e-2),
    Tolerance("bfloat16", op_rel=1e-2, image_min_psnr_db=40.0, op_max_abs=6e-2),
)}
IMAGE_LIMIT_DTYPES = tuple(name for name, t in TOLERANCES.items()  # with an end-to-end image limit
                           if t.image_max_abs is not None or t.image_min_psnr_db is not None)
SHORT_NAMES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # as rows print them
_ALIASES = {short: name for name, short in SHORT_NAMES.items()} | {"half": "float16"}


def dtype_name(dtype) -> str:
    """torch's name of a dtype given as a torch dtype or a name (fp16, half, float16...):
    the one place where the project's dtype spellings are read."""
    name = str(dtype).removeprefix("torch.")
    return _ALIASES.get(name, name)


def dtype_spellings(names) -> list[str]:
    """Every accepted spelling of the dtypes ``names`` (torch's names): each name followed
    by its aliases, as error messages list them."""
    return [s for name in names for s in (name, *(a for a, n in _ALIASES.items() if n == name))]


def tolerance(dtype) -> Tolerance:
    """The tolerance row of ``dtype`` (a torch dtype, or a name: float32 / fp32, float16 /
    fp16, bfloat16 / bf16, tf32)."""
    name = dtype_name(dtype)
    if name not in TOLERANCES:
        raise ValueError(f"no tolerance for dtype {name!r}; known: {', '.join(TOLERANCES)}")
    return TOLERANCES[name]


def real_value(value) -> float | None:
    """``value`` as a float where it is one real number (an int, float or bool, Python's or
    numpy's, a Decimal or Fraction, a one-element real array or tensor); None otherwise:
    strings, complex numbers (``float`` would drop an imaginary part with a warning at
    most), tensors that hold no value (meta)."""
    dtype = getattr(value, "dtype", None)
    if (isinstance(value, (str, bytes, complex)) or getattr(dtype, "kind", None) == "c"
            or getattr(dtype, "is_complex", False) is True):  # numpy's dtypes, torch's
        return None
    try:
        if hasattr(value, "item") and not isinstance(value, float):
            # numpy's and torch's one value (numpy deprecates float() of an array with
            # dimensions); a string array's is no number
            value = value.item()
        return None if isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError, OverflowError, RuntimeError, NotImplementedError):
        return None


# ----------------------------------------------------------------------------- float64 references


def upcast(value):
    """``value`` with every floating tensor in float64 (tensors, or tuples / lists / dicts
    of them; anything else unchanged)."""
    if hasattr(value, "is_floating_point"):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: upcast(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(upcast(v) for v in value)
    return value


def float64_call(fn, *args, **kwargs):
    """``fn`` on float64 copies of its floating tensor arguments: the reference result."""
    return fn(*upcast(args), **upcast(kwargs))


def float64_model(module):
    """A float64 copy of a module (weights and buffers upcast); the original is untouched."""
    return copy.deepcopy(module).double()


# ----------------------------------------------------------------------------- error measures


ERROR_SLICE = 1 << 22  # elements compared at once by ``errors``


def errors(out, ref) -> tuple[float, float]:
    """(max abs error, ||out - ref|| / ||ref||) in float64 over the places where ``ref`` is
    finite (||out - ref|| itself where ``ref`` is all zero); (inf, inf) when ``out`` is not
    finite where ``ref`` is. Tensors of one shape
    are compared in slices of about ERROR_SLICE elements along their first dimension: the
    float64 temporaries of a whole GPU layer's output (2**29 elements) would need some 20
    times its memory at once."""
    if out.dim() and out.shape == ref.shape:
        rows = max(1, ERROR_SLICE // max(1, math.prod(out.shape[1:])))
        parts = zip(out.split(rows), ref.split(rows))
    else:  # scalars, and shapes that broadcast
        parts = [(out, ref)]
    max_abs, diff_sq, ref_sq = 0.0, 0.0, 0.0
    for o, r in parts:
        o, r = o.double(), r.double()
        finite = r.isfinite()
        if bool((~o.isfinite() & finite).any()):
            return float("inf"), float("inf")
        diff = (o - r).where(finite, 0.0)
        if diff.numel():
            max_abs = max(max_abs, diff.abs().max().item())
        diff_sq += diff.square().sum().item()
        ref_sq += r.where(finite, 0.0).square().sum().item()
    denom = math.sqrt(ref_sq)
    return max_abs, math.sqrt(diff_sq) / denom if denom > 0 else math.sqrt(diff_sq)


def same_nonfinite(out, ref) -> bool:
    """Whether ``out`` has NaN and +-Inf exactly where ``ref`` has them."""
    o, r = out.double(), ref.double()
    return bool(o.isnan().equal(r.isnan()) and o.isinf().equal(r.isinf()))


def psnr(a, b):
    """Per image PSNR in dB of images in [-1, 1] (peak-to-peak 2): 10 log10(4 / MSE)."""
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * (4.0 / mse.clamp_min(1e-12)).log10()
