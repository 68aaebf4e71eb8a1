"""conv2d_relu: the fused library call (oneDNN on this CPU) against the float64 plain ops,
in both memory formats and every form the graph uses; CUDA's transposed form (the
convolution, then the Triton epilogue) under the interpreter; the fallback when the
library refuses; the plain ops under autograd."""
from __future__ import annotations

import os
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from bridgegan.kernels import KernelFallbackWarning, conv2d_relu, conv_act, dispatch
from bridgegan.numerics import errors, float64_call, tolerance

FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}
# (form, stride, padding, weight shape): the graph's hidden convolution, its four-phase
# form (padding outside) and its transposed up form
FORMS = {"conv3x3": (False, 1, 1, (12, 5, 3, 3)), "phase2x2": (False, 1, 0, (12, 5, 2, 2)),
         "transposed": (True, 2, 1, (5, 6, 4, 4))}
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                  reason="this torch build has no oneDNN (mkldnn)")


@pytest.fixture(autouse=True)
def _fresh_probes(monkeypatch):
    monkeypatch.setattr(conv_act, "_USE_FUSED", {})


def operands(form: str, seed: int, bias: bool = True):
    transposed, stride, padding, wshape = FORMS[form]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 7, 6, generator=g, dtype=torch.float64)
    w = torch.randn(*wshape, generator=g, dtype=torch.float64) / 4
    b = torch.randn(wshape[1] if transposed else wshape[0], generator=g,
                    dtype=torch.float64) if bias else None
    return x, w, b, stride, padding, transposed


def fused_ops(fn) -> set[str]:
    """The mkldnn ops that ``fn`` ran."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if e.key.startswith("mkldnn::")}


@needs_onednn
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_fused_call_matches_the_float64_ops(form, fmt, dtype, bias):
    x, w, b, stride, padding, transposed = operands(form, 7 + len(form), bias)
    with torch.no_grad():
        want = conv2d_relu(x, w, b, stride, padding, transposed, impl="torch")
        assert (want == 0).any() and (want > 0).any()  # the ReLU is exercised
        mf = FORMATS[fmt]
        args = [t.to(dtype).contiguous(memory_format=mf) if t is not None and t.dim() == 4
                else None if t is None else t.to(dtype) for t in (x, w, b)]
        got = conv2d_relu(*args, stride, padding, transposed)
        assert fused_ops(lambda: conv2d_relu(*args, stride, padding, transposed))
    assert got.dtype == dtype and got.shape == want.shape
    assert errors(got, want)[1] <= tolerance(dtype).op_rel


@needs_onednn
@pytest.mark.parametrize("form", ["conv3x3", "transposed"])
@pytest.mark.parametrize("view", ["strided", "expanded"])
def test_bias_views_are_read_by_their_strides(form, view):
    """A bias that is a view (a slice with a step, one value expanded over the channels)
    gives the plain ops' result on the fused path too."""
    x, w, b, stride, padding, transposed = operands(form, 8)
    x, w = x.float(), w.float()
    if view == "strided":
        b = torch.stack([b, -b], 1).flatten().float()[::2]
    else:
        b = torch.tensor([0.3]).expand(b.shape[0])
    with torch.no_grad():
        want = conv2d_relu(x.double(), w.double(), b.double(), stride, padding, transposed,
                           impl="torch")
        got = conv2d_relu(x, w, b, stride, padding, transposed)
        assert fused_ops(lambda: conv2d_relu(x, w, b, stride, padding, transposed))
    assert errors(got, want)[1] <= tolerance(torch.float32).op_rel


@needs_onednn
def test_a_refused_probe_falls_back_once(monkeypatch):
    x, w, b, stride, padding, transposed = (t.float() if isinstance(t, torch.Tensor) else t
                                            for t in operands("conv3x3", 3))
    calls = []

    def refusing(*args):
        def call():
            calls.append(1)
            raise RuntimeError("CUDNN_STATUS_NOT_SUPPORTED")
        return call

    monkeypatch.setattr(conv_act, "_fused_call", refusing)
    with torch.no_grad(), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        first = conv2d_relu(x, w, b, stride, padding)
        again = conv2d_relu(x, w, b, stride, padding)
    assert len(calls) == 1  # not tried again for this device and dtype
    shown = [w_ for w_ in rec if issubclass(w_.category, KernelFallbackWarning)]
    assert len(shown) == 1 and "CUDNN_STATUS_NOT_SUPPORTED" in str(shown[0].message)
    want = F.relu(F.conv2d(x, w, b, padding=padding))
    assert torch.equal(first, want) and torch.equal(again, want)


@needs_onednn
def test_errors_after_a_working_probe_propagate():
    """The caller's mistake after the decision raises the plain ops' error, without a
    fallback warning, and the fused form stays in use for the next call."""
    x, w, b, stride, padding, _ = (t.float() if isinstance(t, torch.Tensor) else t
                                   for t in operands("conv3x3", 4))
    with torch.no_grad(), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        conv2d_relu(x, w, b, stride, padding)
        with pytest.raises(RuntimeError, match="to have 5 channels, but got 3 channels"):
            conv2d_relu(x[:, :3], w, b, stride, padding)  # 3 input channels for 5
        assert fused_ops(lambda: conv2d_relu(x, w, b, stride, padding))  # still fused
    assert not [r for r in rec if issubclass(r.category, KernelFallbackWarning)]


@needs_onednn
@pytest.mark.parametrize("form", ["conv3x3", "transposed"])
def test_the_callers_mistakes_after_the_decision_get_torchs_messages(form):
    """oneDNN's transposed form answered a wrong channel count with "could not create a
    primitive descriptor"; a bias of another length would be read past its end by CUDA's
    Triton epilogue: both are the plain ops' errors, on every form."""
    x, w, b, stride, padding, transposed = (t.float() if isinstance(t, torch.Tensor) else t
                                            for t in operands(form, 5))
    with torch.no_grad():
        conv2d_relu(x, w, b, stride, padding, transposed)  # decides for the fused form
        with pytest.raises(RuntimeError, match=r"expected (input|weight)\S* .*channels|"
                                               r"to have 5 channels"):
            conv2d_relu(x[:, :3], w, b, stride, padding, transposed)
        for bad in (b[:-1], torch.cat([b, b]), b[None]):
            with pytest.raises(RuntimeError, match="bias"):
                conv2d_relu(x, w, bad, stride, padding, transposed)
        with pytest.raises(RuntimeError, match="weight"):  # a 0-d weight: torch's message
            conv2d_relu(x, w.sum(), b, stride, padding, transposed)


def test_the_transposed_epilogue_path_refuses_a_short_bias(monkeypatch):
    """The CUDA form's decision key holds x and the weight, not the bias: a later call with
    a short bias went to the epilogue, which read past it (seen under the interpreter:
    1e30 from beyond the three values)."""
    x, w, b, stride, padding, _ = (t.float() if isinstance(t, torch.Tensor) else t
                                   for t in operands("transposed", 6))
    reached = []
    monkeypatch.setattr(conv_act, "_fused_call", lambda *a: reached.append(a) or (lambda: 0))
    with torch.no_grad(), pytest.raises(RuntimeError, match="bias"):
        conv2d_relu(x, w, b[:3], stride, padding, transposed=True)
    assert not reached


class OutOfResources(Exception):
    """As Triton's (a TritonError, not a RuntimeError): a specialisation that cannot compile."""


@needs_onednn
@pytest.mark.parametrize("error", [RuntimeError("could not create a primitive"),
                                   OutOfResources("shared memory, required: 300000")])
def test_a_fused_form_failing_after_the_decision_falls_back_for_good(monkeypatch, error):
    """The CPU decides once per dtype: a later shape the library cannot take (while the
    plain ops can) gets the plain ops' result and one KernelFallbackWarning, not the
    library's error, and the plain ops from then on (not a failing try on every call)."""
    x, w, b, stride, padding, _ = (t.float() if isinstance(t, torch.Tensor) else t
                                   for t in operands("conv3x3", 7))
    real, tried = conv_act._fused_call, []

    def failing_later(x_, *args):
        if x_.shape[0] > 2:
            def fail():
                tried.append(1)
                raise error
            return fail
        return real(x_, *args)

    monkeypatch.setattr(conv_act, "_fused_call", failing_later)
    big = torch.cat([x, x])
    with torch.no_grad(), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        conv2d_relu(x, w, b, stride, padding)  # decides for the fused form
        got = [conv2d_relu(big, w, b, stride, padding) for _ in range(3)]
        assert not fused_ops(lambda: conv2d_relu(x, w, b, stride, padding))
    want = F.relu(F.conv2d(big, w, b, padding=padding))
    assert all(torch.equal(g, want) for g in got) and len(tried) == 1
    shown = [r for r in rec if issubclass(r.category, KernelFallbackWarning)]
    assert len(shown) == 1 and str(error) in str(shown[0].message)
    assert shown[0].filename == __file__  # attributed to the caller


@needs_onednn
def test_running_out_of_memory_in_the_fused_form_raises_and_keeps_it(monkeypatch):
    """Memory is not the form's fault: the error reaches the caller as it is (no plain ops
    run in its place) and the next call tries the fused form again."""
    x, w, b, stride, padding, _ = (t.float() if isinstance(t, torch.Tensor) else t
                                   for t in operands("conv3x3", 7))
    real, short, tried = conv_act._fused_call, [], []

    def short_once(*args):
        call = real(*args)

        def once():
            tried.append(1)
            if short:
                short.clear()
                raise torch.OutOfMemoryError("out of memory (test)")
            return call()
        return once

    monkeypatch.setattr(conv_act, "_fused_call", short_once)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        conv2d_relu(x, w, b, stride, padding)  # decides for the fused form
        short.append(1)
        with pytest.raises(torch.OutOfMemoryError, match="test"):
            conv2d_relu(x, w, b, stride, padding)
        tried.clear()
        got = conv2d_relu(x, w, b, stride, padding)
    assert tried == [1]  # the fused form again
    assert torch.allclose(got, F.relu(F.conv2d(x, w, b, padding=padding)), atol=1e-5)


def test_autograd_takes_the_plain_ops():
    """(Under a tracer too: the ONNX export test of ``fused_relu`` in
    test_graph_rewrites.py.)"""
    x, w, b, stride, padding, _ = (t.float() if isinstance(t, torch.Tensor) else t
                                   for t in operands("conv3x3", 5))
    w.requires_grad_(True)
    assert not fused_ops(lambda: conv2d_relu(x, w, b, stride, padding).sum().backward())
    want = torch.autograd.grad(F.relu(F.conv2d(x, w, b, padding=padding)).sum(), w)[0]
    assert torch.allclose(w.grad, want)


def test_unknown_impl_is_refused():
    x, w, b, stride, padding, _ = operands("conv3x3", 6)
    with pytest.raises(ValueError, match="unknown impl 'triton'; accepted: 'auto', 'torch'"):
        conv2d_relu(x, w, b, stride, padding, impl="triton")


requires_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or not dispatch.triton_interpreted(),
    reason="the Triton kernels on the CPU need triton and TRITON_INTERPRET=1")


@requires_interpreter
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_transposed_epilogue_matches_the_float64_ops(dtype, fmt, bias):
    """CUDA's path for the transposed form (cuDNN has no fused one): the convolution
    without its bias, then the Triton epilogue adds it and applies the ReLU in place."""
    x, w, b, stride, padding, _ = operands("transposed", 21, bias)
    mf = FORMATS[fmt]
    x, w = (t.to(dtype).contiguous(memory_format=mf) for t in (x, w))
    b = None if b is None else b.to(dtype)
    with torch.no_grad():
        want = float64_call(conv2d_relu, x, w, b, stride, padding, transposed=True,
                            impl="torch")
        got = conv_act.transposed_then_epilogue(x, w, b, stride, padding)
    assert got.dtype == dtype and got.is_contiguous(memory_format=mf)
    assert errors(got, want)[1] <= tolerance(dtype).op_rel


def test_meta_recording_takes_the_cuda_forms():
    """While launches are recorded (compiling the engine's kernels for an absent GPU), a
    meta tensor takes CUDA's forms: the transposed one records the Triton epilogue."""
    pytest.importorskip("triton")
    x = torch.empty(2, 5, 7, 6, device="meta", dtype=torch.float16)
    w = torch.empty(5, 6, 4, 4, device="meta", dtype=torch.float16)
    b = torch.empty(6, device="meta", dtype=torch.float16)
    with dispatch.recording() as got:
        y = conv2d_relu(x, w, b, 2, 1, transposed=True)
    assert y.shape == (2, 6, 14, 12) and [launch.kernel.fn.__name__ for launch in got] == [
        "_bias_relu_kernel"]


def test_cuda_keeps_the_faster_form_per_shape(monkeypatch):
    """The decision logic of CUDA's per-shape timing, with the timer and the capture state
    stood in (no GPU here): the faster form is kept, once per shape and batch class (the
    next power of two); while a graph is captured an untimed shape takes the plain ops."""
    from types import SimpleNamespace

    seconds = {"fused": [3.0], "plain": [2.0]}
    out = {"fused": torch.ones(3), "plain": torch.ones(3)}  # the two forms agree
    monkeypatch.setattr(conv_act, "time_calls", lambda f, device, warmup, reps, queued: seconds[
        "fused" if queued and f() is out["fused"] else "plain"])
    capturing = [False]
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])

    def tensor(shape):
        return SimpleNamespace(is_cuda=True, is_meta=False, device=torch.device("cuda", 0),
                               dtype=torch.float16, shape=shape,
                               stride=lambda: (1,) * len(shape))

    w = tensor((4, 3, 3, 3))
    def faster(x):
        return conv_act._use_fused(x, w, 1, 1, False, lambda: out["fused"], lambda: out["plain"])

    assert faster(tensor((2, 3, 8, 8))) is False  # plain measured faster: kept
    seconds.update(fused=[1.0])
    assert faster(tensor((2, 3, 8, 8))) is False  # decided once per shape
    assert faster(tensor((2, 3, 16, 16))) is True  # a new shape is timed anew
    assert faster(tensor((3, 3, 8, 8))) is True  # a new batch class too (4)
    seconds.update(fused=[3.0])
    assert faster(tensor((4, 3, 8, 8))) is True  # the same class: no timing
    assert faster(tensor((65, 3, 8, 8))) is False and faster(tensor((100, 3, 8, 8))) is False
    assert len(conv_act._USE_FUSED) == 4  # 2, 4 and 128 rows at 8x8, 2 at 16x16
    seconds.update(fused=[1.0])
    capturing[0] = True
    assert faster(tensor((2, 3, 32, 32))) is False and len(conv_act._USE_FUSED) == 4
    capturing[0] = False

    def refused():
        raise RuntimeError("CUDNN_STATUS_NOT_SUPPORTED")
    with warnings.catch_warnings(record=True) as rec:  # no fused engine for one shape
        warnings.simplefilter("always")
        assert conv_act._use_fused(tensor((2, 3, 7, 7)), w, 1, 1, False, refused,
                                   lambda: out["plain"]) is False
    assert any("CUDNN_STATUS_NOT_SUPPORTED" in str(r.message) for r in rec)


@needs_onednn
@pytest.mark.parametrize("wrong", ["garbage", "nan"])
def test_a_fused_form_that_differs_from_the_plain_ops_is_dropped(monkeypatch, wrong):
    """The first call of a key compares the fused form's output with the plain ops': one
    that differs (a library reading memory it should not: NaN its ReLU turns into 0, or
    any garbage) is dropped for the plain ops with a warning, before it returns anything;
    finite agreement within twice the op tolerance keeps it (the float64 test above)."""
    x, w, b, stride, padding, _ = (t.float() if isinstance(t, torch.Tensor) else t
                                   for t in operands("conv3x3", 12))
    want = F.relu(F.conv2d(x, w, b, padding=padding))
    bad = want.clone()
    if wrong == "garbage":
        bad[0, 0] += 1.0
    else:
        bad[bad > 0.5] = 0.0  # where stale NaN bits met the fused ReLU
    calls = []
    monkeypatch.setattr(conv_act, "_fused_call",
                        lambda *a: lambda: calls.append(1) or bad.clone())
    with torch.no_grad(), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        first, again = (conv2d_relu(x, w, b, stride, padding) for _ in range(2))
    assert torch.equal(first, want) and torch.equal(again, want) and len(calls) == 1
    shown = [r for r in rec if issubclass(r.category, KernelFallbackWarning)]
    assert len(shown) == 1 and "differs from the plain ops (relative error" in str(
        shown[0].message)


@needs_onednn
def test_the_fused_relu_maps_nan_to_zero_as_documented():
    """The library's fused ReLU is max(y, 0): a NaN becomes 0 where the plain ops keep it
    (the module docstring says so; the engine refuses non-finite inputs upstream)."""
    x, w, b, stride, padding, _ = (t.float() if isinstance(t, torch.Tensor) else t
                                   for t in operands("conv3x3", 9))
    x[0, 0, 3, 3] = float("nan")
    with torch.no_grad():
        fused = conv2d_relu(x, w, b, stride, padding)
        plain = conv2d_relu(x, w, b, stride, padding, impl="torch")
    nan = torch.isnan(plain)
    assert nan.any() and not torch.isnan(fused).any()
    assert errors(fused[~nan], plain[~nan])[1] <= tolerance(torch.float32).op_rel


@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_mixed_dtypes_are_refused_on_every_path(impl):
    """x, weight and bias of different dtypes: one clear error whichever path would run
    (oneDNN's fused call computes them, the plain ops refuse them)."""
    x, w, b, stride, padding, transposed = operands("conv3x3", 4)
    x, w, b = x.float(), w.float(), b.float()
    for args, got in (((x.bfloat16(), w, b), "bfloat16, float32, float32"),
                      ((x, w, b.bfloat16()), "float32, float32, bfloat16")):
        with torch.no_grad(), pytest.raises(ValueError, match=re.escape(
                f"conv2d_relu: x, weight and bias must have one dtype, got {got}")):
            conv2d_relu(*args, stride, padding, transposed, impl=impl)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("search", [False, True], ids=["heuristics", "search"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32],
                         ids=["fp16", "bf16", "fp32"])
def test_cudnns_fused_form_ignores_what_its_output_memory_held(dtype, search):
    """torch.cudnn_convolution_relu hands cuDNN its fresh output as the z operand (alpha
    0). Were z read, NaN left in that memory would come out as 0 through the ReLU: finite,
    wrong, and past every output check. A NaN-filled tensor of the output's size, freed
    just before, is the block the caching allocator gives the output (checked); with
    cuDNN's heuristic plan and with its search's, as the engine runs."""
    import contextlib

    from bridgegan.torch_flags import cudnn_search, no_tf32

    g = torch.Generator(device="cuda").manual_seed(21)
    cl = torch.channels_last
    x = torch.randn(8, 64, 32, 32, device="cuda", generator=g).to(dtype).contiguous(
        memory_format=cl)
    w = (torch.randn(128, 64, 3, 3, device="cuda", generator=g) / 24).to(dtype).contiguous(
        memory_format=cl)
    b = torch.randn(128, device="cuda", generator=g).to(dtype)
    with (torch.no_grad(), no_tf32(),
          cudnn_search() if search else contextlib.nullcontext()):
        want = F.relu(F.conv2d(x.double(), w.double(), b.double(), padding=1))
        torch.cudnn_convolution_relu(x, w, b, [1, 1], [1, 1], [1, 1], 1)  # plan chosen
        for _ in range(3):
            poison = torch.full((8, 128, 32, 32), float("nan"), device="cuda", dtype=dtype)
            block = poison.data_ptr()
            del poison
            got = torch.cudnn_convolution_relu(x, w, b, [1, 1], [1, 1], [1, 1], 1)
            assert got.data_ptr() == block  # the output sits on the NaN
            assert torch.isfinite(got).all()
            assert errors(got, want)[1] <= tolerance(dtype).op_rel
