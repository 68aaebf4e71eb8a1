"""The roofline's FLOP counts, computed from the configuration, against torch's counter."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bridgegan.engine import roofline
from bridgegan.reference import BridgeGAN, BridgeGANConfig, programs
from conftest import small_config


def counted(fn) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("cfg", [BridgeGANConfig.preset(64), small_config(32), small_config(64)],
                         ids=["paper64", "small32", "small64"])
def test_flops_match_torch_counter(cfg):
    torch.manual_seed(0)
    m = BridgeGAN(cfg).eval()
    s = cfg.image_size
    x, d = torch.rand(1, 3, s, s) * 2 - 1, torch.ones(1, cfg.n_attrs)
    r = torch.randn(1, cfg.noise_dim)
    code = m.mapping(r, d) + m.encoder(x, -d)
    h = m.generator.trunk(x)
    assert counted(lambda: m.generator.trunk(x)) == roofline.generator_trunk_flops(cfg)
    assert counted(lambda: m.generator.decode(h, code)) == roofline.generator_decode_flops(cfg)
    assert counted(lambda: m.encoder(x, d)) == roofline.encoder_flops(cfg)
    assert counted(lambda: m.mapping(r, d)) == roofline.mapping_flops(cfg)
    assert counted(lambda: m.translate(x, torch.zeros(1, cfg.n_attrs), d, noise=r)) == \
        roofline.workload_flops(cfg, "translate")
    x2, d2, r3 = x.expand(2, -1, -1, -1), d.expand(2, -1), torch.randn(2, 3, cfg.noise_dim)
    samples = counted(lambda: programs.translate_samples(m.stages(), x2, d2, r3))
    assert samples == roofline.samples_flops(cfg, 2, 3)
    assert roofline.workload_flops(cfg, "samples", 6, 3) == pytest.approx(samples / 6)
    with pytest.raises(ValueError, match="unknown workload 'edit'; accepted: translate"):
        roofline.workload_flops(cfg, "edit")


def test_paper_generator_costs_about_18_7_gflop():
    cfg = BridgeGANConfig.paper()
    g = roofline.generator_trunk_flops(cfg) + roofline.generator_decode_flops(cfg)
    assert round(g / 1e9, 1) == 18.7
    assert round(roofline.encoder_flops(cfg) / 1e9, 2) == 0.94
    assert roofline.strip_flops(cfg, 10, cached=True) < roofline.strip_flops(cfg, 10, cached=False)
    for strip in ("strip", "strip_nocache"):  # the useful work: the trunk once a strip
        assert roofline.workload_flops(cfg, strip, 10) * 10 == pytest.approx(
            roofline.strip_flops(cfg, 10, cached=True))

