"""Memory layouts as the Triton kernels see them: a 4-D tensor as a strided [N][H*W][C]
view, one set of kernels for both NCHW and channels_last; the power-of-two tile sizes
their launches use; and the half-size shortcut of an up block, added as a broadcast."""
from __future__ import annotations

import torch


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether a 4-D tensor's channels are its innermost axis (channels_last, dense or not)."""
    if t.is_contiguous():
        return False
    if t.is_contiguous(memory_format=torch.channels_last):
        return True
    _, c, h, w = t.shape
    if c == 1:
        return False
    sc = t.stride(1)
    spatial = [t.stride(d) for d, size in ((2, h), (3, w)) if size > 1]
    return all(sc < s for s in spatial)


def memory_format(t: torch.Tensor) -> torch.memory_format:
    """The memory format a 4-D tensor's strides follow (see :func:`is_channels_last`)."""
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format


def hw_strides(t: torch.Tensor):
    """(s_n, s_hw, s_c) of t viewed as [N][H*W][C], or None if H, W do not flatten."""
    _, _, h, w = t.shape
    sn, sc, sh, sw = t.stride()
    if h == 1:
        shw = sw
    elif w == 1 or sh == w * sw:
        shw = sw if w > 1 else sh
    else:
        return None
    return sn, shw, sc


def flattenable(t: torch.Tensor | None, fmt) -> torch.Tensor | None:
    """t, or a dense copy in ``fmt`` where its H and W do not flatten into one axis."""
    if t is None or hw_strides(t) is not None:
        return t
    return t.contiguous(memory_format=fmt)


def next_pow2(v: int) -> int:
    """The smallest power of two >= v (1 for v <= 1)."""
    return 1 if v <= 1 else 1 << (v - 1).bit_length()


def upsampled_shapes(shape) -> tuple[tuple[int, ...], ...]:
    """The shapes of a tensor that :func:`add_upsampled` adds to one of ``shape`` (N, C, H,
    W): the same, or half its H and W where both are even (nearest-upsampled)."""
    n, c, h, w = shape
    half = ((n, c, h // 2, w // 2),) if h % 2 == 0 and w % 2 == 0 else ()
    return (tuple(shape),) + half


def add_upsampled(h: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """h + low, with ``low`` nearest-upsampled 2x when it has half h's size, as one
    broadcast add: each low-resolution pixel is read for its 2x2 output pixels and the
    upsampled tensor is never built (either memory format)."""
    if low.shape == h.shape:
        return h + low
    n, c, hl, wl = low.shape  # no shape arithmetic: nothing for an exporter to trace
    return (h.view(n, c, hl, 2, wl, 2) + low.view(n, c, hl, 1, wl, 1)).reshape(h.shape)
