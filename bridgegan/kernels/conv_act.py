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
              Under a tracer, or when autograd records, the plain ops, silently. The first
              fused call per (device, dtype, form) is a probe: if it fails (a cuDNN build
              without the fused engine, a Triton that cannot compile the epilogue), one
              :class:`KernelFallbackWarning`, the plain ops from then on; after a probe
              that worked, errors propagate. On CUDA each shape (and TF32 setting) then
              times both forms once (five calls each, outside CUDA-graph capture) and
              keeps the faster: cuDNN's fused convolution-bias-ReLU has been far slower
              than the plain convolution for some shapes in channels_last
              (pytorch#68506); a shape whose fused call fails there takes the plain ops.
              Until a shape is timed, a capture records the plain ops. With
              ``cudnn.deterministic`` set, or oneDNN disabled, the plain ops.

NaN: the libraries' fused ReLU is max(y, 0), which maps a NaN to 0, where the plain ops
(and the Triton epilogue) keep it. The engine refuses non-finite inputs before they
reach the graph, so a NaN here comes from the weights or from overflow.
"""
from __future__ import annotations

import functools
import statistics
import warnings

import torch
import torch.nn.functional as F

from ..numerics import dtype_name
from ..timing import time_calls
from .dispatch import (KernelFallbackWarning, Launch, recording_launches, run_launches,
                       tracing, triton_module)
from .layout import is_channels_last

__all__ = ["conv2d_relu"]

IMPLS = ("auto", "torch")
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CPU_DTYPES = (torch.bfloat16, torch.float32)
_PROBED: dict[tuple, bool] = {}  # (device type, dtype, transposed) -> the fused call works
_FASTER: dict[tuple, bool] = {}  # a CUDA call's shapes and strides -> the fused form is faster


def _plain(x, weight, bias, stride: int, padding: int, transposed: bool) -> torch.Tensor:
    if transposed:
        return F.relu(F.conv_transpose2d(x, weight, bias, stride=stride, padding=padding))
    return F.relu(F.conv2d(x, weight, bias, stride=stride, padding=padding))


def transposed_then_epilogue(x, weight, bias, stride: int, padding: int) -> torch.Tensor:
    """``relu(conv_transpose2d(x, weight, bias))`` as the convolution without its bias,
    then the Triton epilogue (bias + ReLU, in place, one pass); RuntimeError without
    triton."""
    tn, why = triton_module("conv")
    if tn is None:
        raise RuntimeError(f"conv2d_relu: the transposed epilogue needs triton: {why}")
    y = F.conv_transpose2d(x, weight, None, stride=stride, padding=padding)
    if bias is None:
        return F.relu_(y)
    n, c, h, w = y.shape
    cl = is_channels_last(y)
    y = y.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    block = 1024
    run_launches([Launch(tn._bias_relu_kernel, (-(-y.numel() // block),),
                         (y, bias.contiguous(), y.numel(), c, h * w),
                         dict(CHANNELS_LAST=cl, BLOCK=block, num_warps=4))], y.device)
    return y


def _fused_call(x, weight, bias, stride: int, padding: int, transposed: bool):
    """The library call for x's device and dtype, or None where there is none."""
    s, p, one = [stride] * 2, [padding] * 2, [1, 1]
    if x.is_cuda or (x.is_meta and recording_launches()):
        if x.dtype not in _CUDA_DTYPES or torch.backends.cudnn.deterministic:
            return None
        if transposed:
            if triton_module("conv")[0] is None:
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


def _fused_is_faster(x, weight, stride, padding, transposed, fused, plain) -> bool:
    """On CUDA, whether the fused form beats the plain ops at this call's shapes: timed once
    per shape and TF32 setting (median of five calls each), never while a CUDA graph is
    being captured (the plain ops until then); False where the fused call fails. Elsewhere
    True: the CPU's post-op was measured faster."""
    if not x.is_cuda:
        return True
    shape = (x.device, x.dtype, tuple(x.shape), x.stride(), tuple(weight.shape),
             weight.stride(), stride, padding, transposed, torch.backends.cudnn.allow_tf32)
    if shape not in _FASTER:
        if torch.cuda.is_current_stream_capturing():
            return False
        try:
            t_fused = statistics.median(time_calls(fused, x.device, warmup=1, reps=5))
        except Exception as exc:  # no fused engine for this shape: the plain ops there
            warnings.warn(f"bridgegan.kernels.conv2d_relu: the fused form failed at shape "
                          f"{tuple(x.shape)} ({type(exc).__name__}: {exc}); using the plain "
                          "ops for that shape.", KernelFallbackWarning, stacklevel=3)
            _FASTER[shape] = False
            return False
        t_plain = statistics.median(time_calls(plain, x.device, warmup=1, reps=5))
        _FASTER[shape] = t_fused <= t_plain
    return _FASTER[shape]


def conv2d_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                stride: int = 1, padding: int = 0, transposed: bool = False,
                impl: str = "auto") -> torch.Tensor:
    """``relu(conv2d(x, weight, bias))`` (or ``conv_transpose2d``) as one library call
    where the device has one; see the module docstring."""
    if impl not in IMPLS:
        raise ValueError(f"conv2d_relu: unknown impl {impl!r}; accepted: "
                         f"{', '.join(repr(i) for i in IMPLS)}")
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (x, weight, bias))
    if impl == "torch" or grad or tracing():
        return _plain(x, weight, bias, stride, padding, transposed)
    key = (x.device.type, x.dtype, transposed)
    call = None if _PROBED.get(key) is False else _fused_call(x, weight, bias, stride, padding,
                                                               transposed)
    plain = functools.partial(_plain, x, weight, bias, stride, padding, transposed)
    if call is None:
        return plain()
    if key in _PROBED:
        faster = _fused_is_faster(x, weight, stride, padding, transposed, call, plain)
        return call() if faster else plain()
    try:
        y = call()
    except Exception as exc:  # the probe: cuDNN's RuntimeError, a Triton compile error, ...
        _PROBED[key] = False
        form = "transposed convolution" if transposed else "convolution"
        warnings.warn(f"bridgegan.kernels.conv2d_relu: the fused {form} + bias + ReLU failed "
                      f"on {x.device.type} in {dtype_name(x.dtype)} ({type(exc).__name__}: "
                      f"{exc}); using the plain torch ops there from now on.",
                      KernelFallbackWarning, stacklevel=2)
        return plain()
    _PROBED[key] = True
    return y
