"""The inference graph: G, E and M of a trained BridgeGAN rewritten for speed.

Every rewrite is exact up to float rounding (tests check each alone and all together
against the reference model):

- ``merge_gamma_beta``: a SPADE layer's gamma and beta convolutions become one
  convolution of 2C outputs; the fused kernel reads gamma and beta from that one tensor.
- ``batch_hidden``: the SPADE hidden convolutions that read the same resized latent at one
  resolution run as one convolution (their weights concatenated); all SPADE modulations
  are computed from S before the decoder runs.
- ``four_phase``: a 3x3 convolution after a nearest 2x upsample equals four 2x2
  convolutions at the low resolution, one per output phase (2.25x fewer FLOPs, and the
  upsampled tensor is never built); used by the up blocks of G and M and by the SPADE
  hidden convolution at the full image size.
- ``transposed_up``: the same convolutions as one transposed convolution of stride 2
  with a 4x4 kernel (the four phases' taps interleaved): the same FLOPs, and no padding
  or reassembly pass (cuDNN, oneDNN, ONNX ConvTranspose and TensorRT run it natively).
  Where it is on it replaces ``four_phase``; ``Rewrites.only("four_phase")`` selects that.
- ``fold_labels``: E's stem convolution (1x1) reads the image and A spatially constant
  label planes; its label part is a per-sample bias d W + b, so the stem convolves the
  3 image channels only and the tiled (N, A, H, W) labels are never built. The bias is
  carried beside the activations, not added to them: E's blocks norm first (their
  instance norms cancel a per-channel constant) and their shortcuts are 1x1 convolutions,
  pooling or the identity (which map it to another such constant), so it is an (N, C)
  vector, computed in float32 (from coefficients held in the graph's dtype) by E's head,
  which adds it before its ReLU and runs in float32 (TensorRT's reduced-precision plans
  pin the head's layers to float32: ``export.tensorrt_build``).
  Added to the stem's output, a constant tens to hundreds of times a channel's spread
  (strength 1.5-3) rounded the image part away in bf16 (the shipped model: 9 of 32 images
  of a three-reference translation at strength 3 below 40 dB).
- ``fold_bias``: the bias of a convolution followed directly by instance normalisation
  cancels in the mean subtraction and is dropped.
- ``kernel_bias`` (``impl="triton"`` only): the gamma/beta convolutions run without their
  bias and the fused SPADE kernel adds it as a per-channel vector, so no separate pass
  over the (N, 2C, H, W) modulation adds it (ATen adds a bias after cuDNN's convolution).
  On the torch path, which ONNX export traces, the convolution keeps it: oneDNN, ONNX
  Runtime and TensorRT fuse a convolution's bias themselves.
- ``fused_relu``: the SPADE hidden convolution, its bias and its ReLU as one library call
  (cuDNN's convolution-bias-activation on CUDA, oneDNN's post-op on the CPU:
  :func:`bridgegan.kernels.conv2d_relu`) instead of a convolution, a bias pass and a ReLU
  pass over the hidden activations (cuDNN has no fused transposed convolution: on CUDA the
  transposed one at the image size runs without its bias, and a Triton epilogue adds the
  bias and applies the ReLU in one pass). Under ONNX export and torch.compile the plain
  ops, which those compilers fuse themselves.
- ``fused_tail`` (``impl="triton"`` only): G's last residual sum (its up shortcut read as
  a broadcast), the ReLU, the 1x1 to_rgb convolution and tanh in one kernel
  (:func:`bridgegan.kernels.rgb_tail`): the last block's output is read once, where the
  plain ops make five passes at the image size.
- ``fused_residual`` (``impl="triton"`` only): a block's residual sum is left to the next
  block's first norm kernel, which reads the residual and the shortcut (the half-size
  shortcut of an up block as a broadcast), stores the sum (the next shortcut's input)
  and normalises it in the same pass (``residual=`` of :mod:`bridgegan.kernels.norm_act`):
  no add kernel, and the sum is never re-read for the statistics.
- ``shortcut_bias``: a block with a learned 1x1 shortcut adds its residual convolution's
  bias through the shortcut convolution's bias (the two sum per channel, and a bias
  passes unchanged through pooling and nearest upsampling), so the residual convolution
  runs without one: on CUDA ATen adds a convolution's bias in a pass of its own over the
  block's output.
- ``low_res_shortcut``: a 1x1 shortcut convolution commutes with nearest upsampling and
  with 2x2 average pooling, so it runs at the low resolution; an up block's shortcut is
  then added to the residual as a broadcast, never upsampled.
- ``pooled_conv``: a 3x3 convolution followed by 2x2 average pooling (the second
  convolution of every down block) equals one 4x4 convolution of stride 2 (2.25x fewer
  FLOPs, and the full-resolution output is never built).

The graph exposes the stages the engine composes: ``trunk(x)`` (source-only, cacheable
across edits), ``encode(x, d)``, ``map(r, d)``, ``modulations(S)`` and ``decode(h, S)``.
``impl`` chooses the SPADE / instance-norm ops: "torch" (torch ops, also what ONNX export
traces) or "triton" (the fused kernels). Beside it, ``AttributeHead``: D's attribute head,
which estimates source labels, alone and in float32.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import conv2d_relu, instance_norm_act, rgb_tail, spade_modulate
from ..kernels.layout import add_upsampled
from ..reference.layers import SPADE, InstanceNorm, LatentMix, ResBlk
from ..reference.model import BridgeGAN
from ..reference.networks import tile_labels


@dataclass(frozen=True)
class Rewrites:
    merge_gamma_beta: bool = True
    batch_hidden: bool = True
    four_phase: bool = True
    transposed_up: bool = True
    fold_labels: bool = True
    fold_bias: bool = True
    kernel_bias: bool = True
    fused_relu: bool = True
    fused_tail: bool = True
    fused_residual: bool = True
    shortcut_bias: bool = True
    low_res_shortcut: bool = True
    pooled_conv: bool = True

    def __post_init__(self):
        for f in fields(self):  # "no" would read as on
            if not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"Rewrites.{f.name} must be True or False, got "
                                 f"{getattr(self, f.name)!r}")

    @classmethod
    def none(cls) -> "Rewrites":
        return cls(**{f.name: False for f in fields(cls)})

    @classmethod
    def only(cls, name: str) -> "Rewrites":
        cls._check_names([name])
        return cls(**{f.name: f.name == name for f in fields(cls)})

    @classmethod
    def without(cls, *names: str) -> "Rewrites":
        """Every rewrite but ``names``."""
        cls._check_names(names)
        return cls(**{n: False for n in names})

    @classmethod
    def _check_names(cls, names) -> None:
        known = [f.name for f in fields(cls)]
        for name in names:
            if name not in known:
                raise ValueError(f"unknown rewrite {name!r}; rewrites are {', '.join(known)}")

    def enabled(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]

    @property
    def up_conv(self) -> str | None:
        """How a 3x3 convolution after a nearest 2x upsample runs at the low resolution:
        "transposed", "four_phase", or None (upsample, then convolve)."""
        return "transposed" if self.transposed_up else "four_phase" if self.four_phase else None


def four_phase_weight(w: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) -> (4 O, I, 2, 2): the 2x2 kernel of each output phase (a, b), stacked
    phase-major. Phase a = 0 reads low-res rows (i-1, i) with taps (w0, w1 + w2); a = 1
    reads rows (i, i+1) with taps (w0 + w1, w2); likewise for columns."""
    r = w.new_tensor([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]])  # (phase, tap, row)
    k = torch.einsum("apu,bqv,oiuv->aboipq", r, r, w)
    return k.reshape(4 * w.shape[0], w.shape[1], 2, 2)


def transposed_up_weight(w: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) -> (I, O, 4, 4): conv3x3(upsample2(x)) == conv_transpose2d(x, stride 2,
    padding 1). Its tap p = out + 1 - 2 in is phase a's tap s (``four_phase_weight``) with
    p = 2 (1 - s) + 1 - a: taps w2, w1 + w2, w0 + w1, w0 per dimension."""
    o, i = w.shape[:2]
    k = four_phase_weight(w).view(2, 2, o, i, 2, 2)  # (a, b, O, I, s, t)
    return k.permute(3, 2, 4, 0, 5, 1).reshape(i, o, 4, 4).flip(2, 3)


def pooled_weight(w: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) -> (O, I, 4, 4): avg_pool2(conv3x3(x)) == conv4x4 stride 2, padding 1.
    Output pixel i averages rows 2i and 2i + 1, which read padded rows 2i .. 2i + 3."""
    k = w.new_zeros(*w.shape[:2], 4, 4)
    for a in (0, 1):
        for b in (0, 1):
            k[:, :, a:a + 3, b:b + 3] += w / 4
    return k


class Conv(nn.Module):
    """A frozen convolution: "same" k x k, a 3x3 after a nearest 2x upsample (four-phase
    or transposed) or pooled (a 3x3 before a 2x2 average pool); ``relu``: followed by a
    ReLU, fused into the convolution's call (``fused_relu``)."""

    def __init__(self, conv: nn.Conv2d, four_phase: bool = False, bias: bool = True,
                 weight: torch.Tensor | None = None, bias_tensor: torch.Tensor | None = None,
                 pooled: bool = False, transposed: bool = False, relu: bool = False):
        super().__init__()
        self.relu = relu
        w = (conv.weight if weight is None else weight).detach().clone()
        b = (conv.bias if bias_tensor is None else bias_tensor) if bias else None
        b = None if b is None else b.detach().clone()
        self.four_phase, self.transposed = four_phase, transposed
        self.out_channels = w.shape[0]
        if (four_phase or transposed) and w.shape[-1] != 3:
            raise ValueError("an up convolution must be 3x3")
        if transposed:
            w = transposed_up_weight(w)
        if four_phase:
            w = four_phase_weight(w)
            b = None if b is None else b.repeat(4)
        self.stride = 2 if pooled or transposed else 1
        if pooled:
            w = pooled_weight(w)
        self.padding = 1 if pooled or transposed else (0 if four_phase else w.shape[-1] // 2)
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)

    def _conv(self, x: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
        if self.relu:
            return conv2d_relu(x, self.weight, self.bias, stride, padding, self.transposed)
        if self.transposed:
            return F.conv_transpose2d(x, self.weight, self.bias, stride=stride, padding=padding)
        return F.conv2d(x, self.weight, self.bias, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.four_phase:
            return self._conv(x, self.stride, self.padding)
        n, _, h, w = x.shape
        o = self.out_channels
        # (N, 4 O, H+1, W+1); a ReLU commutes with the phases' reassembly
        y = self._conv(F.pad(x, (1, 1, 1, 1)), 1, 0)
        y = y.permute(0, 2, 3, 1).reshape(n, h + 1, w + 1, 2, 2, o)  # NHWC view when CL
        rows = [torch.stack([y[:, a:a + h, b:b + w, a, b] for b in (0, 1)], dim=3)
                for a in (0, 1)]  # each (N, H, W, 2, O)
        out = torch.stack(rows, dim=2).reshape(n, 2 * h, 2 * w, o)  # (N, H, 2, W, 2, O)
        return out.permute(0, 3, 1, 2)  # channels_last layout, NCHW logical order


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class Block(nn.Module):
    """A ResBlk with the rewrites applied. SPADE blocks take their two modulations."""

    def __init__(self, blk: ResBlk, rw: Rewrites):
        super().__init__()
        self.kind, self.resample = blk.norm_kind, blk.resample
        self.slope = blk.act.negative_slope if isinstance(blk.act, nn.LeakyReLU) else None
        self.act = "relu" if self.slope is None else "leaky_relu"
        self.normed = normed = self.kind in ("in", "spade")
        up = rw.up_conv if self.resample == "up" else None
        self.up_inside = up is not None
        self.conv1 = Conv(blk.conv1, four_phase=up == "four_phase", transposed=up == "transposed",
                          bias=not (rw.fold_bias and normed))
        self.pool_inside = self.resample == "down" and rw.pooled_conv
        # shortcut_bias: the residual's bias rides on the learned shortcut's (they sum)
        moved = rw.shortcut_bias and blk.shortcut is not None
        self.conv2 = Conv(blk.conv2, pooled=self.pool_inside, bias=not moved)
        self.shortcut = None if blk.shortcut is None else Conv(
            blk.shortcut, bias_tensor=blk.shortcut.bias + blk.conv2.bias if moved else None)
        self.low_res_shortcut = rw.low_res_shortcut
        if self.kind == "in":
            for i, norm in ((1, blk.norm1), (2, blk.norm2)):
                self.register_buffer(f"n{i}_weight", norm.weight.detach().clone())
                self.register_buffer(f"n{i}_bias", norm.bias.detach().clone())
        self.eps = blk.norm1.eps if normed else 0.0

    def _norm_act(self, x, i: int, mod, impl: str, residual=None):
        """The i-th norm and activation; with a residual, of x + up(residual), and then
        (output, sum)."""
        if residual is not None and not self.normed:  # no norm kernel to add it
            x = add_upsampled(x, residual)
            return self._norm_act(x, i, mod, impl), x
        if self.kind == "in":
            return instance_norm_act(x, getattr(self, f"n{i}_weight"), getattr(self, f"n{i}_bias"),
                                     act=self.act, eps=self.eps, impl=impl, residual=residual)
        if self.kind == "spade":
            gamma, beta, bias = mod
            return spade_modulate(x, gamma, beta, act=self.act, eps=self.eps, impl=impl,
                                  bias=bias, residual=residual)
        return F.leaky_relu(x, self.slope) if self.slope is not None else F.relu(x)

    def forward(self, x, mods=(None, None), impl: str = "torch", pending: bool = False):
        """The block's output: the sum of its branches, or with ``pending`` the branches
        themselves, for the next block's first norm to sum (``fused_residual``). x is a
        tensor or such a pair."""
        h, sc = self.branches(x, mods, impl)
        return (h, sc) if pending else add_upsampled(h, sc)

    def branches(self, x, mods=(None, None), impl: str = "torch"):
        """The residual and the shortcut, not yet added (the shortcut at half size for an
        up block's learned shortcut with ``low_res_shortcut``: ``add_upsampled`` adds it as
        a broadcast). x is a tensor or the previous block's pending pair."""
        if isinstance(x, tuple):  # the first norm sums the pair: x is the sum from here on
            h, x = self._norm_act(x[0], 1, mods[0], impl, residual=x[1])
        else:
            h = self._norm_act(x, 1, mods[0], impl)
        if self.resample == "up" and not self.up_inside:
            h = _up(h)
        h = self.conv2(self._norm_act(self.conv1(h), 2, mods[1], impl))
        if self.resample == "down" and not self.pool_inside:
            h = F.avg_pool2d(h, 2)
        sc = x
        if self.shortcut is not None and self.low_res_shortcut:
            if self.resample == "down":
                sc = F.avg_pool2d(sc, 2)
            sc = self.shortcut(sc)
        elif self.shortcut is not None:
            sc = _up(sc) if self.resample == "up" else sc
            sc = self.shortcut(sc)
            sc = F.avg_pool2d(sc, 2) if self.resample == "down" else sc
        return h, sc


class SpadeGroup(nn.Module):
    """The SPADE layers that read S at one resolution: hidden convolutions (batched or
    not) and their gamma/beta convolutions (merged or not). A layer's modulation is
    (gamma, beta, bias): beta None when merged into gamma's 2C channels, bias the (2C,)
    gamma/beta convolution bias when the kernel adds it (``kernel_bias``), else None."""

    def __init__(self, layers: list[SPADE], size: int, latent_size: int, rw: Rewrites,
                 kernel_bias: bool = False):
        super().__init__()
        self.size, self.latent_size = size, latent_size
        self.hidden = layers[0].shared.out_channels
        up = rw.up_conv if size == 2 * latent_size else None
        self.resize = size != latent_size and up is None
        form = dict(four_phase=up == "four_phase", transposed=up == "transposed",
                    relu=rw.fused_relu)
        if rw.batch_hidden:
            w = torch.cat([l.shared.weight for l in layers])
            b = torch.cat([l.shared.bias for l in layers])
            self.shared = nn.ModuleList([Conv(layers[0].shared, weight=w, bias_tensor=b, **form)])
        else:
            self.shared = nn.ModuleList(Conv(l.shared, **form) for l in layers)
        self.merged, self.kernel_bias = rw.merge_gamma_beta, kernel_bias
        conv_bias = not kernel_bias
        biases = [torch.cat([l.gamma.bias, l.beta.bias]).detach() for l in layers]  # (2C,) each
        if self.merged:
            self.gb = nn.ModuleList(
                Conv(l.gamma, weight=torch.cat([l.gamma.weight, l.beta.weight]), bias_tensor=b,
                     bias=conv_bias)
                for l, b in zip(layers, biases))
        else:
            self.gamma = nn.ModuleList(Conv(l.gamma, bias=conv_bias) for l in layers)
            self.beta = nn.ModuleList(Conv(l.beta, bias=conv_bias) for l in layers)
        if kernel_bias:
            for k, b in enumerate(biases):
                self.register_buffer(f"bias{k}", b.clone())

    def forward(self, s: torch.Tensor) -> list[tuple]:
        if self.resize:
            s = F.interpolate(s, size=(self.size, self.size), mode="nearest")
        hidden = [conv(s) if conv.relu else F.relu(conv(s)) for conv in self.shared]
        if len(hidden) == 1:  # batched (or a single layer): one slice per layer
            hidden = hidden[0].split(self.hidden, dim=1)
        if self.merged:
            maps = [(gb(h), None) for gb, h in zip(self.gb, hidden)]
        else:
            maps = [(g(h), b(h)) for g, b, h in zip(self.gamma, self.beta, hidden)]
        return [(g, b, getattr(self, f"bias{k}") if self.kernel_bias else None)
                for k, (g, b) in enumerate(maps)]


def _with_bias(mod: tuple) -> tuple:
    """A modulation with its kernel bias added into the maps (bias None)."""
    gamma, beta, bias = mod
    if bias is None:
        return mod
    if beta is None:  # merged: the bias runs over gamma's 2C channels
        return gamma + bias.view(1, -1, 1, 1).to(gamma.dtype), None, None
    c = gamma.shape[1]
    bias = bias.view(1, -1, 1, 1).to(gamma.dtype)
    return gamma + bias[:, :c], beta + bias[:, c:], None


def _blend(mods_list: list[list], weights) -> list:
    """Blend per-layer modulations (gamma, beta, bias) with weights. A kernel bias is
    added into the maps first: the weights need not sum to one."""
    def w_of(w, like):
        return w.to(like.dtype).view(-1, 1, 1, 1) if isinstance(w, torch.Tensor) else w

    out = []
    for per_code in zip(*mods_list):
        per_code = [_with_bias(m) for m in per_code]
        out.append(tuple(None if per_code[0][k] is None else
                         sum(w_of(w, m[k]) * m[k] for w, m in zip(weights, per_code))
                         for k in (0, 1)) + (None,))
    return out


class InferenceGraph(nn.Module):
    """G, E and M of ``model`` rewritten for inference (see the module docstring)."""

    def __init__(self, model: BridgeGAN, rewrites: Rewrites = Rewrites(), impl: str = "torch"):
        super().__init__()
        if impl not in ("torch", "triton"):
            raise ValueError(f"impl must be 'torch' or 'triton', got {impl!r}")
        self.config, self.rewrites, self.impl = model.config, rewrites, impl
        g, e, m = model.generator, model.encoder, model.mapping
        rw = rewrites
        # generator
        self.stem = Conv(g.stem)
        self.down = nn.ModuleList(Block(b, rw) for b in g.down)
        self.mid_in = Block(g.mid_in, rw)
        self.mid_spade = Block(g.mid_spade, rw)
        self.up = nn.ModuleList(Block(b, rw) for b in g.up)
        self.to_rgb = Conv(g.to_rgb)
        # SPADE layers in execution order with their resolutions, grouped by resolution
        bottleneck = self.config.bottleneck_size
        layers = [(g.mid_spade.norm1, bottleneck), (g.mid_spade.norm2, bottleneck)]
        for i, b in enumerate(g.up):
            layers += [(b.norm1, bottleneck * 2 ** i), (b.norm2, bottleneck * 2 ** (i + 1))]
        sizes = sorted({s for _, s in layers})
        self.groups = nn.ModuleList(
            SpadeGroup([l for l, s in layers if s == size], size, self.config.latent_size, rw,
                       kernel_bias=rw.kernel_bias and impl == "triton")
            for size in sizes)
        # position of each layer's modulation in the concatenated group outputs
        order = [(sizes.index(s), [l for l, t in layers if t == s].index(l)) for l, s in layers]
        offsets = [sum(len([1 for _, t in layers if t == s]) for s in sizes[:gi])
                   for gi in range(len(sizes))]
        self.layer_index = [offsets[gi] + k for gi, k in order]
        self.fused_tail = rw.fused_tail and impl == "triton" and len(self.up) > 0
        self.fused_residual = rw.fused_residual and impl == "triton"
        # encoder and mapping
        self.fold_labels = rw.fold_labels
        if self.fold_labels:  # the stem is 1x1: no padding, so the fold is exact everywhere
            w = e.stem.weight.detach()
            self.e_stem = Conv(e.stem, weight=w[:, :3], bias=False)
            # the label constant as E's head receives it: through each learned shortcut's
            # 1x1 weight (its bias rides on the image part), composed in float64
            lw, lb = w[:, 3:, 0, 0].double(), e.stem.bias.detach().double()
            for blk in e.blocks:
                if blk.shortcut is not None:
                    sw = blk.shortcut.weight.detach()[:, :, 0, 0].double()
                    lw, lb = sw @ lw, sw @ lb
            self.e_head = _Head(e.head, rw, labels=(lw.to(w.dtype), lb.to(w.dtype)))
        else:
            self.e_stem = Conv(e.stem)
            self.e_head = _Head(e.head, rw)
        self.e_blocks = nn.ModuleList(Block(b, rw) for b in e.blocks)
        self.register_buffer("m_fc_weight", m.fc.weight.detach().clone())
        self.register_buffer("m_fc_bias", m.fc.bias.detach().clone())
        self.m_start = m.start_channels
        self.m_blocks = nn.ModuleList(Block(b, rw) for b in m.blocks)
        self.m_head = _Head(m.head, rw)

    # ----- stages ------------------------------------------------------------------
    def _chain(self, blocks, h, mods=None, pending_last: bool = False):
        """Blocks in a row (``mods``: each one's pair of modulations). With
        ``fused_residual`` a block's sum is left to the next block's first norm, and the
        last one's too with ``pending_last`` (a block follows that sums it the same way)."""
        for i, blk in enumerate(blocks):
            more = i + 1 < len(blocks) or pending_last
            h = blk(h, (None, None) if mods is None else mods[i], self.impl,
                    pending=self.fused_residual and more)
        return h

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self._chain([*self.down, self.mid_in], self.stem(x))

    def encode(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        if not self.fold_labels:
            h = self.e_stem(torch.cat([x, tile_labels(d.to(x.dtype), x.shape[-1])], dim=1))
            return self.e_head(self._chain(self.e_blocks, h), self.impl)
        # the labels' per-sample constant is added by the head (``fold_labels``)
        return self.e_head(self._chain(self.e_blocks, self.e_stem(x)), self.impl, labels=d)

    def map(self, r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        z = F.linear(torch.cat([r, d.to(r.dtype)], dim=1), self.m_fc_weight, self.m_fc_bias)
        h = z.view(-1, self.m_start, 4, 4)
        return self.m_head(self._chain(self.m_blocks, h), self.impl)

    def modulations(self, s: torch.Tensor | LatentMix) -> list:
        """Every SPADE layer's modulation, in execution order; LatentMix blends them."""
        if isinstance(s, LatentMix):
            return _blend([self.modulations(c) for c in s.codes], s.weights)
        per_group = [m for grp in self.groups for m in grp(s)]
        return [per_group[i] for i in self.layer_index]

    def decode(self, h: torch.Tensor, s: torch.Tensor | LatentMix) -> torch.Tensor:
        mods = self.modulations(s)
        blocks = [self.mid_spade, *self.up]
        pairs = [(mods[2 * i], mods[2 * i + 1]) for i in range(len(blocks))]
        if self.fused_tail:
            h = self._chain(blocks[:-1], h, pairs[:-1], pending_last=True)
            h, sc = blocks[-1].branches(h, pairs[-1], self.impl)
            return rgb_tail(h, self.to_rgb.weight, self.to_rgb.bias, sc, impl=self.impl)
        return torch.tanh(self.to_rgb(F.relu(self._chain(blocks, h, pairs))))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.decode(self.trunk(x), s)


class _Head(nn.Module):
    """ReLU, conv1x1, IN, ReLU (the tail of E and M); the conv bias folds into the IN.
    ``labels``: E's label coefficients (weight (C, A), bias (C,)) under ``fold_labels``."""

    def __init__(self, head, rw: Rewrites, labels: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        norm: InstanceNorm = head.norm
        self.conv = Conv(head.conv, bias=not rw.fold_bias)
        self.register_buffer("weight", norm.weight.detach().clone())
        self.register_buffer("bias", norm.bias.detach().clone())
        self.eps = norm.eps
        if labels is not None:
            self.register_buffer("label_weight", labels[0])
            self.register_buffer("label_bias", labels[1])

    def forward(self, h: torch.Tensor, impl: str, labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``labels``: d (N, A) of E under ``fold_labels``: its constant d W + b is added
        to h before the ReLU, and the head runs in float32 (or wider) and casts back."""
        if labels is None:
            return instance_norm_act(self.conv(F.relu(h)), self.weight, self.bias,
                                     act="relu", eps=self.eps, impl=impl)
        wide = torch.promote_types(h.dtype, torch.float32)
        offset = F.linear(labels.to(wide), self.label_weight.to(wide), self.label_bias.to(wide))
        u = F.relu(h.to(wide) + offset[..., None, None])
        bias = None if self.conv.bias is None else self.conv.bias.to(wide)
        v = F.conv2d(u, self.conv.weight.to(wide), bias)
        return instance_norm_act(v, self.weight.to(wide), self.bias.to(wide), act="relu",
                                 eps=self.eps, impl=impl).to(h.dtype)


class AttributeHead(nn.Module):
    """D's attribute head alone: images (N, 3, S, S) -> logits (N, A), in float32 whatever
    the engine's dtype (source labels are logit > 0, a threshold that reduced precision
    would tip). The torch backends run it; the ``classify`` graph is exported from it."""

    impl = "torch"  # its ops are torch's (what ONNX export traces)

    def __init__(self, model: BridgeGAN):
        super().__init__()
        self.config = model.config
        self.discriminator = copy.deepcopy(model.discriminator).float().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.discriminator.classify(x)
