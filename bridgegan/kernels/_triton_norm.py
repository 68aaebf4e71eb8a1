"""Triton kernels for instance norm + modulation + activation (forward only).

This module imports triton at import time; :mod:`bridgegan.kernels.norm_act` imports it
lazily so that ``import bridgegan.kernels`` works without triton.

Every kernel sees a tensor as a 3-D strided view ``[N][HW][C]`` (element ``(n, p, c)`` at
``n * s_n + p * s_hw + c * s_c``), so one set of kernels serves both memory formats:

* NCHW (``HW_MAJOR``): ``s_hw = 1``, ``s_c = H*W``; tiles are ``[BLOCK_C, BLOCK_HW]``
  (``BLOCK_C`` whole planes, often just one), reductions along axis 1;
* channels_last: ``s_c = 1``, ``s_hw = C``; tiles are ``[BLOCK_HW, BLOCK_C]``: pixels of
  ``BLOCK_C`` neighbouring channels, reductions along axis 0.

Either way the contiguous memory axis is the tile's last axis, which is the order of
Triton's default blocked layout, so loads/stores need no layout conversion (a [HW, C]
tile over NCHW memory measured 2-4x slower on an H100).

Kernels:

``_fused_kernel``
    One program per (n, block of channels) holding the whole H*W extent in registers:
    x (and a residual) is read from memory exactly once, mean and variance are computed
    two-pass on the registers (mean first, then the mean of squared deviations), then the
    tile is modulated and written. Used when ``next_pow2(H*W) * BLOCK_C`` fits the
    register budget.
``_stats_kernel`` + ``_apply_kernel``
    Split path for large planes: the H*W axis is cut into chunks; the first kernel
    writes per-chunk (mean, M2) partials (and each plane's pivot, below), the second
    kernel merges the partials of its channels (Chan's parallel formula) and normalises
    its chunk. x is read twice (the second time, with a residual, as the stored sum). A
    chunk's partial is built one of two ways (``LANES``): each lane of the tile keeps its
    own Welford (mean, M2; its count follows from the iteration and its row) over the loop
    and the lanes are merged (Chan) in one reduction after it (the default: no cross-warp
    reduction inside the loop), or each tile is reduced two-pass and merged into the running
    partial (Chan) per iteration.

With a residual (``HAS_RES``: ``r``, read at 1 / ``UP`` of x's size, nearest) the fused
and stats kernels normalise the sum x + up(r): they store it at ``t`` (its dtype) and use
it as stored, so the sum is written once and no add kernel runs before them.

Statistics are float32 whatever the storage dtype, and shifted: every kernel subtracts
the plane's first pixel (per channel; the split path's apply kernel reads the pivot the
stats kernel kept, as x may be overwritten by then when out is x) before it sums, so
the sums see deviations of the order of the plane's spread, not its distance from zero
(x - pivot is exact when the two are within a factor of two). Unshifted float32 sums lose
about eps * |mean| / std of accuracy: against float64 (interpreter, both layouts, every
path), max abs error up to 3e-5 at planes 100 standard deviations off zero and 4e-3 at
10^4; shifted, 1e-6 at both (1e-7 relative). ``SHIFT=False`` (``plan_launch(config={"shift":
False})``) leaves the shift out, as a sweep row that prices it.

The output is cast to the output pointer's dtype. All arithmetic on masked-off lanes is
zeroed before reductions so a NaN or Inf in the data propagates exactly like the torch
reference (a NaN or Inf in a plane, the pivot included, makes that plane's mean/variance
NaN) and nothing else.

Operands (constexpr ``HAS_*`` flags; an absent one costs nothing): per-pixel maps gamma
and beta (strided like x), per-channel vectors weight and bias (IN affine) and ``mb``, the
(2C,) gamma/beta convolution bias (C gamma biases, then C beta biases), and the residual
``r`` with its sum ``t``. Per-channel vectors are read once per program, in float32.
"""

# no postponed annotations (PEP 563): Triton < 3.2's interpreter tells tl.constexpr
# parameters by the annotation object, not by the string "tl.constexpr"

import triton
import triton.language as tl

ACT_CODES = {"none": 0, "relu": 1, "leaky_relu": 2}


@triton.jit
def _tile(rows, cols, s_hw, s_c, HW_MAJOR: tl.constexpr):
    """2-D offsets of a tile: [cols, rows] when HW_MAJOR, else [rows, cols]."""
    if HW_MAJOR:
        offs = cols[:, None] * s_c + rows[None, :] * s_hw
    else:
        offs = rows[:, None] * s_hw + cols[None, :] * s_c
    return offs


@triton.jit
def _tile_mask(rmask, cmask, HW_MAJOR: tl.constexpr):
    if HW_MAJOR:
        m = cmask[:, None] & rmask[None, :]
    else:
        m = rmask[:, None] & cmask[None, :]
    return m


@triton.jit
def _sum_hw(x, HW_MAJOR: tl.constexpr):
    """Sum a tile over its pixel axis -> one value per channel."""
    if HW_MAJOR:
        r = tl.sum(x, axis=1)
    else:
        r = tl.sum(x, axis=0)
    return r


@triton.jit
def _per_hw(v, HW_MAJOR: tl.constexpr):
    """Broadcast a per-pixel vector over the channel axis of a tile."""
    if HW_MAJOR:
        b = v[None, :]
    else:
        b = v[:, None]
    return b


@triton.jit
def _per_c(v, HW_MAJOR: tl.constexpr):
    """Broadcast a per-channel vector over the pixel axis of a tile."""
    if HW_MAJOR:
        b = v[:, None]
    else:
        b = v[None, :]
    return b


@triton.jit
def _up_offsets(rows, cols, W, s_h, s_w, s_c, UP: tl.constexpr, HW_MAJOR: tl.constexpr):
    """Tile offsets of a tensor read at 1 / UP of the tile's resolution (nearest): pixel
    ``p`` of a W-wide image reads pixel (p // W // UP, p % W // UP) (strides s_h, s_w)."""
    return _tile((rows // W // UP) * s_h + (rows % W // UP) * s_w, cols, 1, s_c, HW_MAJOR)


@triton.jit
def _load_tile(x_n, rows, cols, mask, sxhw, sxc, HW_MAJOR: tl.constexpr):
    """A tile of x in float32 (0.0 on masked-off lanes)."""
    x = tl.load(x_n + _tile(rows, cols, sxhw, sxc, HW_MAJOR), mask=mask, other=0.0)
    return x.to(tl.float32)


@triton.jit
def _input_tile(x_n, r_n, t_n, rows, cols, mask, sxhw, sxc, W, srh, srw, src, sthw, stc,
                HAS_RES: tl.constexpr, UP: tl.constexpr, HW_MAJOR: tl.constexpr):
    """A tile of the normalised input in float32: x, or (``HAS_RES``) the sum x + up(r),
    which is stored at t in t's dtype and used as stored."""
    x = _load_tile(x_n, rows, cols, mask, sxhw, sxc, HW_MAJOR)
    if HAS_RES:
        r = tl.load(r_n + _up_offsets(rows, cols, W, srh, srw, src, UP, HW_MAJOR), mask=mask,
                    other=0.0)
        t = (x + r.to(tl.float32)).to(t_n.dtype.element_ty)
        tl.store(t_n + _tile(rows, cols, sthw, stc, HW_MAJOR), t, mask=mask)
        x = t.to(tl.float32)
    return x


@triton.jit
def _pivot(x_n, r_n, t_n, cols, cmask, sxc, src, HAS_RES: tl.constexpr, SHIFT: tl.constexpr):
    """The shift of a plane's statistics: its first pixel (of the sum, with a residual),
    per channel, in float32; 0.0 when not ``SHIFT``."""
    if SHIFT:
        p = tl.load(x_n + cols * sxc, mask=cmask, other=0.0).to(tl.float32)
        if HAS_RES:
            r = tl.load(r_n + cols * src, mask=cmask, other=0.0).to(tl.float32)
            p = (p + r).to(t_n.dtype.element_ty).to(tl.float32)
    else:
        p = tl.zeros_like(cols).to(tl.float32)
    return p


@triton.jit
def _shifted(x, mask, pivot, HW_MAJOR: tl.constexpr):
    """x - pivot, 0.0 on masked-off lanes; ``pivot`` from _pivot."""
    return tl.where(mask, x - _per_c(pivot, HW_MAJOR), 0.0)


@triton.jit
def _rstd(var, eps):
    """1 / sqrt(var + eps), and 0 where var + eps is 0 (eps=0 on a constant plane, or on
    a one-pixel one: x - mean is 0 there, and the output is the shift) as in torch's
    instance norm, where 0 * rsqrt(0) would be NaN; NaN stays NaN."""
    v = var + eps
    zero = v == 0.0
    return tl.where(zero, 0.0, tl.rsqrt(tl.where(zero, 1.0, v)))


@triton.jit
def _vectors(w_ptr, bias_ptr, mb_ptr, C, cols, cmask, HAS_W: tl.constexpr,
             HAS_BIAS: tl.constexpr, HAS_MB: tl.constexpr):
    """IN weight and bias, and the gamma and beta halves of mb (C gamma biases first)."""
    return (_load_c(w_ptr, cols, cmask, HAS_W), _load_c(bias_ptr, cols, cmask, HAS_BIAS),
            _load_c(mb_ptr, cols, cmask, HAS_MB), _load_c(mb_ptr + C, cols, cmask, HAS_MB))


@triton.jit
def _load_c(ptr, cols, cmask, HAS: tl.constexpr):
    """A per-channel vector in float32, loaded once per program (0.0 when absent: unused)."""
    if HAS:
        v = tl.load(ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        v = 0.0
    return v


@triton.jit
def _modulate_act(d, rstd, offs_g, offs_b, mask, g_ptr, b_ptr, w, bias, g_bias, b_bias,
                  slope, HAS_G: tl.constexpr, HAS_BETA: tl.constexpr, HAS_W: tl.constexpr,
                  HAS_BIAS: tl.constexpr, HAS_MB: tl.constexpr, ACT: tl.constexpr,
                  HW_MAJOR: tl.constexpr):
    # Same operation order as the reference: x_hat = (x - mean) * rstd, then
    # x_hat * (1 + (gamma + g_bias)) + (beta + b_bias) (SPADE) or x_hat * weight + bias
    # (IN affine). w, bias, g_bias, b_bias: per-channel vectors from _load_c.
    y = d * _per_c(rstd, HW_MAJOR)
    if HAS_G:
        g = tl.load(g_ptr + offs_g, mask=mask, other=0.0).to(tl.float32)
        if HAS_MB:
            g = g + _per_c(g_bias, HW_MAJOR)
        y = y * (1.0 + g)
    if HAS_W:
        y = y * _per_c(w, HW_MAJOR)
    if HAS_BETA:
        b = tl.load(b_ptr + offs_b, mask=mask, other=0.0).to(tl.float32)
        if HAS_MB:
            b = b + _per_c(b_bias, HW_MAJOR)
        y = y + b
    elif HAS_MB:
        y = y + _per_c(b_bias, HW_MAJOR)
    if HAS_BIAS:
        y = y + _per_c(bias, HW_MAJOR)
    # `where(y < 0, ...)` keeps NaN as NaN (max(y, 0) may map NaN to 0 on GPU).
    if ACT == 1:
        y = tl.where(y < 0.0, 0.0, y)
    elif ACT == 2:
        y = tl.where(y < 0.0, y * slope, y)
    return y


@triton.jit
def _fused_kernel(x_ptr, g_ptr, b_ptr, w_ptr, bias_ptr, mb_ptr, out_ptr, r_ptr, t_ptr,
                  C, HW, W, n_cblocks,
                  sxn, sxhw, sxc, sgn, sghw, sgc, sbn, sbhw, sbc, son, sohw, soc,
                  srn, srh, srw, src, stn, sthw, stc,
                  inv_hw, eps, slope,
                  HAS_G: tl.constexpr, HAS_BETA: tl.constexpr, HAS_W: tl.constexpr,
                  HAS_BIAS: tl.constexpr, HAS_MB: tl.constexpr, ACT: tl.constexpr,
                  HW_MAJOR: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
                  SHIFT: tl.constexpr, HAS_RES: tl.constexpr, UP: tl.constexpr):
    pid = tl.program_id(0)
    n = (pid // n_cblocks).to(tl.int64)
    cb = pid % n_cblocks
    rows = tl.arange(0, BLOCK_HW)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = _tile_mask(rows < HW, cmask, HW_MAJOR)

    x_n, r_n, t_n = x_ptr + n * sxn, r_ptr + n * srn, t_ptr + n * stn
    x = _input_tile(x_n, r_n, t_n, rows, cols, mask, sxhw, sxc, W, srh, srw, src, sthw, stc,
                    HAS_RES, UP, HW_MAJOR)
    pivot = _pivot(x_n, r_n, t_n, cols, cmask, sxc, src, HAS_RES, SHIFT)
    xs = _shifted(x, mask, pivot, HW_MAJOR)
    mean = _sum_hw(xs, HW_MAJOR) * inv_hw  # of x - pivot
    d = tl.where(mask, xs - _per_c(mean, HW_MAJOR), 0.0)
    var = _sum_hw(d * d, HW_MAJOR) * inv_hw
    rstd = _rstd(var, eps)
    w, bias, g_bias, b_bias = _vectors(w_ptr, bias_ptr, mb_ptr, C, cols, cmask,
                                       HAS_W, HAS_BIAS, HAS_MB)

    offs_g = n * sgn + _tile(rows, cols, sghw, sgc, HW_MAJOR)
    offs_b = n * sbn + _tile(rows, cols, sbhw, sbc, HW_MAJOR)
    y = _modulate_act(d, rstd, offs_g, offs_b, mask, g_ptr, b_ptr, w, bias, g_bias, b_bias,
                      slope, HAS_G, HAS_BETA, HAS_W, HAS_BIAS, HAS_MB, ACT, HW_MAJOR)
    tl.store(out_ptr + n * son + _tile(rows, cols, sohw, soc, HW_MAJOR),
             y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _chan_merge(mean_a, m2_a, n_a, mean_b, m2_b, n_b):
    """Chan et al.: (count, mean, M2) of two parts -> of their union (empty parts allowed:
    their term is 0, not delta**2 * 0, which is NaN where delta**2 overflows; then M2 is
    Inf, as the fused path's and torch's float32 variance are)."""
    n = n_a + n_b
    w_b = tl.where(n > 0, n_b / tl.where(n > 0, n, 1.0), 0.0)
    delta = mean_b - mean_a
    between = n_a * w_b
    return (mean_a + delta * w_b,
            m2_a + m2_b + tl.where(between > 0, delta * delta * between, 0.0), n)


@triton.jit
def _stats_kernel(x_ptr, mean_ptr, m2_ptr, pivot_ptr, r_ptr, t_ptr,
                  C, HW, W, n_cblocks, CHUNK, n_chunks,
                  sxn, sxhw, sxc, srn, srh, srw, src, stn, sthw, stc,
                  HW_MAJOR: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
                  SHIFT: tl.constexpr, LANES: tl.constexpr, HAS_RES: tl.constexpr,
                  UP: tl.constexpr):
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    n = (pid // n_cblocks).to(tl.int64)
    cb = pid % n_cblocks
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    start = chunk * CHUNK
    end = tl.minimum(start + CHUNK, HW)
    x_n, r_n, t_n = x_ptr + n * sxn, r_ptr + n * srn, t_ptr + n * stn
    pivot = _pivot(x_n, r_n, t_n, cols, cmask, sxc, src, HAS_RES, SHIFT)  # partials: of x - pivot

    if LANES:
        # per lane: Welford over the loop (masked lanes keep their state); one merge after.
        # A lane's pixels are a prefix of the iterations (only the last tile is partial), so
        # its count is the iteration number while it is valid, and after the loop a
        # function of its row: no per-lane count is carried through the loop.
        if HW_MAJOR:
            l_mean = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
        else:
            l_mean = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        l_m2 = l_mean
        for off in range(start, end, BLOCK_HW):
            rows = off + tl.arange(0, BLOCK_HW)
            mask = _tile_mask(rows < end, cmask, HW_MAJOR)
            x = _shifted(_input_tile(x_n, r_n, t_n, rows, cols, mask, sxhw, sxc, W, srh, srw,
                                     src, sthw, stc, HAS_RES, UP, HW_MAJOR), mask, pivot, HW_MAJOR)
            k = ((off - start) // BLOCK_HW + 1).to(tl.float32)
            delta = tl.where(mask, x - l_mean, 0.0)
            l_mean = l_mean + delta / k
            l_m2 = l_m2 + delta * tl.where(mask, x - l_mean, 0.0)
        lane = tl.arange(0, BLOCK_HW)
        span = end - start
        counts = tl.where(lane < span, (span - lane + BLOCK_HW - 1) // BLOCK_HW, 0)
        l_n = _per_hw(counts.to(tl.float32), HW_MAJOR) + tl.zeros_like(l_mean)
        if HW_MAJOR:
            acc_mean, acc_m2, _ = tl.reduce((l_mean, l_m2, l_n), 1, _chan_merge)
        else:
            acc_mean, acc_m2, _ = tl.reduce((l_mean, l_m2, l_n), 0, _chan_merge)
    else:
        acc_mean = tl.zeros([BLOCK_C], dtype=tl.float32)
        acc_m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
        for off in range(start, end, BLOCK_HW):
            rows = off + tl.arange(0, BLOCK_HW)
            rmask = rows < end
            mask = _tile_mask(rmask, cmask, HW_MAJOR)
            x = _shifted(_input_tile(x_n, r_n, t_n, rows, cols, mask, sxhw, sxc, W, srh, srw,
                                     src, sthw, stc, HAS_RES, UP, HW_MAJOR), mask, pivot, HW_MAJOR)
            r = tl.sum(tl.where(rmask, 1.0, 0.0), axis=0)          # rows in this tile
            t_mean = _sum_hw(x, HW_MAJOR) / r
            d = tl.where(mask, x - _per_c(t_mean, HW_MAJOR), 0.0)
            t_m2 = _sum_hw(d * d, HW_MAJOR)
            n_a = (off - start) * 1.0
            acc_mean, acc_m2, _ = _chan_merge(acc_mean, acc_m2, n_a, t_mean, t_m2, r)

    poffs = (n * n_chunks + chunk) * C + cols
    tl.store(mean_ptr + poffs, acc_mean, mask=cmask)
    tl.store(m2_ptr + poffs, acc_m2, mask=cmask)
    # the apply kernel's pivot: kept here, since its own output may overwrite x (out=x)
    if chunk == 0:
        tl.store(pivot_ptr + n * C + cols, pivot, mask=cmask)


@triton.jit
def _apply_kernel(x_ptr, g_ptr, b_ptr, w_ptr, bias_ptr, mb_ptr, out_ptr, mean_ptr, m2_ptr,
                  pivot_ptr,
                  C, HW, n_cblocks, CHUNK, n_chunks,
                  sxn, sxhw, sxc, sgn, sghw, sgc, sbn, sbhw, sbc, son, sohw, soc,
                  inv_hw, eps, slope,
                  HAS_G: tl.constexpr, HAS_BETA: tl.constexpr, HAS_W: tl.constexpr,
                  HAS_BIAS: tl.constexpr, HAS_MB: tl.constexpr, ACT: tl.constexpr,
                  HW_MAJOR: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
                  NCHUNK_P2: tl.constexpr):
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    n = (pid // n_cblocks).to(tl.int64)
    cb = pid % n_cblocks
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C

    # Merge the per-chunk partials of these channels (Chan's formula, all chunks).
    k = tl.arange(0, NCHUNK_P2)
    kmask = k < n_chunks
    pmask = kmask[:, None] & cmask[None, :]
    poffs = (n * n_chunks + k[:, None]) * C + cols[None, :]
    p_mean = tl.load(mean_ptr + poffs, mask=pmask, other=0.0)
    p_m2 = tl.load(m2_ptr + poffs, mask=pmask, other=0.0)
    cnt = tl.where(kmask, tl.minimum(HW - k * CHUNK, CHUNK), 0).to(tl.float32)
    mean = tl.sum(cnt[:, None] * p_mean, axis=0) * inv_hw  # of x - pivot
    dm = tl.where(pmask, p_mean - mean[None, :], 0.0)
    var = tl.sum(p_m2 + cnt[:, None] * dm * dm, axis=0) * inv_hw
    rstd = _rstd(var, eps)
    w, bias, g_bias, b_bias = _vectors(w_ptr, bias_ptr, mb_ptr, C, cols, cmask,
                                       HAS_W, HAS_BIAS, HAS_MB)

    x_n = x_ptr + n * sxn  # with a residual, x is the sum the stats kernel stored
    pivot = tl.load(pivot_ptr + n * C + cols, mask=cmask, other=0.0)
    start = chunk * CHUNK
    end = tl.minimum(start + CHUNK, HW)
    for off in range(start, end, BLOCK_HW):
        rows = off + tl.arange(0, BLOCK_HW)
        mask = _tile_mask(rows < end, cmask, HW_MAJOR)
        xs = _shifted(_load_tile(x_n, rows, cols, mask, sxhw, sxc, HW_MAJOR), mask, pivot,
                      HW_MAJOR)
        d = tl.where(mask, xs - _per_c(mean, HW_MAJOR), 0.0)
        offs_g = n * sgn + _tile(rows, cols, sghw, sgc, HW_MAJOR)
        offs_b = n * sbn + _tile(rows, cols, sbhw, sbc, HW_MAJOR)
        y = _modulate_act(d, rstd, offs_g, offs_b, mask, g_ptr, b_ptr, w, bias, g_bias,
                          b_bias, slope, HAS_G, HAS_BETA, HAS_W, HAS_BIAS, HAS_MB, ACT, HW_MAJOR)
        tl.store(out_ptr + n * son + _tile(rows, cols, sohw, soc, HW_MAJOR),
                 y.to(out_ptr.dtype.element_ty), mask=mask)
