"""Triton kernel for a convolution's epilogue where the library has no fused form: a
per-channel bias and a ReLU applied in place, one pass (forward only).

Imports triton at import time; :mod:`bridgegan.kernels.conv_act` imports it lazily. The
tensor is dense, NCHW or channels_last (``CHANNELS_LAST``): element ``i`` is channel
``(i // HW) % C`` or ``i % C``. Arithmetic in float32; the ReLU keeps NaN.
"""
# no postponed annotations (PEP 563): Triton < 3.2's interpreter tells tl.constexpr
# parameters by the annotation object, not by the string "tl.constexpr"

import triton
import triton.language as tl


@triton.jit
def _bias_relu_kernel(y_ptr, b_ptr, numel, C, HW, CHANNELS_LAST: tl.constexpr,
                      BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    if CHANNELS_LAST:
        c = offs % C
    else:
        c = (offs // HW) % C
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y += tl.load(b_ptr + c, mask=mask, other=0.0).to(tl.float32)
    y = tl.where(y < 0.0, 0.0, y)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
