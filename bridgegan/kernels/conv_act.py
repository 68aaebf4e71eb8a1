"""Convolution + bias + ReLU as one library call (the SPADE hidden convolution).

ATen adds a convolution's bias in a pass of its own over the output after cuDNN, and a
ReLU is one more; the vendor libraries run both in the convolution's epilogue:

* CUDA: ``torch.cudnn_convolution_relu`` (cuDNN's convolution-bias-activation) for plain
  convolutions, float16 / bfloat16 / float32; cuDNN has no fused transposed form, so a
  transposed convolution runs without its bias and a Triton kernel adds the bias and
  applies the ReLU in place, one pass (:mod:`._triton_conv`; ATen's bias pass and the
  ReLU's pass otherwise);
* CPU: oneDNN's post-op (``mkldnn::_convolution_pointwise`` and its transposed twin),
  float32 and bfloat16.

``conv2d_relu(x, weight, bias, stride, padding, transposed=False, impl="auto")`` is
``relu(conv2d(x, weight, bias, stride, padding))`` (``conv_transpose2d`` when
``transposed``; weights in the layout of the torch op it replaces).

impl:
  ``"torch"`` the plain torch ops: the oracle, and what ONNX export and torch.compile
              trace (their compilers fuse the ReLU themselves).
  ``"auto"``  the fused call where x's device and dtype have one, else the plain ops.
              Under a tracer, or when autograd records, the plain ops, silently. The
              fused form is used once decided, per key, and remembered: on CUDA per
              shape (the batch by its class: the next power of two) and TF32
              setting, by timing both forms (five calls each, outside CUDA-graph
              capture; a capture records the plain ops until then; device time, as a
              graph's replay spends it: the fused form's two saved launches do not
              count, which an uncaptured small batch would feel), since cuDNN's
              fused convolution-bias-ReLU has been far slower than the plain
              convolution for some channels_last shapes (pytorch#68506); on the CPU per
              dtype and form, by one trial call. A fused form that fails its decision
              (a cuDNN build without the fused engine, a Triton that cannot compile the
              epilogue) or whose first output differs from the plain ops' (``_first_call``)
              gives one :class:`KernelFallbackWarning` and the plain ops for that key;
              after a decision for it, a call the fused form fails (a shape the CPU's
              decision never met) runs the plain ops: their error where the call is
              the caller's mistake, else their result, one KernelFallbackWarning and
              the plain ops for that key from then on. A
              bias whose length is not the output channels' goes to the plain ops
              (their message; CUDA's epilogue would read past it). With
              ``cudnn.deterministic`` set, or oneDNN disabled, the plain ops.

NaN: the libraries' fused ReLU is max(y, 0), which maps a NaN to 0, where the plain ops
(and the Triton epilogue) keep it. The engine refuses non-finite inputs before they
reach the graph, so a NaN here comes from the weights or from overflow.
"""
from __future__ import annotations

import functools
import statistics
import threading
import warnings

import torch
import torch.nn.functional as F

from ..numerics import dtype_name, errors, tolerance
from ..timing import time_calls
from ..torch_flags import tf32_key
from .dispatch import (KernelFallbackWarning, Launch, caller_stacklevel, check_impl, fail,
                       recording_launches, run_launches, tracing, triton_module)
from .layout import memory_format, next_pow2

__all__ = ["conv2d_relu"]

_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CPU_DTYPES = (torch.bfloat16, torch.float32)
EPILOGUE_BLOCK = 1024  # elements per program of the transposed convolution's epilogue
_USE_FUSED: dict[tuple, bool] = {}  # decision key (see _use_fused) -> the fused form is used
# one decision at a time: threads whose first calls meet one key decide it once, and no
# decision's timing runs beside another's
_DECIDING = threading.Lock()


def _plain(x, weight, bias, stride: int, padding: int, transposed: bool) -> torch.Tensor:
    if transposed:
        return F.relu(F.conv_transpose2d(x, weight, bias, stride=stride, padding=padding))
    return F.relu(F.conv2d(x, weight, bias, stride=stride, padding=padding))


def transposed_then_epilogue(x, weight, bias, stride: int, padding: int) -> torch.Tensor:
    """``relu(conv_transpose2d(x, weight, bias))`` as the convolution without its bias,
    then the Triton epilogue (bias + ReLU, in place, one pass); RuntimeError without
    triton."""
    tn, why = triton_module("conv2d_relu")
    if tn is None:
        raise RuntimeError(f"conv2d_relu: the transposed epilogue needs triton: {why}")
    y = F.conv_transpose2d(x, weight, None, stride=stride, padding=padding)
    if bias is None:
        return F.relu_(y)
    n, c, h, w = y.shape
    fmt = memory_format(y)
    cl = fmt == torch.channels_last
    y = y.contiguous(memory_format=fmt)
    block = EPILOGUE_BLOCK
    run_launches([Launch(tn._bias_relu_kernel, (-(-y.numel() // block),),
                         (y, bias.contiguous(), y.numel(), c, h * w),
                         dict(CHANNELS_LAST=cl, BLOCK=block, num_warps=4))], y.device)
    return y


def _pair_of_ints(v) -> list[int] | None:
    """An int or a pair of ints (as the torch ops take them) as [a, b]; None for anything
    else (padding="same", a 1-D input's single int in a tuple, ...)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return [v, v]
    if (isinstance(v, (tuple, list)) and len(v) == 2
            and all(isinstance(i, int) and not isinstance(i, bool) for i in v)):
        return list(v)
    return None


def _fused_call(x, weight, bias, stride: int, padding: int, transposed: bool):
    """The library call for x's device and dtype, or None where there is none (also for
    the forms only the plain ops take: an unbatched 3-D x, non-integer stride/padding)."""
    s, p, one = _pair_of_ints(stride), _pair_of_ints(padding), [1, 1]
    if x.dim() != 4 or s is None or p is None:
        return None
    # oneDNN's post-op convolutions read the bias as dense memory, whatever its strides
    bias = bias.contiguous() if bias is not None else None
    if x.is_cuda or (x.is_meta and recording_launches()):
        if x.dtype not in _CUDA_DTYPES or torch.backends.cudnn.deterministic:
            return None
        if transposed:
            if triton_module("conv2d_relu")[0] is None:
                return None
            return lambda: transposed_then_epilogue(x, weight, bias, stride, padding)
        cudnn = torch.backends.cudnn
        if x.is_meta or not (cudnn.is_available() and cudnn.enabled):
            return None
        return lambda: torch.cudnn_convolution_relu(x, weight, bias, s, p, one, 1)
    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    if x.device.type != "cpu" or x.dtype not in _CPU_DTYPES or not onednn:
        return None
    ops = torch.ops.mkldnn
    if transposed:
        return lambda: ops._convolution_transpose_pointwise(x, weight, bias, p, [0, 0], s, one,
                                                            1, "relu", [], "")
    return lambda: ops._convolution_pointwise(x, weight, bias, p, s, one, 1, "relu", [], "")


def _first_call(fused, plain) -> str | None:
    """Why the fused form cannot be used, from one call of each form (None: it can): it
    fails, or its output differs from the plain ops' by more than twice the dtype's op
    tolerance (TF32's at least: one op rounded two ways) where theirs is finite (the
    library's ReLU maps NaN to 0). A library that reads memory it should not, or a wrong
    engine for one shape, lands far beyond. The plain ops' own error (the caller's
    mistake: a channel count, a dtype) is raised."""
    try:
        got = fused()
    except Exception as exc:  # cuDNN's RuntimeError, a Triton compile error, ...
        plain()
        return f"failed ({type(exc).__name__}: {exc})"
    want = plain()
    if got.shape != want.shape:
        return f"gave shape {tuple(got.shape)} where the plain ops give {tuple(want.shape)}"
    rel = errors(got, want)[1]
    if rel <= 2 * max(tolerance(want.dtype).op_rel, tolerance("tf32").op_rel):
        return None
    return f"differs from the plain ops (relative error {rel:.1e} where they are finite)"


def _key(x, weight, stride, padding, transposed) -> tuple:
    """The decision key of a call (see ``_use_fused``)."""
    if x.is_cuda:
        return (x.device, x.dtype, next_pow2(x.shape[0]), tuple(x.shape[1:]), x.stride(),
                tuple(weight.shape), weight.stride(), tuple(_pair_of_ints(stride)),
                tuple(_pair_of_ints(padding)), transposed, tf32_key())
    return (x.device.type, x.dtype, transposed)


def _drop(key: tuple, x, transposed: bool, failure: str) -> None:
    """The plain ops for ``key`` from now on, said once (a KernelFallbackWarning)."""
    form = "transposed convolution" if transposed else "convolution"
    warnings.warn(f"bridgegan.kernels.conv2d_relu: the fused {form} + bias + ReLU {failure} "
                  f"on {x.device.type} in {dtype_name(x.dtype)} at input shape "
                  f"{tuple(x.shape)}; using the plain torch ops there from now on.",
                  KernelFallbackWarning, stacklevel=caller_stacklevel())
    _USE_FUSED[key] = False


def _use_fused(x, weight, stride, padding, transposed, fused, plain) -> bool:
    """Whether this call takes the fused form (the module docstring's decision, made once
    per key and remembered). Meta tensors, whose launches are only recorded, always do.
    The CUDA key holds the batch's power-of-two class, not its size: a process called at
    every batch size (uncaptured calls, a server's varying batches) times each layer shape
    once per class (a logarithmic number), the faster form being a matter of the layer and
    the batch's magnitude, not of its last rows; a form that only fails at huge sizes
    (32-bit indexing) is met by a timing of its own class."""
    if x.is_meta:
        return True
    key = _key(x, weight, stride, padding, transposed)
    if key in _USE_FUSED:
        return _USE_FUSED[key]
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return False
    with _DECIDING:
        if key not in _USE_FUSED:  # not decided by a thread it waited for
            failure = _first_call(fused, plain)  # raises the caller's mistakes: no decision
            if failure is not None:
                _drop(key, x, transposed, failure)
                return False
            # device time (``queued``): the saved launches of the bias and ReLU passes would
            # win small shapes by host time alone, which a CUDA graph's replay does not spend
            _USE_FUSED[key] = not x.is_cuda or statistics.median(
                time_calls(fused, x.device, warmup=1, reps=5, queued=True)) <= statistics.median(
                time_calls(plain, x.device, warmup=1, reps=5, queued=True))
        return _USE_FUSED[key]


def conv2d_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                stride: int = 1, padding: int = 0, transposed: bool = False,
                impl: str = "auto") -> torch.Tensor:
    """``relu(conv2d(x, weight, bias))`` (or ``conv_transpose2d``) as one library call
    where the device has one; see the module docstring."""
    check_impl("conv2d_relu", impl)
    given = [t for t in (x, weight, bias) if t is not None]
    if len({t.dtype for t in given}) > 1:  # as the plain ops refuse them (oneDNN would not)
        fail("conv2d_relu", "x, weight and bias must have one dtype, got "
             + ", ".join(dtype_name(t.dtype) for t in given))
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (x, weight, bias))
    plain = functools.partial(_plain, x, weight, bias, stride, padding, transposed)
    if impl == "torch" or grad or tracing() or not _bias_fits(weight, bias, transposed):
        return plain()
    call = _fused_call(x, weight, bias, stride, padding, transposed)
    if call is None or not _use_fused(x, weight, stride, padding, transposed, call, plain):
        return plain()
    try:
        return call()
    except torch.OutOfMemoryError:
        raise  # memory, not the form: a later call may have it (as CudaGraphed treats it)
    except Exception as exc:  # decided at another shape (the CPU decides once per dtype), or
        # a Triton specialisation that does not compile (OutOfResources, PTXASError)
        out = plain()  # the caller's mistake raises the plain ops' own message
        _drop(_key(x, weight, stride, padding, transposed), x, transposed,
              f"failed ({type(exc).__name__}: {exc})")
        return out


def _bias_fits(weight, bias, transposed: bool) -> bool:
    """Whether ``bias`` (None: no bias) has one value per output channel: the fused forms
    read it by channel (CUDA's epilogue would read past a short one), the plain ops refuse
    other lengths with their own message."""
    if bias is None:
        return True
    if weight.dim() < 2:
        return False  # the plain ops' message for the weight
    return tuple(bias.shape) == (weight.shape[1] if transposed else weight.shape[0],)
