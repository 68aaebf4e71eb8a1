"""Fused instance norm + modulation + activation: SPADE and IN blocks.

Two public ops, each one entry point with a torch path beside the Triton path:

``spade_modulate(x, gamma, beta=None, act, eps, negative_slope, impl, *, bias=None)``
    ``act(instance_norm(x) * (1 + gamma + bias[c]) + beta + bias[C + c])``; gamma/beta
    are (N, C, H, W) like x, or gamma alone is the (N, 2C, H, W) output of a merged
    gamma/beta convolution (first C channels gamma, next C beta). ``bias`` (2C,) is that
    convolution's bias (C gamma biases, then C beta biases), added here instead of in a
    separate pass over the (N, 2C, H, W) output; None adds nothing.
``instance_norm_act(x, weight, bias, act, eps, negative_slope, impl)``
    ``act(instance_norm(x) * weight[c] + bias[c])`` (weight/bias may be None).

Both take ``residual=``: the input is then the residual sum ``x + up(residual)`` (the
residual x's size, or half of it, nearest-upsampled by a broadcast), and the call returns
``(out, sum)``: the next block's shortcut needs the sum too. The Triton path computes the
sum in the norm kernel, which stores it (rounded to x's dtype, and normalised as stored),
so the sum is written once and never re-read for the statistics, and no separate add
kernel runs; the torch path adds, then normalises.

instance_norm is without affine parameters, biased variance over H*W per (n, c).
act is one of "none", "relu", "leaky_relu" (``negative_slope`` for the last).

impl:
  ``"torch"``  plain torch ops (mean, sub, mul, rsqrt, add, relu/leaky_relu) in float32
               for fp16/bf16/fp32 storage (float64 stays float64), cast back to the input
               dtype. This is the oracle and it is what ONNX export traces.
  ``"triton"`` the fused kernels in :mod:`._triton_norm`; needs a CUDA tensor, or a CPU
               tensor with TRITON_INTERPRET=1 set before this package is imported
               (the CPU interpreter, how CI tests the kernels). fp16/bf16/fp32 only.
               Under a tracer (ONNX export, TorchScript) the torch path, as for "auto".
  ``"auto"``   Triton for CUDA tensors when triton imports; otherwise the torch path, with
               one :class:`KernelFallbackWarning` per process. While tracing / exporting
               to ONNX it always takes the torch path, silently.

Numerics: statistics are float32 whatever the storage dtype (mean first, then the mean of
squared deviations; Chan's formula where a plane is cut into tiles), of each plane shifted
by its first pixel on both paths (``_triton_norm`` says why), the output is the
input dtype and keeps the input's memory format (NCHW or channels_last; a non-dense input
gives a dense output in the format its strides suggest). NaN/Inf propagate as on the
torch path: a NaN or Inf in an (n, c) plane makes that whole output plane NaN.

Autograd: the Triton path is forward-only kernels wrapped in a ``torch.autograd.Function``
whose backward recomputes the torch path's math with torch ops (float32 statistics) and
differentiates it (differentiably under ``create_graph=True``: double backward works).
That keeps the backward exactly the torch path's gradient at the cost of one
recomputation; this engine is inference-first, so no backward kernels are written.
The torch path is plain differentiable torch.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..numerics import dtype_name
from .dispatch import (TORCH_DTYPES, KernelFallbackWarning, Launch, check_impl,
                       check_like, choose_impl, fail, run_launches, tracing, triton_available,
                       triton_interpreted, triton_module)
from .layout import (add_upsampled, flattenable, hw_strides, is_channels_last, memory_format,
                     next_pow2, upsampled_shapes)
from .registry import IMPLS

__all__ = [
    "ACTS",
    "IMPLS",
    "KernelFallbackWarning",
    "LaunchPlan",
    "instance_norm_act",
    "plan_launch",
    "spade_modulate",
    "triton_available",
    "triton_interpreted",
]

ACTS = ("none", "relu", "leaky_relu")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- validation


def _check_x(op: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        fail(op, f"x must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        fail(op, f"x must be 4-D (N, C, H, W), got {x.dim()}-D shape {tuple(x.shape)}")
    if x.dtype not in TORCH_DTYPES:
        fail(op, f"x has dtype {dtype_name(x.dtype)}; accepted: float16, bfloat16, float32 "
                 "(and float64 on the torch path)")


def _check_map(op: str, name: str, t, x: torch.Tensor, channels: tuple[int, ...] = (),
               shapes: tuple[tuple[int, ...], ...] = ()) -> None:
    """A spatial tensor (gamma/beta/out/residual): x's dtype and device, and (N, c, H, W)
    for c in ``channels`` or one of ``shapes``."""
    if not isinstance(t, torch.Tensor):
        fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    n, _, h, w = x.shape
    shapes = tuple((n, k, h, w) for k in channels) + shapes
    if tuple(t.shape) not in shapes:
        fail(op, f"{name} has shape {tuple(t.shape)}; accepted: "
                 f"{' or '.join(str(s) for s in shapes)} for x of shape {tuple(x.shape)}")
    check_like(op, name, t, x, "x")


def _check_vec(op: str, name: str, t, x: torch.Tensor, size: int | None = None,
               what: str = "one value per channel") -> None:
    """A per-channel vector or None: 1-D of ``size`` (default C), floating, on x's device."""
    if t is None:
        return
    size = x.shape[1] if size is None else size
    if not isinstance(t, torch.Tensor):
        fail(op, f"{name} must be a torch.Tensor of shape ({size},) or None, "
                 f"got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != size:
        fail(op, f"{name} has shape {tuple(t.shape)}; accepted: ({size},) ({what}) or None")
    if t.dtype not in TORCH_DTYPES:
        fail(op, f"{name} has dtype {dtype_name(t.dtype)}; it must be a floating dtype: "
                 "float16, bfloat16, float32 or float64 (read in float32, or float64 for "
                 "float64 x)")
    check_like(op, name, t, x, "x", dtype=False)


def _check_common(op: str, act, eps, negative_slope, impl) -> None:
    if act not in ACTS:
        fail(op, f"unknown act {act!r}; accepted: {', '.join(repr(a) for a in ACTS)}")
    check_impl(op, impl)
    # numbers.Real: Python and numpy real scalars (numpy.float32 is no float subclass)
    if (isinstance(eps, bool) or not isinstance(eps, numbers.Real)
            or not math.isfinite(eps) or eps < 0):
        fail(op, f"eps must be a finite real number >= 0, got {eps!r} ({type(eps).__name__})")
    if (isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real)
            or not math.isfinite(negative_slope)):
        fail(op, f"negative_slope must be a finite real number, got {negative_slope!r} "
                 f"({type(negative_slope).__name__})")


# ----------------------------------------------------------------------------- torch path


def _torch_ops(x, gamma, beta, weight, bias, mod_bias, act, eps, negative_slope):
    """The oracle: exact torch math, float32 statistics for fp16/bf16, ONNX-traceable.

    gamma may be the merged (N, 2C, H, W) tensor when beta is None; mod_bias is
    spade_modulate's (2C,) ``bias`` (C gamma biases, then C beta biases).
    """
    cdt = torch.float32 if x.dtype in _LOW_PRECISION else x.dtype
    # torch's own instance norm: one pass for the statistics and one to normalise
    # (and an InstanceNormalization node in ONNX), on the float32 upcast of x minus each
    # plane's first pixel, as the Triton kernels shift it (``_triton_norm`` says why;
    # instance norm does not see a per-plane shift). It also makes constant planes
    # exactly 0 (unshifted: up to |x| * 2e-5 in torch and 6e-5 in onnxruntime, whose
    # E[x^2] - E[x]^2 variance cancels). For fp16 / bf16 the shift is part of the upcast
    # (one kernel); for float32 it is one more elementwise pass.
    w = None if weight is None else weight.to(cdt)
    b = None if bias is None else bias.to(cdt)
    if x.shape[-2] * x.shape[-1] > 1:
        xf = x - x[:, :, :1, :1].to(cdt)
        y = F.instance_norm(xf, weight=w, bias=b, eps=eps)
    else:  # torch refuses one-pixel planes; x - mean is 0 there (NaN for NaN / Inf)
        xf = x.to(cdt)
        y = xf - xf
        y = y if w is None else y * w.reshape(1, -1, 1, 1)
        y = y if b is None else y + b.reshape(1, -1, 1, 1)
    if gamma is not None:
        c = x.shape[1]
        if beta is None and gamma.shape[1] == 2 * c:
            gamma, beta = gamma[:, :c], gamma[:, c:]
        g = gamma.to(cdt)
        b = None if beta is None else beta.to(cdt)
        if mod_bias is not None:
            mb = mod_bias.to(cdt).reshape(1, 2 * c, 1, 1)
            g = g + mb[:, :c]
            b = mb[:, c:] if b is None else b + mb[:, c:]
        y = torch.addcmul(y, y, g)  # y * (1 + gamma + bias[c])
        if b is not None:
            y = y + b               # + beta + bias[C + c]
    if act == "relu":
        y = F.relu(y)
    elif act == "leaky_relu":
        y = F.leaky_relu(y, negative_slope)
    return y.to(x.dtype)


# ----------------------------------------------------------------------------- launch plan

FUSED_MAX_ELEMS = 16384      # a program keeps at most this many values of a tile in registers
FUSED_TILE_TARGET = 4096     # small planes: pack planes/channels into tiles of about this size
SPLIT_TILE = 4096            # split path: elements per loop tile
SPLIT_TARGET_PROGRAMS = 1024 # split path: cut H*W into chunks until about this many programs
MAX_CHUNKS = 256
CL_MIN_BLOCK_C = 16          # channels_last: at least this many channels per row (>= 32 bytes)
CL_SPLIT_BLOCK_C = 32


def _prev_pow2(v: int) -> int:
    return 1 if v <= 1 else 1 << (v.bit_length() - 1)


@dataclass(frozen=True)
class LaunchPlan:
    """How one call is launched. path "fused": x read once, whole H*W in registers;
    "split": stats kernel over H*W chunks, then an apply kernel (x read twice)."""

    path: str
    hw_major: bool  # tiles are [channels, pixels] (NCHW) rather than [pixels, channels]
    block_hw: int
    block_c: int
    num_warps: int
    n_cblocks: int
    chunk: int = 0
    n_chunks: int = 1
    lanes: bool = True  # split stats: per-lane Welford, one merge after the loop (else per tile)
    shift: bool = True  # statistics of x minus each plane's first pixel (see _triton_norm)

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.n_cblocks,) if self.path == "fused" else (self.n_cblocks, self.n_chunks)


def _warps_for(elems: int) -> int:
    return max(1, min(16, _prev_pow2(max(1, elems // 512))))


def plan_launch(n: int, c: int, hw: int, channels_last: bool, config: dict | None = None) -> LaunchPlan:
    """Choose the kernel path, tile and warps for an (n, c, hw) problem.

    ``config`` overrides: ``max_fused`` (largest register tile, elements; a small value
    forces the split path), ``fused_tile`` (packing target for small planes),
    ``split_tile``, ``block_c``, ``num_warps``, ``target_programs``, ``path``
    ("fused"/"split", to force one when it is legal), ``stats`` (the split path's
    statistics: "lanes", the default, or "tiles"; see :mod:`._triton_norm`), ``shift``
    (False: unshifted statistics, less accurate far from zero; a sweep row that prices
    the shift).
    """
    cfg = dict(config or {})
    unknown = set(cfg) - {"max_fused", "fused_tile", "split_tile", "block_c", "num_warps",
                          "target_programs", "path", "stats", "shift"}
    if unknown:
        raise ValueError(f"plan_launch: unknown config keys {sorted(unknown)}")
    stats = cfg.get("stats", "lanes")
    if stats not in ("lanes", "tiles"):
        raise ValueError(f"plan_launch: stats must be 'lanes' or 'tiles', got {stats!r}")
    shift = cfg.get("shift", True)
    if not isinstance(shift, bool):
        raise ValueError(f"plan_launch: shift must be True or False, got {shift!r}")
    max_fused = int(cfg.get("max_fused", FUSED_MAX_ELEMS))
    fused_tile = int(cfg.get("fused_tile", FUSED_TILE_TARGET))
    split_tile = int(cfg.get("split_tile", SPLIT_TILE))
    target = int(cfg.get("target_programs", SPLIT_TARGET_PROGRAMS))
    hw_p2, c_p2 = next_pow2(hw), next_pow2(c)
    # H*W = 1: the channels are the contiguous axis whatever the format: channel tiles.
    channels_last = channels_last or hw == 1
    bc_min = min(c_p2, CL_MIN_BLOCK_C) if channels_last else 1
    if "block_c" in cfg:
        bc_min = min(c_p2, next_pow2(int(cfg["block_c"])))
    fused_ok = hw_p2 * bc_min <= max_fused
    path = cfg.get("path", "fused" if fused_ok else "split")
    if path == "fused" and not fused_ok:
        path = "split"
    if path == "fused":
        bc = bc_min
        if "block_c" not in cfg:
            while bc * 2 <= c_p2 and hw_p2 * bc * 2 <= min(max_fused, fused_tile):
                bc *= 2
        n_cb = -(-c // bc)
        nw = int(cfg.get("num_warps", _warps_for(hw_p2 * bc)))
        return LaunchPlan("fused", not channels_last, hw_p2, bc, nw, n * n_cb, shift=shift)
    if "block_c" in cfg:
        bc = bc_min
    else:
        bc = min(c_p2, CL_SPLIT_BLOCK_C) if channels_last else 1
    bhw = max(1, min(hw_p2, _prev_pow2(max(1, split_tile // bc)), _prev_pow2(max(1, max_fused // bc))))
    n_cb = -(-c // bc)
    tiles = -(-hw // bhw)
    n_chunks = max(1, min(-(-target // (n * n_cb)), tiles, MAX_CHUNKS))
    chunk = -(-tiles // n_chunks) * bhw
    n_chunks = -(-hw // chunk)
    nw = int(cfg.get("num_warps", _warps_for(bhw * bc)))
    return LaunchPlan("split", not channels_last, bhw, bc, nw, n * n_cb, chunk, n_chunks,
                      stats == "lanes", shift)


@functools.lru_cache(maxsize=256)
def _cached_plan(n: int, c: int, hw: int, channels_last: bool) -> LaunchPlan:
    return plan_launch(n, c, hw, channels_last)


# ----------------------------------------------------------------------------- triton path


def triton_launches(op, x, gamma, beta, weight, bias, mod_bias, act, eps, slope, out, config,
                    residual=None):
    """The output tensor of a Triton call, the sum x + up(residual) (None without a
    residual) and the kernel launches that compute them, in order (no kernel runs here:
    :mod:`bridgegan.engine.targets` compiles them for a GPU that is absent)."""
    tn, why = triton_module(op)
    if tn is None:
        raise RuntimeError(f"bridgegan.kernels.{op}(impl='triton'): {why}")
    n, c, h, w = x.shape
    hw = h * w
    fmt = memory_format(x)
    cl = fmt == torch.channels_last
    x = flattenable(x, fmt)
    def same_order(t):
        # Maps in the other memory format than x are copied into x's, so that every load
        # of a tile walks memory in the same order (correct either way, just slower).
        if t is not None and hw > 1 and is_channels_last(t) != cl:
            t = t.contiguous(memory_format=fmt)
        return flattenable(t, fmt)

    if gamma is not None and beta is None and gamma.shape[1] == 2 * c:
        gamma = same_order(gamma)
        gamma, beta = gamma[:, :c], gamma[:, c:]   # views: strides carry the split
    else:
        gamma, beta = same_order(gamma), same_order(beta)
    if out is None:
        out = torch.empty_like(x, memory_format=fmt)
    total = None if residual is None else torch.empty_like(x, memory_format=fmt)
    weight, bias, mod_bias = (t.contiguous() if t is not None else None
                              for t in (weight, bias, mod_bias))

    plan = _cached_plan(n, c, hw, cl) if config is None else plan_launch(n, c, hw, cl, config)
    sx = hw_strides(x)
    so = hw_strides(out)
    sg = hw_strides(gamma) if gamma is not None else (0, 0, 0)
    sb = hw_strides(beta) if beta is not None else (0, 0, 0)
    flags = dict(HAS_G=gamma is not None, HAS_BETA=beta is not None, HAS_W=weight is not None,
                 HAS_BIAS=bias is not None, HAS_MB=mod_bias is not None, ACT=tn.ACT_CODES[act])
    ptrs = tuple(t if t is not None else x for t in (gamma, beta, weight, bias, mod_bias))
    inv_hw = 1.0 / hw
    n_cb = plan.n_cblocks // n
    tiles = dict(HW_MAJOR=plan.hw_major, BLOCK_HW=plan.block_hw, BLOCK_C=plan.block_c,
                 num_warps=plan.num_warps)
    # the residual (read at 1 / UP of x's size: (n, h, w, c) strides) and the sum
    r, t = (x, x) if residual is None else (residual, total)
    sr = (r.stride(0), r.stride(2), r.stride(3), r.stride(1))
    st = hw_strides(t)
    res = dict(HAS_RES=residual is not None, UP=1 if r.shape[-1] == w else 2)
    if plan.path == "fused":
        return out, total, [Launch(tn._fused_kernel, plan.grid, (
            x, *ptrs, out, r, t, c, hw, w, n_cb, *sx, *sg, *sb, *so, *sr, *st,
            inv_hw, float(eps), float(slope)), dict(flags, **tiles, **res, SHIFT=plan.shift))]
    p_mean = torch.empty((n, plan.n_chunks, c), dtype=torch.float32, device=x.device)
    p_m2 = torch.empty_like(p_mean)
    pivot = torch.empty((n, c), dtype=torch.float32, device=x.device)
    return out, total, [
        Launch(tn._stats_kernel, plan.grid, (
            x, p_mean, p_m2, pivot, r, t, c, hw, w, n_cb, plan.chunk, plan.n_chunks,
            *sx, *sr, *st), dict(tiles, LANES=plan.lanes, **res, SHIFT=plan.shift)),
        Launch(tn._apply_kernel, plan.grid, (  # x: the sum, where the stats kernel stored it
            t, *ptrs, out, p_mean, p_m2, pivot, c, hw, n_cb, plan.chunk, plan.n_chunks,
            *st, *sg, *sb, *so, inv_hw, float(eps), float(slope)),
            dict(flags, **tiles, NCHUNK_P2=next_pow2(plan.n_chunks)))]


def _triton_forward(op, x, gamma, beta, weight, bias, mod_bias, act, eps, slope, out, config,
                    residual=None):
    out, total, launches = triton_launches(op, x, gamma, beta, weight, bias, mod_bias, act,
                                           eps, slope, out, config, residual)
    run_launches(launches, x.device)
    return out if residual is None else (out, total)


class _NormActFunction(torch.autograd.Function):
    """Triton forward; backward = autograd of the torch path's math (recomputed)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, weight, bias, mod_bias, spec):
        op, act, eps, slope, config = spec
        ctx.spec = spec
        ctx.save_for_backward(x, gamma, beta, weight, bias, mod_bias)
        return _triton_forward(op, x, gamma, beta, weight, bias, mod_bias, act, eps, slope,
                               None, config)

    @staticmethod
    def backward(ctx, grad_out):
        _, act, eps, slope, _ = ctx.spec
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[:6]
        if torch.is_grad_enabled():
            # create_graph=True (a gradient of this gradient follows): differentiate the
            # recomputation on the saved inputs themselves, so that the gradients carry
            # their graph back to the inputs (detached leaves would cut it)
            wrt = [t for t, nd in zip(saved, needs) if nd and t is not None]
            y = _torch_ops(*saved, act, eps, slope)
            grads = iter(torch.autograd.grad(y, wrt, grad_out, create_graph=True))
            return (*[next(grads) if (nd and t is not None) else None
                      for t, nd in zip(saved, needs)], None)
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(bool(nd)) if t is not None else None
                      for t, nd in zip(saved, needs)]
            y = _torch_ops(*leaves, act, eps, slope)
            wrt = [t for t, nd in zip(leaves, needs) if nd and t is not None]
            grads = iter(torch.autograd.grad(y, wrt, grad_out) if wrt else ())
        return (*[next(grads) if (nd and t is not None) else None for t, nd in zip(saved, needs)],
                None)


# ----------------------------------------------------------------------------- dispatch


def _dense_per_sample(x: torch.Tensor, gamma) -> int:
    """Elements per sample of the dense tensors the Triton path may allocate: its output
    (and residual sum) in x's shape, and dense copies of the maps (the merged gamma: 2C)."""
    return max(math.prod(t.shape[1:]) for t in (x, gamma) if t is not None)


def _byte_range(t: torch.Tensor) -> tuple[int, int]:
    """The bytes [start, end) a (non-empty) tensor's elements lie in."""
    start = t.data_ptr()
    span = 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))
    return start, start + span * t.element_size()


def _unsafe_out(out: torch.Tensor, inputs) -> bool:
    """Whether ``out`` may share memory with one of ``inputs`` (None skipped) other than as
    its exact alias (same first element, shape and strides: each element is then read by
    the program that writes it, before it writes it). Conservative: intersecting byte
    ranges count as shared (interleaved views get a copy they did not need)."""
    if out.numel() == 0 or out.is_meta:
        return False
    o0, o1 = _byte_range(out)
    for t in inputs:
        if t is None or t.numel() == 0 or t.device != out.device:
            continue
        if (t.data_ptr() == out.data_ptr() and t.shape == out.shape
                and t.stride() == out.stride()):
            continue
        t0, t1 = _byte_range(t)
        if t0 < o1 and o0 < t1:
            return True
    return False


def _run(op, x, gamma, beta, weight, bias, mod_bias, act, eps, slope, impl, out, config,
         residual=None):
    """The op on x, or with ``residual`` on the sum x + up(residual): then (out, sum)."""
    if out is not None:
        _check_map(op, "out", out, x, (x.shape[1],))
        if torch._debug_has_internal_overlap(out) == 1:  # 1: yes (2: too hard to tell)
            fail(op, f"out has elements that share memory (strides {out.stride()}: an "
                     "expanded tensor?); pass a tensor whose elements are distinct, such as "
                     "torch.empty_like(x)")
    if residual is not None:
        _check_map(op, "residual", residual, x, shapes=upsampled_shapes(x.shape))
    tensors = (x, gamma, beta, weight, bias, mod_bias)
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors + (residual,))
    if grad and out is not None:
        fail(op, "out= does not support autograd; pass out=None when inputs require grad")
    chosen = "torch" if x.numel() == 0 else choose_impl(op, x, impl, (gamma, beta, residual, out),
                                                        dense=_dense_per_sample(x, gamma))
    if residual is not None and (chosen == "torch" or grad):
        # the sum by torch ops (autograd sees it), then the op on it as on any input
        total = add_upsampled(x, residual)
        return _run(op, total, gamma, beta, weight, bias, mod_bias, act, eps, slope, impl,
                    out, config), total
    if x.numel() == 0:
        return out if out is not None else torch.empty_like(x)
    if chosen == "torch":
        y = _torch_ops(*tensors, act, eps, slope)
        fmt = memory_format(x)
        if not tracing() and not y.is_contiguous(memory_format=fmt):
            y = y.contiguous(memory_format=fmt)
        if out is not None:
            out.copy_(y)
            return out
        return y
    if out is not None and (hw_strides(out) is None or _unsafe_out(
            out, (x, gamma, beta, residual, weight, bias, mod_bias))):
        # The kernels write out tile by tile while other programs (and, on the split path,
        # other launches) still read their inputs: an out that overlaps an input other
        # than as its exact alias would be read after it was written. Such an out, and
        # one whose H and W do not flatten, gets a fresh result copied in (as the torch
        # path does).
        res = _run(op, x, gamma, beta, weight, bias, mod_bias, act, eps, slope, impl, None,
                   config, residual)
        out.copy_(res if residual is None else res[0])
        return out if residual is None else (out, res[1])
    if grad:
        # the Function saves its inputs for the backward, which inference tensors refuse
        # (the torch path saves what its ops need): save normal copies of those
        tensors = tuple(t.clone() if t is not None and t.is_inference() else t
                        for t in tensors)
        return _NormActFunction.apply(*tensors, (op, act, float(eps), float(slope), config))
    return _triton_forward(op, *tensors, act, eps, slope, out, config, residual)


def spade_modulate(x, gamma, beta=None, act="none", eps=1e-5, negative_slope=0.2,
                   impl="auto", *, bias=None, residual=None, out=None, config=None):
    """``act(instance_norm(x) * (1 + gamma + bias[c]) + beta + bias[C + c])`` (SPADE
    modulation, fused).

    Args:
        x: (N, C, H, W) float16/bfloat16/float32 (float64 on the torch path), NCHW or
            channels_last, any strides.
        gamma: (N, C, H, W) like x; or, with ``beta=None``, (N, 2C, H, W): the output of a
            merged gamma/beta convolution, first C channels gamma, next C beta.
        beta: (N, C, H, W) like x, or None (no shift; or merged into gamma).
        bias: (2C,) per-channel biases of the gamma/beta convolution(s), in either form:
            the first C are added to gamma, the next C to beta (to the shift when there
            is no beta map). Any float dtype on x's device, read in float32 (float64 for
            float64 x). None: no bias, at no cost.
        act: "none", "relu" or "leaky_relu" (slope ``negative_slope``).
        eps: added to the variance (biased, over H*W, float32).
        impl: "auto", "triton" or "torch" (see the module docstring).
        residual: None, or (N, C, H, W) like x, or (N, C, H/2, W/2) (nearest-upsampled by
            a broadcast): the op normalises x + up(residual), a residual block's output
            (see the module docstring).
        out: optional output tensor (x's shape, dtype, device); written and returned.
        config: launch overrides for the Triton path (see :func:`plan_launch`); tuning and
            tests only.

    Returns the result in x's dtype and memory format; with a residual, (result, sum).
    """
    op = "spade_modulate"
    _check_common(op, act, eps, negative_slope, impl)
    _check_x(op, x)
    c = x.shape[1]
    if beta is None:
        _check_map(op, "gamma", gamma, x, (c, 2 * c))
    else:
        _check_map(op, "gamma", gamma, x, (c,))
        _check_map(op, "beta", beta, x, (c,))
    _check_vec(op, "bias", bias, x, 2 * c, "2C: C gamma biases, then C beta biases")
    return _run(op, x, gamma, beta, None, None, bias, act, float(eps), float(negative_slope),
                impl, out, config, residual)


def instance_norm_act(x, weight=None, bias=None, act="none", eps=1e-5, negative_slope=0.2,
                      impl="auto", *, residual=None, out=None, config=None):
    """``act(instance_norm(x) * weight[c] + bias[c])`` (IN block, fused).

    weight/bias: (C,) floating tensors on x's device, or None (no scale / no shift).
    Other arguments as in :func:`spade_modulate`.
    """
    op = "instance_norm_act"
    _check_common(op, act, eps, negative_slope, impl)
    _check_x(op, x)
    _check_vec(op, "weight", weight, x)
    _check_vec(op, "bias", bias, x)
    return _run(op, x, None, None, weight, bias, None, act, float(eps), float(negative_slope),
                impl, out, config, residual)
