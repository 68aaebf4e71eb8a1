"""Loss pieces of spec section 5 against analytic values and hand-written formulas."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bridgegan.reference import BridgeGAN
from bridgegan.reference.losses import (
    DiscriminatorObjective, GeneratorObjective, LossWeights, bce, cycle_sign,
    gradient_penalty, l1, make_fakes, mode_seeking,
)
from bridgegan.reference.noise_memory import NoiseMemory, noise_gradient, refinement_step
from conftest import images, labels, randomize, small_config


def linear_critic(w: torch.Tensor, b: float = 0.3):
    return lambda x: x.flatten(1) @ w.flatten() + b


@pytest.mark.parametrize("scale", [1.0, 1024.0])
def test_gradient_penalty_of_a_linear_critic(scale):
    g = torch.Generator().manual_seed(0)
    real = images(4, 8, seed=1)
    fakes = [images(4, 8, seed=2 + k) for k in range(3)]
    eps = torch.rand(3, 4, generator=g)
    w = torch.randn(3, 8, 8, generator=g)
    unit = w / w.norm()
    # The gradient of a linear critic is w everywhere: GP = (||w|| - 1)^2.
    assert gradient_penalty(linear_critic(unit), real, fakes, eps, scale).item() == pytest.approx(0, abs=1e-10)
    for norm in (0.5, 2.0, 3.0):
        gp = gradient_penalty(linear_critic(unit * norm), real, fakes, eps, scale)
        assert gp.item() == pytest.approx((norm - 1) ** 2, rel=1e-5)


def test_gradient_penalty_per_sample_interpolation_and_mean_of_three():
    # critic(x) = 0.5 * ||x||^2 has gradient x: GP = mean over fakes and samples of (||x_hat|| - 1)^2.
    g = torch.Generator().manual_seed(1)
    real = images(5, 4, seed=3)
    fakes = [images(5, 4, seed=4 + k) for k in range(3)]
    eps = torch.rand(3, 5, generator=g)
    critic = lambda x: 0.5 * x.flatten(1).pow(2).sum(1)
    expected = 0.0
    for k in range(3):
        e = eps[k].view(5, 1, 1, 1)
        x_hat = e * real + (1 - e) * fakes[k]
        expected += ((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean() / 3
    assert gradient_penalty(critic, real, fakes, eps).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_penalty_is_differentiable_in_the_critic():
    w = torch.randn(3 * 4 * 4, requires_grad=True)
    gp = gradient_penalty(lambda x: x.flatten(1) @ w, images(2, 4), [images(2, 4, 1)], torch.rand(1, 2))
    gp.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    n = w.detach().norm()
    assert torch.allclose(w.grad, 2 * (n - 1) * w.detach() / n, rtol=1e-4)


def test_cycle_sign_values():
    y_s = torch.tensor([[0., 1., 0., 1.], [1., 1., 0., 0.]])
    y_t = torch.tensor([[1., 1., 0., 0.], [1., 0., 0., 1.]])
    o = cycle_sign(y_s, y_t - y_s)
    assert torch.equal(o, torch.tensor([[0., -1., 1., 0.], [-1., 0., 1., 0.]]))


def test_refinement_step_sign_official_vs_descent():
    g = torch.Generator().manual_seed(0)
    r0 = 0.2 * torch.randn(6, 8, generator=g)
    grad = 1e-7 * torch.randn(6, 8, generator=g)
    up, down = refinement_step(r0, grad, +1.0), refinement_step(r0, grad, -1.0)
    rms = grad.pow(2).mean(1, keepdim=True).sqrt()
    step = (0.9 / rms + 5.0) * grad
    assert torch.allclose(up, (r0 + step).clamp(-1, 1), atol=1e-6)
    assert torch.allclose(down, (r0 - step).clamp(-1, 1), atol=1e-6)
    # normalised part dominates: each unclipped row moves by rms ~0.9 along +g / -g
    assert ((up - r0) * grad).sum(1).gt(0).all() and ((down - r0) * grad).sum(1).lt(0).all()
    assert up.abs().max() <= 1 and down.abs().max() <= 1


class _Affine(nn.Module):
    """M(r, d) = A r (shape (N, 1, k, k)) so the MSE gradient is known in closed form."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, r, d):
        return (r @ self.a.T).view(r.shape[0], 1, 2, 2)


def test_noise_memory_refine_official_ascends_and_descent_descends():
    g = torch.Generator().manual_seed(2)
    m = _Affine(torch.randn(4, 3, generator=g))
    r0 = 0.05 * torch.randn(5, 3, generator=g)
    target = torch.randn(5, 1, 2, 2, generator=g)
    d = torch.zeros(5, 2)
    grad = noise_gradient(r0, target, d, m)
    # closed form: d/dr mean((t - A r)^2) = -2 (t - A r) A / numel
    resid = target.view(5, 4) - r0 @ m.a.detach().T
    assert torch.allclose(grad, -2 * resid @ m.a.detach() / target.numel(), rtol=1e-5, atol=1e-12)
    assert m.a.grad is None  # no parameter gradients from the refinement
    mse = lambda r: ((target.view(5, 4) - r @ m.a.detach().T) ** 2).sum(1)
    official = NoiseMemory(10, 3, "official").refine(r0, target, d, m)
    descent = NoiseMemory(10, 3, "descent").refine(r0, target, d, m)
    # small moves along -g lower each sample's mismatch; the official step raises it
    # (compare first-order: the step is along +g resp. -g)
    assert ((official - r0) * grad).sum(1).gt(0).all()
    assert ((descent - r0) * grad).sum(1).lt(0).all()
    half = lambda r: r0 + 0.01 * (r - r0)
    assert (mse(half(official)) > mse(r0)).all() and (mse(half(descent)) < mse(r0)).all()
    assert not official.requires_grad


def test_noise_memory_refine_with_the_real_mapping_matches_manual_autograd():
    torch.manual_seed(0)
    cfg = small_config()
    model = randomize(BridgeGAN(cfg))
    x, y = images(4, cfg.image_size), labels(4, cfg.n_attrs)
    d = y.flip(0) - y
    r0 = torch.randn(4, cfg.noise_dim)
    target = model.encoder(x.flip(0), d).detach()
    r = r0.clone().requires_grad_(True)
    loss = torch.nn.functional.mse_loss(model.mapping(r, d), target)
    (g,) = torch.autograd.grad(loss, r)
    rms = g.pow(2).mean(1, keepdim=True).sqrt()
    expected = (r0 + (0.9 / rms + 5) * g).clamp(-1, 1)
    got = NoiseMemory(8, cfg.noise_dim, "official").refine(r0, target, d, model.mapping)
    assert torch.allclose(got, expected, atol=1e-5)
    # the global-batch denominator: half the batch with denominator = full numel gives the
    # same g as the full batch
    g_half = noise_gradient(r0[:2], target[:2], d[:2], model.mapping, denominator=target.numel())
    assert torch.allclose(g_half, g[:2], rtol=1e-4, atol=1e-12)


def test_noise_memory_off_and_bad_mode():
    assert not NoiseMemory(4, 2, "off").enabled
    with pytest.raises(ValueError, match="noise memory mode"):
        NoiseMemory(4, 2, "ascent")


def test_mode_seeking_formula_and_gradient():
    g = torch.Generator().manual_seed(3)
    r1, r = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g).clamp(-1, 1)
    x1 = images(4, 8, 1).requires_grad_(True)
    xl = images(4, 8, 2).requires_grad_(True)
    value = mode_seeking(r1, r, x1, xl)
    direct = (r1 - r).abs().mean() / ((x1.detach() - xl).abs().mean() + 1e-5)
    assert value.item() == pytest.approx(direct.item(), rel=1e-6)
    value.backward()
    xl2 = xl.detach().clone().requires_grad_(True)
    ((r1 - r).abs().mean() / ((x1.detach() - xl2).abs().mean() + 1e-5)).backward()
    assert torch.allclose(xl.grad, xl2.grad, rtol=1e-5, atol=1e-12)
    assert x1.grad is None  # stopgrad on X_1


def test_mode_seeking_distributed_form_averages_to_the_global_gradient():
    g = torch.Generator().manual_seed(4)
    r1, r = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    x1, xl = images(4, 8, 1), images(4, 8, 2).requires_grad_(True)
    mode_seeking(r1, r, x1, xl).backward()
    full = xl.grad.clone()
    # two "ranks" of two samples each; reduce = mean of both ranks' (num, den)
    halves = [slice(0, 2), slice(2, 4)]
    stats = torch.stack([torch.stack([l1(r1[s], r[s]), l1(x1[s], xl.detach()[s])]) for s in halves])
    reduce = lambda t: stats.mean(0)
    grads = torch.zeros_like(xl)
    for s in halves:
        part = xl.detach()[s].clone().requires_grad_(True)
        mode_seeking(r1[s], r[s], x1[s], part, reduce).backward()
        grads[s] = part.grad / 2  # DDP averages gradients over the 2 ranks
    assert torch.allclose(grads, full, rtol=1e-5, atol=1e-12)


def test_loss_weights_validation_and_round_trip():
    w = LossWeights(rec=3.0)
    assert LossWeights.from_dict(w.to_dict()) == w
    assert LossWeights().to_dict() == dict(adv=1.0, attr=10.0, rec=100.0, latent=50.0, cycle=50.0,
                                           mode_seeking=0.005, gp=10.0, d_attr=1.0,
                                           paired=0.0, paired_edit=0.0,
                                           feature=0.0)  # off: not the paper's
    with pytest.raises(ValueError, match="rec"):
        LossWeights(rec=-1.0)
    with pytest.raises(ValueError, match="loss weight gp must be a finite number >= 0, got inf"):
        LossWeights(gp=math.inf)
    with pytest.raises(ValueError, match="unknown loss weight"):
        LossWeights.from_dict({"recon": 1.0})


def _objective_inputs(cfg, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = images(n, cfg.image_size, seed), labels(n, cfg.n_attrs, seed)
    perm = torch.randperm(n, generator=g)
    return dict(x=x, y=y, xr=x[perm], yr=y[perm], noise=torch.randn(n, cfg.noise_dim, generator=g),
                r1=torch.randn(n, cfg.noise_dim, generator=g), alpha=torch.rand(n, generator=g))


def test_objectives_match_the_spec_formulas():
    torch.manual_seed(0)
    cfg = small_config()
    model = randomize(BridgeGAN(cfg))
    G, E, M, D = model.generator, model.encoder, model.mapping, model.discriminator
    inp = _objective_inputs(cfg)
    x, y, xr, yr, r, r1, alpha = (inp[k] for k in ("x", "y", "xr", "yr", "noise", "r1", "alpha"))
    w = LossWeights()
    loss, terms, r_used = GeneratorObjective(G, E, M, w)(**inp, critic=D)
    assert torch.equal(r_used, r)
    # unbatched, straight from the spec
    d = yr - y
    s_s = E(x, -d)
    s_rand, s_ref = M(r, d) + s_s, E(xr, d) + s_s
    a = alpha.view(-1, 1, 1, 1)
    s_int = a * s_rand + (1 - a) * s_ref
    fakes = [G(x, s) for s in (s_rand, s_ref, s_int)]
    outs = [D(f) for f in fakes]
    adv = -sum(o[0].mean() for o in outs) / 3
    attr = sum(bce(o[1], yr) for o in outs) / 3
    z = torch.zeros_like(d)
    rec = (l1(x, G(x, M(r, z) + E(x, z))) + l1(x, G(x, E(xr, z) + E(x, z)))) / 2
    o = (1 - d.abs()) * (1 - 2 * y)
    cyc = (l1(s_rand, E(fakes[0], d) + s_s) + l1(s_ref, E(fakes[1], d) + s_s)
           + l1(E(fakes[0], o), E(x, o))) / 3
    x1 = G(x, M(r1, d) + s_s)
    ms = (r1 - r).abs().mean() / ((x1 - fakes[0]).abs().mean() + 1e-5)
    expect = {"g/adv": adv, "g/attr": attr, "g/rec": rec, "g/latent": l1(s_rand, s_ref),
              "g/cycle": cyc, "g/mode_seeking": ms}
    for k, v in expect.items():
        assert terms[k].item() == pytest.approx(v.item(), rel=1e-4, abs=1e-6), k
    total = (adv + 10 * attr + 100 * rec + 50 * expect["g/latent"] + 50 * cyc + 0.005 * ms)
    assert loss.item() == pytest.approx(total.item(), rel=1e-4)

    # discriminator
    gp_eps = torch.rand(3, 4, generator=torch.Generator().manual_seed(9))
    (fl, fr, fi), _ = make_fakes(G, E, M, x, y, xr, yr, r, alpha)
    for a_, b_ in zip((fl, fr, fi), fakes):
        assert torch.allclose(a_, b_, atol=1e-5)
    d_loss, d_terms = DiscriminatorObjective(D, w)(x, y, [fl, fr, fi], gp_eps)
    adv_r, cls_r = D(x)
    wd = adv_r.mean() - sum(D(f)[0].mean() for f in (fl, fr, fi)) / 3
    gp = gradient_penalty(lambda t: D(t)[0], x, [fl, fr, fi], gp_eps)
    assert d_terms["d/adv"].item() == pytest.approx(-wd.item(), rel=1e-4, abs=1e-6)
    assert d_terms["d/attr"].item() == pytest.approx(bce(cls_r, y).item(), rel=1e-5)
    assert d_terms["d/gp"].item() == pytest.approx(gp.item(), rel=1e-4)
    assert d_loss.item() == pytest.approx((-wd + 10 * gp + bce(cls_r, y)).item(), rel=1e-4, abs=1e-6)


def test_paired_terms_measure_the_fakes_against_the_true_edit():
    """g/paired is the L1 of the three fakes to x_true; g/paired_edit the mean over images
    of the same over the pixels where x_true differs from the source (images without an
    edit left out); both enter the loss with their weights."""
    torch.manual_seed(0)
    cfg = small_config()
    model = randomize(BridgeGAN(cfg))
    G, E, M, D = model.generator, model.encoder, model.mapping, model.discriminator
    inp = _objective_inputs(cfg, seed=3)
    x = inp["x"]
    x_true = x.clone()
    x_true[:3, :, 4:12, 8:20] = images(3, cfg.image_size, 7)[:, :, 4:12, 8:20]  # the "edits"
    x_true[1, :, 20:22, 2:4] = -x[1, :, 20:22, 2:4]  # of different sizes; image 3 has none
    w = LossWeights(adv=0.0, attr=0.0, paired=3.0, paired_edit=2.0)
    base = LossWeights(adv=0.0, attr=0.0)
    loss, terms, _ = GeneratorObjective(G, E, M, w)(**inp, critic=D, x_true=x_true)
    loss0, _, _ = GeneratorObjective(G, E, M, base)(**inp, critic=D)
    fakes = make_fakes(G, E, M, x, inp["y"], inp["xr"], inp["yr"], inp["noise"], inp["alpha"])[0]
    err = (torch.cat(fakes) - x_true.repeat(3, 1, 1, 1)).abs()
    mask = ((x_true - x).abs().amax(1, keepdim=True) > 0.05).repeat(3, 3, 1, 1)
    edited = [k for k in range(12) if mask[k].any()]
    assert len(edited) == 9  # the three fakes of the three edited images
    edit = sum(err[k][mask[k]].mean() for k in edited) / len(edited)
    assert terms["g/paired"].item() == pytest.approx(err.mean().item(), rel=1e-4)
    assert terms["g/paired_edit"].item() == pytest.approx(edit.item(), rel=1e-4)
    assert loss.item() == pytest.approx(
        loss0.item() + 3 * err.mean().item() + 2 * edit.item(), rel=1e-4)
    with pytest.raises(ValueError, match="no x_true"):
        GeneratorObjective(G, E, M, w)(**inp, critic=D)


def test_feature_term_matches_a_frozen_classifiers_activations():
    """g/feature: the layer mean of the relative L1 between the classifier's activations of
    the three fakes and the two reconstructions and those of the true edits and the source;
    only G, E, M get gradients, the classifier none."""
    from bridgegan.reference.classifier import AttributeClassifier
    from bridgegan.reference.losses import feature_match

    torch.manual_seed(0)
    cfg = small_config()
    model = randomize(BridgeGAN(cfg))
    G, E, M, D = model.generator, model.encoder, model.mapping, model.discriminator
    clf = randomize(AttributeClassifier(cfg.attributes, cfg.image_size, 8, kernel=3), seed=5)
    clf.requires_grad_(False)
    inp = _objective_inputs(cfg, seed=4)
    x = inp["x"]
    x_true = images(x.shape[0], cfg.image_size, 9)
    w = LossWeights(adv=0.0, attr=0.0, feature=2.0)
    base = LossWeights(adv=0.0, attr=0.0)
    seen = []

    def spy(t):  # the images the term hands to the classifier: targets, then outputs
        seen.append(t.detach().clone())
        return clf.features(t)

    loss, terms, _ = GeneratorObjective(G, E, M, w)(**inp, critic=D, x_true=x_true,
                                                    features=spy)
    loss0, _, _ = GeneratorObjective(G, E, M, base)(**inp, critic=D)
    targets, outputs = seen
    n = x.shape[0]
    assert torch.equal(targets, torch.cat([x_true.repeat(3, 1, 1, 1), x, x]))
    fakes = make_fakes(G, E, M, x, inp["y"], inp["xr"], inp["yr"], inp["noise"], inp["alpha"])[0]
    torch.testing.assert_close(outputs[:3 * n], torch.cat(fakes).detach())
    rec = loss0.new_tensor(0.0)
    for k in (3, 4):  # the reconstructions: their L1 to the source is g/rec
        rec += (outputs[k * n:(k + 1) * n] - x).abs().mean() / 2
    assert rec.item() == pytest.approx(terms["g/rec"].item(), rel=1e-4)
    with torch.no_grad():
        got, want = clf.features(outputs), clf.features(targets)
    expect = sum((g - t).abs().mean() / t.abs().mean() for g, t in zip(got, want)) / 4
    assert terms["g/feature"].item() == pytest.approx(expect.item(), rel=1e-4)
    assert loss.item() == pytest.approx(loss0.item() + 2 * expect.item(), rel=1e-4)
    assert feature_match(clf.features, x, x).item() == 0
    loss.backward()
    assert all(p.grad is None for p in clf.parameters())
    assert G.to_rgb.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no features"):
        GeneratorObjective(G, E, M, w)(**inp, critic=D)


def test_cycle_term_gradients_follow_the_spec_stopgrads():
    """Cycle: the first two terms re-encode stopgrad(X_l) and stopgrad(X_ref), the third
    E(X_l, o) keeps X_l's gradient (spec section 5): the gradients of every G, E, M
    parameter equal those of the term written out with those detaches."""
    torch.manual_seed(0)
    cfg = small_config()
    model = randomize(BridgeGAN(cfg)).double()
    G, E, M, D = model.generator, model.encoder, model.mapping, model.discriminator
    inp = {k: v.double() for k, v in _objective_inputs(cfg, seed=5).items()}
    w = LossWeights(adv=0.0, attr=0.0, rec=0.0, latent=0.0, cycle=1.0, mode_seeking=0.0)
    params = [p for net in (G, E, M) for p in net.parameters()]
    loss, _, _ = GeneratorObjective(G, E, M, w)(**inp, critic=D)
    got = torch.autograd.grad(loss, params, allow_unused=True)
    x, y, xr, yr, r, alpha = (inp[k] for k in ("x", "y", "xr", "yr", "noise", "alpha"))
    d = yr - y
    s_s = E(x, -d)
    s_rand, s_ref = M(r, d) + s_s, E(xr, d) + s_s
    x_l, x_ref = G(x, s_rand), G(x, s_ref)
    o = (1 - d.abs()) * (1 - 2 * y)
    cyc = (l1(s_rand, E(x_l.detach(), d) + s_s) + l1(s_ref, E(x_ref.detach(), d) + s_s)
           + l1(E(x_l, o), E(x, o))) / 3
    want = torch.autograd.grad(cyc, params, allow_unused=True)
    for p, a, b in zip(params, got, want):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
