"""The shared numerics: the tolerance table's lookup, the error measures, float64 references."""
from __future__ import annotations

import math

import pytest
import torch

from bridgegan.numerics import (dtype_name, dtype_spellings, errors, float64_call, float64_model,
                                same_nonfinite, tolerance)


def test_tolerance_rows_by_dtype_or_name():
    assert tolerance(torch.float16) is tolerance("fp16") is tolerance("half")
    assert tolerance("bf16").op_rel == 1e-2 and tolerance(torch.float32).image_max_abs == 1e-4
    assert tolerance("fp16").image_limit == "PSNR >= 40 dB"
    assert not tolerance("fp16").image_ok(0.0, math.nan)
    with pytest.raises(ValueError, match="no tolerance for dtype 'float64'; known: float32"):
        tolerance(torch.float64)


# design.md's starting tolerances ("tighten where the code allows"): op (relative), and
# end-to-end image (max abs for float32, PSNR in dB against float32 for fp16 / bf16)
DESIGN_LIMITS = {"float32": (1e-5, 1e-4, None), "tf32": (5e-4, None, None),
                 "float16": (2e-3, None, 40.0), "bfloat16": (1e-2, None, 40.0)}


@pytest.mark.parametrize("name", DESIGN_LIMITS)
def test_no_tolerance_is_looser_than_design_mds(name):
    op_rel, image_max_abs, min_psnr = DESIGN_LIMITS[name]
    t = tolerance(name)
    assert t.op_rel <= op_rel
    assert (t.image_max_abs is None) == (image_max_abs is None)
    assert t.image_max_abs is None or t.image_max_abs <= image_max_abs
    assert (t.image_min_psnr_db is None) == (min_psnr is None)
    assert t.image_min_psnr_db is None or t.image_min_psnr_db >= min_psnr


def test_a_row_without_an_image_limit_says_so():
    """tf32 has an op limit only: asking for its image limit is a ValueError naming it."""
    assert tolerance("tf32").op_rel == 5e-4
    assert tolerance("float32").image_limit == "max abs <= 0.0001"
    assert tolerance("float32").image_ok(1e-4, math.nan) and not tolerance("float32").image_ok(2e-4, 99.0)
    with pytest.raises(ValueError, match="dtype 'tf32' has no end-to-end image limit .*float32, "
                                         "float16, bfloat16"):
        tolerance("tf32").image_ok(0.0, 99.0)
    with pytest.raises(ValueError, match="dtype 'tf32' has no end-to-end image limit"):
        tolerance("tf32").image_limit


def test_errors_ignore_where_the_reference_is_not_finite():
    ref = torch.tensor([1.0, float("nan"), 3.0])
    assert errors(torch.tensor([1.0, float("nan"), 3.5]), ref) == pytest.approx((0.5, 0.5 / math.sqrt(10)))
    assert errors(torch.tensor([1.0, 0.0, float("inf")]), ref) == (math.inf, math.inf)
    assert same_nonfinite(torch.tensor([2.0, float("nan"), 0.0]), ref)
    assert not same_nonfinite(torch.tensor([2.0, float("inf"), 0.0]), ref)


def test_errors_in_slices_are_the_errors_of_the_whole(monkeypatch):
    """errors() compares tensors of one shape slice by slice along the first dimension
    (bounded float64 temporaries): the max abs error, the relative error and a non-finite
    output where the reference is finite (in any slice) come out as over the whole."""
    from bridgegan import numerics

    g = torch.Generator().manual_seed(43)
    ref = torch.randn(9, 7, 5, generator=g)
    out = ref + 1e-3 * torch.randn(9, 7, 5, generator=g)
    ref[4, 2, 1] = math.nan
    whole = errors(out, ref)
    monkeypatch.setattr(numerics, "ERROR_SLICE", 70)  # two rows a slice: five slices
    assert errors(out, ref) == pytest.approx(whole, rel=1e-12)
    diff = (out.double() - ref.double()).nan_to_num(0.0)
    assert whole[0] == diff.abs().max().item()
    assert whole[1] == pytest.approx(diff.norm().item() / ref.double().nan_to_num(0.0).norm().item())
    out[8, 6, 4] = math.inf  # in the last slice
    assert errors(out, ref) == (math.inf, math.inf)


def test_float64_references_upcast_floating_tensors_only():
    lin = torch.nn.Linear(2, 2)
    x, idx = torch.randn(3, 2), torch.tensor([0, 2])
    assert float64_call(lambda t, i, d: (t.dtype, i.dtype, d["t"].dtype), x, idx, d={"t": x}) == (
        torch.float64, torch.int64, torch.float64)
    assert float64_model(lin).weight.dtype == torch.float64 and lin.weight.dtype == torch.float32


def test_dtype_names_and_spellings():
    assert {dtype_name(d) for d in ("fp16", "half", "float16", torch.float16)} == {"float16"}
    assert dtype_name(torch.bfloat16) == dtype_name("bf16") == "bfloat16"
    assert dtype_name("tf32") == "tf32" and dtype_name(torch.float64) == "float64"
    assert dtype_spellings(("float32", "bfloat16")) == ["float32", "fp32", "bfloat16", "bf16"]


def test_real_value_takes_one_value_arrays_without_numpys_deprecation():
    """A one-value numpy array of any dimensions (a strength from a numpy pipeline) is
    its number, without numpy's DeprecationWarning (an error under -W error, a TypeError in
    numpy's future); a string array, a complex one and arrays of several values are None."""
    import warnings

    import numpy as np

    from bridgegan.numerics import real_value

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = [real_value(v) for v in (np.array([0.5]), np.array([[2]]), np.float32(0.25),
                                       torch.tensor([[0.75]]), np.array(["1.5"]),
                                       np.array([1j]), np.array([1.0, 2.0]))]
    assert got == [0.5, 2.0, 0.25, 0.75, None, None, None]
