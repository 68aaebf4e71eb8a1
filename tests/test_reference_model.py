"""The reference model: sizes, shapes, the source-only trunk, and the inference modes."""
from __future__ import annotations

import pytest
import torch

from bridgegan.numerics import errors, tolerance
from bridgegan.reference import BridgeGAN, BridgeGANConfig
from bridgegan.reference.layers import ResBlk
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


# ----- the forward computations of spec sections 2-3, written out from the spec ---------
def _conv(m: torch.nn.Conv2d, x: torch.Tensor, padding: int) -> torch.Tensor:
    return torch.nn.functional.conv2d(x, m.weight, m.bias, padding=padding)


def _norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Instance norm: statistics over H x W, biased variance."""
    mean = x.mean((2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean((2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _nearest(s: torch.Tensor, h: int) -> torch.Tensor:
    """Nearest-neighbour resize to h x h: output pixel i reads input pixel floor(i * in / h)."""
    idx = torch.arange(h) * s.shape[-1] // h
    return s[:, :, idx][:, :, :, idx]


def _spade(m, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    hidden = torch.relu(_conv(m.shared, _nearest(s, x.shape[-1]), 1))
    return _norm(x, m.eps) * (1 + _conv(m.gamma, hidden, 1)) + _conv(m.beta, hidden, 1)


def _in(m, x: torch.Tensor) -> torch.Tensor:
    return _norm(x, m.eps) * m.weight.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)


def _resblk(blk, x, s, norm: str, act, resample):
    def nrm(m, t):
        return {"in": lambda: _in(m, t), "spade": lambda: _spade(m, t, s),
                "none": lambda: t}[norm]()

    up = lambda t: t.repeat_interleave(2, 2).repeat_interleave(2, 3)  # nearest 2x
    pool = lambda t: torch.nn.functional.avg_pool2d(t, 2)
    h = act(nrm(blk.norm1, x))
    h = _conv(blk.conv1, up(h) if resample == "up" else h, 1)
    h = _conv(blk.conv2, act(nrm(blk.norm2, h)), 1)
    sc = up(x) if resample == "up" else x
    if blk.shortcut is not None:
        sc = _conv(blk.shortcut, sc, 0)
    if resample == "down":
        h, sc = pool(h), pool(sc)
    return h + sc  # no 1/sqrt(2)


def test_networks_compute_the_spec_formulas(small_model):
    """G, E, M and D against their spec sections 2-3 written out by hand, in float64: the
    order of norm / activation / resampling / convolution in every block, SPADE's
    x_hat (1 + gamma) + beta on a nearest-resized S, the ReLU / LeakyReLU(0.2) of each
    network, the heads and tails."""
    m = small_model.double()
    cfg = m.config
    relu = torch.relu
    lrelu = lambda t: torch.nn.functional.leaky_relu(t, 0.2)
    g = torch.Generator().manual_seed(11)
    x = images(2, cfg.image_size, 11).double()
    d = torch.tensor([[1.0, -1.0, 0.0, 1.0, 0.0, -1.0], [0.0, 1.0, 1.0, -1.0, 0.0, 0.0]]).double()
    r = torch.randn(2, cfg.noise_dim, generator=g).double()
    s = torch.rand(2, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g).double()
    G, E, M, D = m.generator, m.encoder, m.mapping, m.discriminator
    with torch.no_grad():
        h = _conv(G.stem, x, 0)
        for blk in G.down:
            h = _resblk(blk, h, None, "in", relu, "down")
        h = _resblk(G.mid_in, h, None, "in", relu, None)
        h = _resblk(G.mid_spade, h, s, "spade", relu, None)
        for blk in G.up:
            h = _resblk(blk, h, s, "spade", relu, "up")
        want_g = torch.tanh(_conv(G.to_rgb, relu(h), 0))

        tiled = d[:, :, None, None].expand(-1, -1, cfg.image_size, cfg.image_size)
        h = _conv(E.stem, torch.cat([x, tiled], 1), 0)
        h = _resblk(E.blocks[0], h, None, "in", relu, "down")
        for blk in E.blocks[1:]:
            h = _resblk(blk, h, None, "in", relu, None)
        want_e = relu(_in(E.head.norm, _conv(E.head.conv, relu(h), 0)))

        h = torch.nn.functional.linear(torch.cat([r, d], 1), M.fc.weight, M.fc.bias)
        h = h.view(2, cfg.mapping_channels, 4, 4)  # no activation
        for blk in M.blocks:
            h = _resblk(blk, h, None, "in", relu, "up")
        want_m = relu(_in(M.head.norm, _conv(M.head.conv, relu(h), 0)))

        h = _conv(D.stem, x, 0)
        for blk in D.blocks:
            h = _resblk(blk, h, None, "none", lrelu, "down")
        h = lrelu(h)
        heads = [torch.nn.functional.linear(lrelu(_conv(conv, h, 0)).flatten(1), fc.weight, fc.bias)
                 for conv, fc in ((D.adv_conv, D.adv_fc), (D.cls_conv, D.cls_fc))]
        got = (G(x, s), E(x, d), M(r, d), *D(x))
    assert len(G.down) == len(G.up) == cfg.g_downs and len(M.blocks) == cfg.mapping_ups
    for what, a, b in zip("GEMDC", got, (want_g, want_e, want_m, heads[0][:, 0], heads[1])):
        assert a.shape == b.shape, what
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=what)
    assert BridgeGANConfig.paper().eps == 1e-5  # the norms' epsilon (spec sections 2, 8.6)


@pytest.mark.parametrize("norm", ["in", "spade"])
def test_normed_block_needs_the_configs_eps(norm):
    """A norm's epsilon is the config's, never a default of its own."""
    with pytest.raises(ValueError, match="needs eps"):
        ResBlk(4, 4, norm, "relu", latent_channels=2, spade_hidden=4)
    ResBlk(4, 4, norm, "relu", latent_channels=2, spade_hidden=4, eps=1e-3)
