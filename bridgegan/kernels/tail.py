"""The generator's tail in one pass: ``tanh(conv1x1(relu(h + up(shortcut)), weight) + bias)``.

G ends with its last up block's residual sum, a ReLU, the 1x1 ``to_rgb`` convolution and
tanh. As separate ops that is five passes over the last block's output (the widest
activations at the image size: broadcast add, ReLU, convolution, its bias, tanh); the
fused kernel reads h and the shortcut once and writes only the K output channels.

``rgb_tail(h, weight, bias=None, shortcut=None, impl="auto")``
    h: (N, C, H, W); shortcut: None, (N, C, H, W), or (N, C, H/2, W/2), the
    low-resolution shortcut of an up block, nearest-upsampled by the broadcast (H, W
    even); weight: (K, C) or (K, C, 1, 1), K <= 16; bias: (K,) or None.

impl as in :mod:`.norm_act`: "torch" (the plain ops in float32 for fp16/bf16 storage,
float64 stays float64: the oracle), "triton" (the kernel in :mod:`._triton_tail`: CUDA, or
the CPU under TRITON_INTERPRET=1), "auto" (Triton for CUDA tensors, else the torch path
with the one :class:`KernelFallbackWarning`; the torch path under a tracer). The output
has h's dtype and memory format. The kernel is forward only: while autograd records, the
torch path runs whatever impl says.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..numerics import dtype_name
from .dispatch import (TORCH_DTYPES, Launch, check_impl, check_like, choose_impl, fail,
                       run_launches, triton_module)
from .layout import (add_upsampled, flattenable, hw_strides, memory_format, next_pow2,
                     upsampled_shapes)

__all__ = ["rgb_tail"]

MAX_OUTPUTS = 16  # K: the kernel unrolls one dot product per output channel
TILE = 4096  # a program's pixels x channels (one row of next_pow2(C) channels when C is wider)


def _check(h, weight, bias, shortcut, impl) -> None:
    check_impl("rgb_tail", impl)
    if not isinstance(h, torch.Tensor) or h.dim() != 4 or h.dtype not in TORCH_DTYPES:
        what = (f"{h.dim()}-D {dtype_name(h.dtype)}" if isinstance(h, torch.Tensor)
                else type(h).__name__)
        fail("rgb_tail", f"h must be a 4-D (N, C, H, W) float16/bfloat16/float32/float64 "
                         f"tensor, got {what}")
    c = h.shape[1]
    if not isinstance(weight, torch.Tensor) or weight.shape[1:] not in ((c,), (c, 1, 1)) \
            or not 1 <= weight.shape[0] <= MAX_OUTPUTS:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        fail("rgb_tail", f"weight has shape {got}; accepted: (K, {c}) or (K, {c}, 1, 1) "
                         f"with 1 <= K <= {MAX_OUTPUTS} for h of shape {tuple(h.shape)}")
    k = weight.shape[0]
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (k,)):
        got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        fail("rgb_tail", f"bias has shape {got}; accepted: ({k},) (one per output channel) "
                         f"or None")
    if shortcut is not None:
        shape = tuple(shortcut.shape) if isinstance(shortcut, torch.Tensor) else None
        if shape not in upsampled_shapes(h.shape):
            accepted = " or ".join(str(s) for s in upsampled_shapes(h.shape))
            fail("rgb_tail", f"shortcut has shape {shape or type(shortcut).__name__}; "
                             f"accepted: {accepted} or None for h of shape {tuple(h.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("shortcut", shortcut)):
        if t is not None:
            check_like("rgb_tail", name, t, h, "h")


def _torch_tail(h, weight, bias, shortcut) -> torch.Tensor:
    cdt = torch.float64 if h.dtype == torch.float64 else torch.float32
    v = h.to(cdt)
    if shortcut is not None:
        s = shortcut.to(cdt)
        v = add_upsampled(v, s)
    w = weight.reshape(weight.shape[0], -1, 1, 1).to(cdt)
    y = torch.tanh(F.conv2d(F.relu(v), w, None if bias is None else bias.to(cdt)))
    return y.to(h.dtype).contiguous(memory_format=memory_format(h))


def triton_launches(h, weight, bias, shortcut):
    """The output tensor of a Triton call and its one kernel launch (not run here)."""
    tn, why = triton_module("rgb_tail")
    if tn is None:
        raise RuntimeError(f"bridgegan.kernels.rgb_tail(impl='triton'): {why}")
    n, c, hh, ww = h.shape
    k = weight.shape[0]
    fmt = memory_format(h)
    h = flattenable(h, fmt)
    out = torch.empty((n, k, hh, ww), dtype=h.dtype, device=h.device, memory_format=fmt)
    block_c = next_pow2(c)
    block_p = max(1, min(next_pow2(hh * ww), TILE // block_c))
    n_pb = -(-(hh * ww) // block_p)
    s = shortcut if shortcut is not None else h
    weight = weight.reshape(k, c).contiguous()
    b = bias.contiguous() if bias is not None else weight  # the kernel reads b_ptr + k
    return out, [Launch(tn._rgb_tail_kernel, (n * n_pb,), (
        h, s, weight, b, out,
        c, hh * ww, ww, n_pb, *hw_strides(h), *s.stride(), *hw_strides(out)), dict(
        K=k, HAS_S=shortcut is not None,
        UP=1 if shortcut is None or shortcut.shape[-1] == ww else 2,
        HAS_B=bias is not None, HW_MAJOR=fmt == torch.contiguous_format,
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4))]


def rgb_tail(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
             shortcut: torch.Tensor | None = None, impl: str = "auto") -> torch.Tensor:
    """``tanh(conv1x1(relu(h + up(shortcut)), weight) + bias)`` in one pass; see the
    module docstring."""
    _check(h, weight, bias, shortcut, impl)
    if h.numel() == 0:
        fmt = memory_format(h)
        out = torch.empty((h.shape[0], weight.shape[0], *h.shape[2:]), dtype=h.dtype,
                          device=h.device, memory_format=fmt)
        # C = 0 leaves N*K*H*W outputs: a convolution over no channels is 0, so tanh(bias)
        return out.copy_(torch.tanh(bias).reshape(1, -1, 1, 1)) if bias is not None \
            else out.zero_()
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (h, weight, bias, shortcut))
    # dense: h's dense copy when its H and W do not flatten, and the (N, K, H, W) output
    dense = max(h.shape[1], weight.shape[0]) * h.shape[2] * h.shape[3]
    if grad or choose_impl("rgb_tail", h, impl, (shortcut,), dense) == "torch":
        return _torch_tail(h, weight, bias, shortcut)  # forward only
    out, launches = triton_launches(h, weight, bias, shortcut)
    run_launches(launches, h.device)
    return out
