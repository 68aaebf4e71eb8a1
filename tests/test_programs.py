"""The programs (``reference/programs.py``) against spec sections 4 and 7 written out over
the raw networks in float64. The reference model, the engine and the export all compose
their codes through the programs, so the engine-against-model tests cannot see a slip
there: these compare the engine (float32, torch backend) with the formulas themselves."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bridgegan.engine import Engine
from bridgegan.numerics import float64_model, tolerance
from bridgegan.reference import BridgeGAN
from conftest import images, labels, randomize, small_config

ATOL = tolerance("float32").image_max_abs
STRENGTH = 2.0


@pytest.fixture(scope="module")
def model():
    return randomize(BridgeGAN(small_config()), seed=11).eval()


@pytest.fixture(scope="module")
def spec(model):
    """G, E and M in float64, and the spec's d = strength (y_t - y_s)."""
    m = float64_model(model)
    return m.generator, m.encoder, m.mapping, lambda ys, yt: STRENGTH * (yt - ys).double()


def noise(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def close(got: torch.Tensor, want: torch.Tensor, away_from: torch.Tensor) -> None:
    """``got`` is ``want`` within the float32 image tolerance, and the formula it stands
    for is told apart from a plausible slip (``away_from``)."""
    assert (want - away_from).abs().max() > 1e-2
    assert (got.double() - want).abs().max() <= ATOL


def test_label_translation_is_the_spec_code(model, spec):
    """S_rand = M(r, d) + E(x, -d): the source branch gets -d, the noise branch +d."""
    G, E, M, diff = spec
    cfg = model.config
    x, ys = images(3, cfg.image_size, 31), labels(3, cfg.n_attrs, 31)
    r = noise(3, cfg.noise_dim, 31)
    got = Engine(model).translate(x, 1 - ys, noise=r, source=ys, strength=STRENGTH)
    d, x, r = diff(ys, 1 - ys), x.double(), r.double()
    with torch.no_grad():
        want = G(x, M(r, d) + E(x, -d))
        close(got, want, G(x, M(r, d) + E(x, d)))


def test_k_references_average_their_codes(model, spec):
    """S_ref = mean_k E(x_r^k, d) + E(x, -d) (several references averaged in S)."""
    G, E, _, diff = spec
    cfg = model.config
    x, ys = images(2, cfg.image_size, 41), labels(2, cfg.n_attrs, 41)
    r1, r2 = images(2, cfg.image_size, 42), images(2, cfg.image_size, 43)
    got = Engine(model).translate_reference(x, [r1, r2], source=ys, reference_labels=1 - ys,
                                            strength=STRENGTH)
    d, x, r1, r2 = diff(ys, 1 - ys), x.double(), r1.double(), r2.double()
    with torch.no_grad():
        want = G(x, (E(r1, d) + E(r2, d)) / 2 + E(x, -d))
        close(got, want, G(x, E(r1, d) + E(r2, d) + E(x, -d)))


def test_interpolation_blends_the_two_codes(model, spec):
    """S_int = a S_rand + (1 - a) S_ref at the latent level."""
    G, E, M, diff = spec
    cfg = model.config
    x, ref = images(2, cfg.image_size, 71), images(2, cfg.image_size, 72)
    ys = labels(2, cfg.n_attrs, 71)
    r = noise(2, cfg.noise_dim, 71)
    got = Engine(model).interpolate(x, ref, 1 - ys, [0.3], noise=r, source=ys, strength=STRENGTH)
    d, x, ref, r = diff(ys, 1 - ys), x.double(), ref.double(), r.double()
    with torch.no_grad():
        s_rand, s_ref = M(r, d) + E(x, -d), E(ref, d) + E(x, -d)
        want = G(x, 0.3 * s_rand + 0.7 * s_ref)
        close(got[0], want, G(x, 0.7 * s_rand + 0.3 * s_ref))


def test_a_region_mixes_the_codes_before_decoding(model, spec):
    """A region edit decodes the code mixed by the mask at the code's size (the edit's
    inside, the reconstruction's d = 0 outside), composited over the reconstruction."""
    G, E, M, diff = spec
    cfg = model.config
    s = cfg.image_size
    x, ys = images(2, s, 51), labels(2, cfg.n_attrs, 51)
    r = noise(2, cfg.noise_dim, 51)
    m = torch.zeros(s, s)
    m[:, : s // 2] = 1
    got = Engine(model).translate(x, 1 - ys, noise=r, source=ys, strength=STRENGTH, region=m)
    d, x, r, m = diff(ys, 1 - ys), x.double(), r.double(), m.double()[None, None]
    with torch.no_grad():
        s_edit, s_rec = M(r, d) + E(x, -d), M(r, 0 * d) + E(x, 0 * d)
        m_code = F.avg_pool2d(m, s // s_edit.shape[-1])
        rec = G(x, s_rec)
        want = m * G(x, m_code * s_edit + (1 - m_code) * s_rec) + (1 - m) * rec
        close(got, want, m * G(x, s_edit) + (1 - m) * rec)


def test_references_that_disagree_leave_an_attribute_absent(model, monkeypatch):
    """Labels from the attribute head are averaged over the K references and rounded
    half to even: one reference with every attribute and one with none give 0.5, read as
    absent (``Engine.translate_reference``)."""
    cfg = model.config
    x, ys = images(2, cfg.image_size, 61), labels(2, cfg.n_attrs, 61)
    r1, r2 = images(2, cfg.image_size, 62), images(2, cfg.image_size, 63)
    eng = Engine(model)
    monkeypatch.setattr(eng, "_head_labels", lambda batch: (
        torch.ones if torch.equal(batch[0].cpu(), r1[0]) else torch.zeros)(len(batch), cfg.n_attrs))
    got = eng.translate_reference(x, [r1, r2], source=ys)
    absent, present = (eng.translate_reference(x, [r1, r2], source=ys, reference_labels=y)
                       for y in (torch.zeros_like(ys), torch.ones_like(ys)))
    close(got, absent.double(), present.double())
