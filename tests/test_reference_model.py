"""The reference model: sizes, shapes, the source-only trunk, and the inference modes."""
from __future__ import annotations

import pytest
import torch

from bridgegan.numerics import errors, tolerance
from bridgegan.reference import BridgeGAN, BridgeGANConfig
from conftest import images, labels, small_config


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_parameter_counts():
    m = BridgeGAN(BridgeGANConfig.paper())
    assert count(m.generator) == 7_219_011
    assert count(m.encoder) == 71_808
    assert count(m.mapping) == 121_888
    assert count(m.discriminator) == 9_613_039


@pytest.mark.parametrize("size", [64, 128, 256])
def test_preset_shapes_and_ranges(size):
    torch.manual_seed(size)
    cfg = BridgeGANConfig.preset(size)
    m = BridgeGAN(cfg).eval()
    x, ys = images(1, size, seed=size), labels(1, cfg.n_attrs, seed=size)
    d = torch.ones(1, cfg.n_attrs)
    with torch.no_grad():
        s = m.encoder(x, d)
        s_map = m.mapping(torch.randn(1, cfg.noise_dim), d)
        for code in (s, s_map):
            assert code.shape == (1, 32, size // 2, size // 2)
            assert (code >= 0).all()
        out = m.translate(x, ys, 1 - ys)
        adv, cls = m.discriminator(x)
    assert out.shape == x.shape and out.abs().max() <= 1 and torch.isfinite(out).all()
    assert adv.shape == (1,) and cls.shape == (1, cfg.n_attrs)
    assert cfg.mapping_ups == {64: 3, 128: 4, 256: 5}[size]
    assert cfg.d_head_kernel == {64: 4, 128: 8, 256: 16}[size]


def test_trunk_depends_on_source_only(small_model):
    """Everything before the SPADE middle block is bit-identical under another latent."""
    cfg = small_model.config
    x = images(3, cfg.image_size)
    seen = []
    hook = small_model.generator.mid_spade.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].clone()))
    g = torch.Generator().manual_seed(1)
    s1 = torch.rand(3, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g)
    s2 = torch.rand(3, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g)
    with torch.no_grad():
        y1 = small_model.generator(x, s1)
        y2 = small_model.generator(x, s2)
    hook.remove()
    assert torch.equal(seen[0], seen[1])
    assert torch.equal(seen[0], small_model.generator.trunk(x).detach())
    assert not torch.allclose(y1, y2)


def test_reference_mode_single_equals_averaged_twice(small_model):
    cfg = small_model.config
    x, r = images(2, cfg.image_size, 1), images(2, cfg.image_size, 2)
    ys = labels(2, cfg.n_attrs)
    with torch.no_grad():
        one = small_model.translate_reference(x, r, ys, 1 - ys)
        two = small_model.translate_reference(x, [r, r], ys, 1 - ys)
        other = small_model.translate_reference(x, [r, images(2, cfg.image_size, 3)], ys, 1 - ys)
    torch.testing.assert_close(one, two, rtol=0, atol=1e-6)
    assert not torch.allclose(one, other)


@pytest.mark.parametrize("level", ["latent", "spade"])
def test_interpolation_endpoints(small_model, level):
    cfg = small_model.config
    x, r = images(2, cfg.image_size, 4), images(2, cfg.image_size, 5)
    ys = labels(2, cfg.n_attrs, 4)
    noise = torch.randn(2, cfg.noise_dim, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        lab = small_model.translate(x, ys, 1 - ys, noise=noise)
        ref = small_model.translate_reference(x, r, ys, 1 - ys)
        at1 = small_model.interpolate(x, r, ys, 1 - ys, 1.0, noise=noise, level=level)
        at0 = small_model.interpolate(x, r, ys, 1 - ys, 0.0, noise=noise, level=level)
        mid = small_model.interpolate(x, r, ys, 1 - ys, torch.tensor([0.3, 0.7]),
                                      noise=noise, level=level)
    torch.testing.assert_close(at1, lab, rtol=0, atol=1e-6)
    torch.testing.assert_close(at0, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(mid, lab) and not torch.allclose(mid, ref)


def test_spade_level_interpolation_blends_spade_outputs(small_model):
    """At one SPADE layer, the LatentMix output is the blend of the two outputs."""
    from bridgegan.reference import LatentMix

    cfg = small_model.config
    spade = small_model.generator.mid_spade.norm1
    g = torch.Generator().manual_seed(7)
    c = cfg.g_channels()[-1]
    x = torch.randn(2, c, 4, 4, generator=g)
    s1, s2 = (torch.rand(2, cfg.latent_channels, 16, 16, generator=g) for _ in range(2))
    with torch.no_grad():
        mixed = spade(x, LatentMix((s1, s2), (0.25, 0.75)))
        blend = 0.25 * spade(x, s1) + 0.75 * spade(x, s2)
    assert errors(mixed, blend)[1] <= tolerance(torch.float32).op_rel


def test_noise_changes_label_based_output(small_model):
    cfg = small_model.config
    x, ys = images(2, cfg.image_size), labels(2, cfg.n_attrs)
    with torch.no_grad():
        a = small_model.translate(x, ys, 1 - ys, generator=torch.Generator().manual_seed(1))
        b = small_model.translate(x, ys, 1 - ys, generator=torch.Generator().manual_seed(1))
        c = small_model.translate(x, ys, 1 - ys, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_bad_inputs_are_named(small_model):
    cfg = small_model.config
    x, ys = images(2, cfg.image_size), labels(2, cfg.n_attrs)
    with pytest.raises(ValueError, match=r"shape \(N, 3, 32, 32\)"):
        small_model.translate(images(2, 16), ys, 1 - ys)
    with pytest.raises(ValueError, match="target labels must have shape"):
        small_model.translate(x, ys, torch.ones(2, 3))
    with pytest.raises(ValueError, match="Black_Hair, Blond_Hair"):
        small_model.translate(x, ys, {"Blue_Hair": 1})
    with pytest.raises(ValueError, match="one reference per source"):
        small_model.translate_reference(x, images(3, cfg.image_size), ys, 1 - ys)


def test_config_json_round_trip_and_validation():
    cfg = small_config(64, attributes="stargan")
    assert BridgeGANConfig.from_json(cfg.to_json()) == cfg
    assert cfg.attributes == ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
    with pytest.raises(ValueError, match="unknown config field"):
        BridgeGANConfig.from_dict({"image_size": 64, "widht": 3})
    with pytest.raises(ValueError, match="power of two"):
        BridgeGANConfig(image_size=100)
    with pytest.raises(ValueError, match="valid names are"):
        BridgeGANConfig(attributes=("Young", "Purple_Hair"))
