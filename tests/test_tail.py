"""rgb_tail (G's last residual sum, ReLU, to_rgb and tanh in one kernel) against the float64
torch path: every storage dtype, both memory formats, the shortcut at full and at half
resolution and none, odd sizes (outputs allocated NaN-filled: an element the kernel
forgets shows); NaN propagation; bad input; the fallback and autograd."""
from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from bridgegan.kernels import KernelFallbackWarning, dispatch, rgb_tail
from bridgegan.numerics import dtype_name, errors, float64_call, same_nonfinite, tolerance
from conftest import assert_close

requires_triton = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or not dispatch.triton_interpreted(),
    reason="the Triton kernels on the CPU need triton and TRITON_INTERPRET=1")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
SHORTCUTS = ("half", "full", "none")


def operands(shape, shortcut: str, dtype, fmt, k: int = 3, seed: int = 0, bias: bool = True):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    mf = FORMATS[fmt]
    x = (torch.randn(shape, generator=g) + 0.2).to(dtype).contiguous(memory_format=mf)
    s = {"half": (n, c, h // 2, w // 2), "full": shape, "none": None}[shortcut]
    s = None if s is None else torch.randn(s, generator=g).to(dtype).contiguous(memory_format=mf)
    weight = (torch.randn(k, c, 1, 1, generator=g) / c ** 0.5).to(dtype)
    b = torch.randn(k, generator=g).to(dtype) if bias else None
    return x, weight, b, s


def reference(x, weight, b, s):
    """The plain ops of the graph it replaces, in float64."""
    def ops(x, weight, b, s):
        if s is not None:
            x = x + (s if s.shape == x.shape else F.interpolate(s, scale_factor=2))
        return torch.tanh(F.conv2d(F.relu(x), weight, b))
    return float64_call(ops, x, weight, b, s)


@requires_triton
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shortcut", SHORTCUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_kernel_matches_the_float64_ops(dtype, shortcut, fmt, poisoned_alloc):
    x, weight, b, s = operands((2, 5, 6, 10), shortcut, dtype, fmt, seed=len(shortcut))
    out = rgb_tail(x, weight, b, s, impl="triton")
    assert out.shape == (2, 3, 6, 10) and out.dtype == dtype
    assert out.is_contiguous(memory_format=FORMATS[fmt])
    assert_close(out, reference(x, weight, b, s), dtype)
    assert_close(rgb_tail(x, weight, b, s, impl="torch"), reference(x, weight, b, s), dtype)


@requires_triton
@pytest.mark.parametrize("shape,k", [((1, 1, 1, 1), 1), ((3, 40, 7, 9), 4), ((1, 3, 2, 2), 16)],
                         ids=["1x1x1x1", "odd", "k16"])
def test_edge_shapes(shape, k, poisoned_alloc):
    shortcut = "half" if shape[2] % 2 == 0 and shape[3] % 2 == 0 else "full"
    for fmt in FORMATS:
        x, weight, b, s = operands(shape, shortcut, torch.float32, fmt, k=k, seed=k, bias=k != 4)
        out = rgb_tail(x, weight.flatten(1), b, s, impl="triton")  # (K, C) weights too
        assert_close(out, reference(x, weight, b, s), torch.float32)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_zero_channels_give_tanh_of_the_bias(impl, bias, poisoned_alloc):
    """h with no channels: the convolution is 0, each output pixel tanh(bias) (0 without
    one), never uninitialised memory; and empty batches stay empty."""
    b = torch.tensor([0.5, -1.0, 2.0]) if bias else None
    out = rgb_tail(torch.zeros(2, 0, 3, 4), torch.zeros(3, 0), b, impl=impl)
    want = torch.tanh(b) if bias else torch.zeros(3)
    assert out.shape == (2, 3, 3, 4)
    assert torch.equal(out, want.reshape(1, 3, 1, 1).expand(2, 3, 3, 4))
    assert rgb_tail(torch.zeros(0, 2, 3, 4), torch.ones(3, 2), b, impl=impl).shape == (0, 3, 3, 4)


@requires_triton
@pytest.mark.parametrize("view", ["strided", "expanded"])
def test_bias_views_are_read_by_their_strides(view, poisoned_alloc):
    """A bias that is a view (a slice with a step, one value expanded over K) is read by
    its strides, not as K consecutive values."""
    x, weight, b, s = operands((2, 5, 6, 8), "half", torch.float32, "nchw", seed=9)
    g = torch.Generator().manual_seed(10)
    b = torch.randn(6, generator=g)[::2] if view == "strided" else torch.tensor([0.7]).expand(3)
    out = rgb_tail(x, weight, b, s, impl="triton")
    assert_close(out, reference(x, weight, b, s), torch.float32)


@requires_triton
def test_tanh_keeps_float32_accuracy_near_zero():
    """tanh of pre-activations from 1e-8 to 20 (both signs) each within the float32 op
    tolerance of float64, relative: outputs near zero keep their accuracy (1 - exp(-2|y|) alone
    cancels there), and whole outputs of size 1e-5 meet the tolerance."""
    y = torch.logspace(-8, 1.3, 97).reshape(1, 1, 1, 97)  # h >= 0: the ReLU passes it
    weight = torch.tensor([[1.0], [-1.0]])
    out = rgb_tail(y, weight, impl="triton")
    ref = torch.tanh(y.double() * weight.double().reshape(1, 2, 1, 1))
    rel = ((out.double() - ref).abs() / ref.abs()).max().item()
    assert rel <= tolerance(torch.float32).op_rel, rel
    x, weight, b, s = operands((2, 5, 6, 10), "half", torch.float32, "nchw", seed=11)
    weight, b = weight * 1e-5, b * 1e-5
    assert_close(rgb_tail(x, weight, b, s, impl="triton"), reference(x, weight, b, s),
                 torch.float32)


@requires_triton
def test_nan_poisons_only_its_pixel():
    x, weight, b, s = operands((2, 4, 4, 6), "half", torch.float16, "cl", seed=5)
    x[1, 2, 3, 4] = float("nan")
    s[0, 1, 0, 0] = float("nan")  # the low-res pixel read by output pixels (0..1, 0..1)
    out = rgb_tail(x, weight, b, s, impl="triton")
    ref = reference(x, weight, b, s)
    assert same_nonfinite(out, ref)
    assert torch.isnan(out[1, :, 3, 4]).all() and torch.isnan(out[0, :, :2, :2]).all()
    assert int(torch.isnan(out).sum()) == 3 * (1 + 4)


def test_auto_on_the_cpu_falls_back_once():
    x, weight, b, s = operands((1, 4, 4, 4), "half", torch.float32, "nchw", seed=6)
    dispatch.reset_fallback_warning()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        outs = [rgb_tail(x, weight, b, s) for _ in range(2)]
    assert len([w for w in rec if issubclass(w.category, KernelFallbackWarning)]) == 1
    assert torch.equal(outs[0], rgb_tail(x, weight, b, s, impl="torch"))


def test_autograd_takes_the_torch_path():
    x, weight, b, s = operands((1, 4, 4, 4), "half", torch.float32, "nchw", seed=7)
    x.requires_grad_(True)
    rgb_tail(x, weight, b, s, impl="triton").sum().backward()
    want = torch.autograd.grad(reference(x, weight, b, s).sum(), x)[0]
    assert errors(x.grad, want)[1] <= tolerance(torch.float32).op_rel


def _bad_cases():
    x, weight, b, s = operands((2, 4, 6, 6), "half", torch.float32, "nchw", seed=8)
    return {
        "h_3d": ((x[0], weight), "h must be a 4-D (N, C, H, W) float16/bfloat16/float32/float64 "
                                 "tensor, got 3-D float32"),
        "h_int": ((x.long(), weight), "got 4-D int64"),
        "weight_channels": ((x, weight[:, :3]), "weight has shape (3, 3, 1, 1); accepted: "
                                                 "(K, 4) or (K, 4, 1, 1) with 1 <= K <= 16"),
        "weight_k": ((x, torch.randn(17, 4)), "weight has shape (17, 4)"),
        "bias_shape": ((x, weight, b[:2]), "bias has shape (2,); accepted: (3,)"),
        "shortcut_shape": ((x, weight, b, s[..., :2]), "shortcut has shape (2, 4, 3, 2); "
                                                        "accepted: (2, 4, 6, 6) or (2, 4, 3, 3)"),
        "shortcut_odd": ((x[..., :5], weight, b, s[..., :2]), "accepted: (2, 4, 6, 5) or None"),
        "dtype": ((x, weight.half()), "weight has dtype float16 but h is float32"),
        "device": ((x, weight, b.to("meta")), "bias is on meta but h is on cpu"),
        "impl": ((x, weight, b, s, "cuda"), "unknown impl 'cuda'; accepted: 'auto', 'triton'"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_is_refused_clearly(case):
    args, message = _bad_cases()[case]
    with pytest.raises(ValueError, match="rgb_tail: ") as info:
        rgb_tail(*args)
    assert message in str(info.value)
