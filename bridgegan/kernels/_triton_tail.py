"""Triton kernel for the generator's tail (forward only): ``tanh(W relu(h + up(s)) + b)``.

Imports triton at import time; :mod:`bridgegan.kernels.tail` imports it lazily. One
program per (n, block of pixels) holds all C channels of its pixels (tiles laid out as in
:mod:`._triton_norm`: the contiguous memory axis last), adds the shortcut (read at half
resolution when it is the low-resolution shortcut of an up block: pixel (i, j) reads
(i // 2, j // 2)), applies the ReLU, then for each of the K outputs a dot product over the
channels, the bias and tanh. h and s are read once; nothing else is written but the
K-channel output. Arithmetic in float32; NaN/Inf propagate as in the torch ops.
"""
# no postponed annotations (PEP 563): Triton < 3.2's interpreter tells tl.constexpr
# parameters by the annotation object, not by the string "tl.constexpr"

import triton
import triton.language as tl

from ._triton_norm import _per_c, _tile, _tile_mask, _up_offsets


@triton.jit
def _tanh(y):
    # sign(y) (1 - e) / (1 + e), e = exp(-2|y|) <= 1: no overflow; NaN stays NaN. 1 - e
    # cancels for small |y| (about 6e-8 absolute whatever |y|: up to 5e-3 relative at 1e-5), so
    # below 1/4 the odd Taylor series to y^9 (truncation < 1e-8 relative) is used instead.
    a = tl.abs(y)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    small = a < 0.25
    ys = tl.where(small, y, 0.0)  # the series only where it is used: no overflow elsewhere
    y2 = ys * ys
    p = ys * (1.0 + y2 * (-1.0 / 3.0 + y2 * (2.0 / 15.0 + y2 * (-17.0 / 315.0
                                                                 + y2 * (62.0 / 2835.0)))))
    return tl.where(small, p, tl.where(y < 0.0, -t, t))


@triton.jit
def _rgb_tail_kernel(h_ptr, s_ptr, w_ptr, b_ptr, out_ptr,
                     C, HW, W, n_pblocks,
                     shn, shhw, shc, ssn, ssc, ssh, ssw, son, sohw, soc,
                     K: tl.constexpr, HAS_S: tl.constexpr, UP: tl.constexpr,
                     HAS_B: tl.constexpr, HW_MAJOR: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    n = (pid // n_pblocks).to(tl.int64)
    rows = (pid % n_pblocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tl.arange(0, BLOCK_C)
    rmask = rows < HW
    cmask = cols < C
    mask = _tile_mask(rmask, cmask, HW_MAJOR)
    v = tl.load(h_ptr + n * shn + _tile(rows, cols, shhw, shc, HW_MAJOR),
                mask=mask, other=0.0).to(tl.float32)
    if HAS_S:
        v += tl.load(s_ptr + n * ssn + _up_offsets(rows, cols, W, ssh, ssw, ssc, UP, HW_MAJOR),
                     mask=mask, other=0.0).to(tl.float32)
    v = tl.where(v < 0.0, 0.0, v)  # ReLU that keeps NaN
    for k in tl.static_range(K):
        wk = tl.load(w_ptr + k * C + cols, mask=cmask, other=0.0).to(tl.float32)
        y = tl.sum(v * _per_c(wk, HW_MAJOR), axis=0 if HW_MAJOR else 1)  # over channels
        if HAS_B:
            y += tl.load(b_ptr + k).to(tl.float32)
        tl.store(out_ptr + n * son + rows * sohw + k * soc,
                 _tanh(y).to(out_ptr.dtype.element_ty), mask=rmask)
