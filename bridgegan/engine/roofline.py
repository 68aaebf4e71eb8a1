"""Roofline: the work one translation must do, computed from the configuration, and the
card's measured peaks (a large matrix product, a large copy).

FLOPs count multiply-adds as 2 and cover convolutions and linear layers of the reference
model (what torch's FLOP counter counts); norms and activations are bytes, not FLOPs.
The rewritten graph does less than this (four-phase and pooled convolutions,
low-resolution shortcuts): a row's roofline share is the reference work per second over the peak.
"""
from __future__ import annotations

import torch

from ..numerics import dtype_name
from ..reference.config import BridgeGANConfig
from ..timing import copy_bandwidth, p50_p20_p80, time_calls


def _conv(cin: int, cout: int, k: int, size: int) -> int:
    return 2 * cin * cout * k * k * size * size


def _spade(cfg: BridgeGANConfig, c: int, size: int) -> int:
    h = cfg.spade_hidden
    return _conv(cfg.latent_channels, h, 3, size) + 2 * _conv(h, c, 3, size)


def _resblk(cin: int, cout: int, size_in: int, resample: str | None, spade_cfg=None) -> int:
    """A ResBlk's convolutions; ``size_in`` is the input resolution."""
    size = 2 * size_in if resample == "up" else size_in
    f = _conv(cin, cout, 3, size) + _conv(cout, cout, 3, size)
    if cin != cout or resample:
        f += _conv(cin, cout, 1, size)
    if spade_cfg is not None:
        f += _spade(spade_cfg, cin, size_in) + _spade(spade_cfg, cout, size)
    return f


def generator_trunk_flops(cfg: BridgeGANConfig) -> int:
    ch, s = cfg.g_channels(), cfg.image_size
    f = _conv(3, ch[0], 1, s)
    for i in range(cfg.g_downs):
        f += _resblk(ch[i], ch[i + 1], s // 2 ** i, "down")
    return f + _resblk(ch[-1], ch[-1], cfg.bottleneck_size, None)


def generator_decode_flops(cfg: BridgeGANConfig) -> int:
    ch, s = cfg.g_channels(), cfg.image_size
    b = cfg.bottleneck_size
    f = _resblk(ch[-1], ch[-1], b, None, cfg)
    for j, i in enumerate(reversed(range(cfg.g_downs))):
        f += _resblk(ch[i + 1], ch[i], b * 2 ** j, "up", cfg)
    return f + _conv(ch[0], 3, 1, s)


def encoder_flops(cfg: BridgeGANConfig) -> int:
    s, w = cfg.image_size, cfg.e_width
    f = _conv(3 + cfg.n_attrs, w, 1, s) + _resblk(w, 2 * w, s, "down")
    f += cfg.e_blocks * _resblk(2 * w, 2 * w, s // 2, None)
    return f + _conv(2 * w, cfg.latent_channels, 1, s // 2)


def mapping_flops(cfg: BridgeGANConfig) -> int:
    c = cfg.latent_channels
    f = 2 * (cfg.noise_dim + cfg.n_attrs) * cfg.mapping_channels * 16
    for i in range(cfg.mapping_ups):
        f += _resblk(cfg.mapping_channels if i == 0 else c, c, 4 * 2 ** i, "up")
    return f + _conv(c, c, 1, cfg.latent_size)


def workload_flops(cfg: BridgeGANConfig, workload: str, images: int = 1,
                   samples: int = 1) -> float:
    """Reference FLOPs per output image of a bench workload (``options.WORKLOADS``) of
    ``images`` outputs.

    translate: trunk + decode + E(x, -d) + M; reference: trunk + decode + 2 E (the source's
    and one reference's); samples: ``samples`` outputs per source (``samples_flops``);
    strip and strip_nocache: one edit strip of ``images`` outputs, counted with the trunk
    once (the useful work, ``strip_flops``).
    """
    g = generator_trunk_flops(cfg) + generator_decode_flops(cfg)
    if workload == "translate":
        return float(g + encoder_flops(cfg) + mapping_flops(cfg))
    if workload == "reference":
        return float(g + 2 * encoder_flops(cfg))
    if workload == "samples":
        return samples_flops(cfg, images // samples, samples) / images
    if workload in ("strip", "strip_nocache"):
        return strip_flops(cfg, images, cached=True) / images
    raise ValueError(f"unknown workload {workload!r}; accepted: translate, reference, "
                     f"samples, strip, strip_nocache")


def strip_flops(cfg: BridgeGANConfig, images: int, cached: bool) -> int:
    """FLOPs of one edit strip of ``images`` outputs, with or without the trunk cache."""
    per = generator_decode_flops(cfg) + encoder_flops(cfg) + mapping_flops(cfg)
    trunk = generator_trunk_flops(cfg) * (1 if cached else images)
    return images * per + trunk


def samples_flops(cfg: BridgeGANConfig, sources: int, samples: int) -> int:
    """FLOPs of ``samples`` noise samples of each of ``sources`` sources
    (``Engine.translate_samples``): the trunk and E(x, -d) once per source, M and the
    decode once per image."""
    per = generator_decode_flops(cfg) + mapping_flops(cfg)
    return sources * (generator_trunk_flops(cfg) + encoder_flops(cfg) + samples * per)


def measure_peaks(device: torch.device, dtype: torch.dtype, quick: bool = False) -> dict:
    """Measured matrix-product FLOP/s in ``dtype`` and copy bandwidth (bytes read+written),
    each the median of ``reps`` calls after one warm-up."""
    n = 8192 if device.type == "cuda" and not quick else (512 if quick else 2048)
    reps = 5 if quick else 10
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    t_mm = p50_p20_p80(time_calls(lambda: a @ b, device, warmup=1, reps=reps))[0]
    nbytes = (1 << 30 if device.type == "cuda" else 1 << 27) >> (4 if quick else 0)
    copy = copy_bandwidth(device, nbytes, warmup=1, reps=reps)
    return {"matmul_flops": 2 * n ** 3 / t_mm, "matmul_dtype": dtype_name(dtype),
            "copy_bytes_per_s": copy["p50"]}
