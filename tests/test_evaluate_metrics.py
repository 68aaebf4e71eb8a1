"""Exact metric bookkeeping: a classifier that reads labels from pixels and engines whose
answers are known, so every number of evaluate() is known by hand."""
from __future__ import annotations

import pytest
import torch

from bridgegan.evaluate import bootstrap_ci, evaluate
from bridgegan.reference.attributes import apply_edits
from bridgegan.reference.data import PROCEDURAL_ATTRIBUTES
from conftest import small_config

ATTRS = PROCEDURAL_ATTRIBUTES
A = len(ATTRS)


def _write(images, labels):
    """``images`` with label j written to pixel (channel 0, row 0, column j)."""
    out = images.clone()
    out[:, 0, 0, :A] = labels * 2 - 1
    return out


class PixelClassifier:
    """Reads attribute j from pixel (0, 0, j); ``wrong`` (row id, attribute) pairs: it
    reads that attribute inverted on images whose id pixel (channel 1, row 0, col 0) is
    the row id."""

    def __init__(self, wrong=()):
        self.wrong = wrong

    def check_fits(self, attrs, size):
        pass

    def predict(self, x):
        p = (x[:, 0, 0, :A] > 0).float()
        for row, j in self.wrong:
            rows = (x[:, 1, 0, 0] - row / 100).abs() < 1e-6
            p[rows, j] = 1 - p[rows, j]
        return p


class Writer:
    """A perfect editor: writes the target labels into the label pixels; ``bias`` is added
    to every other pixel of every output (reconstructions included), ``noise`` times a
    seeded N(0, 1) draw too (different noise, different output)."""

    attributes = ATTRS
    config = small_config(32, attributes=ATTRS)

    def __init__(self, bias=0.0, noise=0.0):
        self.bias, self.noise, self.reference_calls = bias, noise, []

    def _out(self, images, labels, seed):
        out = images + self.bias
        if self.noise:
            g = torch.Generator().manual_seed(int(seed or 0))
            out = out + self.noise * torch.randn(images.shape, generator=g)
        out[:, 1, 0, 0] = images[:, 1, 0, 0]  # the id pixel is kept
        return _write(out, labels)

    def translate(self, images, target, source=None, strength=None, seed=None):
        if isinstance(target, dict):
            target = apply_edits(source, ATTRS, target)
        return self._out(images, target, seed)

    def translate_reference(self, images, refs, source=None, reference_labels=None,
                            strength=None):
        self.reference_calls.append((images.clone(), refs.clone()))
        return self._out(images, reference_labels, None)

    def reconstruct(self, images, seed=None):
        return self._out(images, (images[:, 0, 0, :A] > 0).float(), seed)


def _sources(n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, A)
    for k in range(n):  # one hair colour each, like the procedural faces
        labels[k] = (torch.rand(A, generator=g) < 0.5).float()
        labels[k, 3:7] = 0
        labels[k, 3 + int(torch.randint(4, (1,), generator=g))] = 1
    images = torch.rand(n, 3, 32, 32, generator=g) - 0.5
    images[:, 1, 0, 0] = torch.arange(n) / 100  # an id per source
    return _write(images, labels), labels


def _truth(images):
    def truth(rows, target):
        return _write(images[rows], target)
    return truth


def test_a_perfect_editor_scores_exactly_one_and_rule_cleared_attributes_are_not_kept():
    """Flipping a hair colour on clears the source's other one (a conflict rule): that
    attribute is changed by the edit, so it counts in neither accuracy nor preservation
    and a perfect editor keeps every verdict it should keep."""
    x, y = _sources(12, seed=11)
    report = evaluate(Writer(), PixelClassifier(), x, y, progress=False)
    assert report["label_edit_accuracy"] == 1.0 and report["label_preservation"] == 1.0
    assert report["reference_edit_accuracy"] == 1.0 and report["reference_preservation"] == 1.0


def test_true_change_is_measured_from_the_models_own_reconstruction():
    """An editor that makes the true change on top of a biased reconstruction: the bias
    is reconstruction error, not change, so the true-change score is 1."""
    x, y = _sources(8, seed=12)
    report = evaluate(Writer(bias=0.05), PixelClassifier(), x, y, progress=False,
                      truth=_truth(x))
    assert report["label_true_change"] == 1.0 and report["reference_true_change"] == 1.0


def test_reference_of_source_k_is_source_k_minus_1():
    x, y = _sources(6, seed=13)
    eng = Writer()
    evaluate(eng, PixelClassifier(), x, y, progress=False)
    assert eng.reference_calls
    for images, refs in eng.reference_calls[::2]:  # the edits (each followed by its d = 0 run)
        ids = (images[:, 1, 0, 0] * 100).round().long()
        assert torch.equal(refs, x[(ids - 1) % len(x)])


def test_attribute_found_on_exactly_90_percent_of_true_flips_is_shown():
    """SHOWN_THRESHOLD is inclusive: 9 of 10 true flips found is shown, 8 of 10 is not."""
    x, y = _sources(10, seed=14)
    one = PixelClassifier(wrong=[(0, 0)])  # Young misread on source 0 only
    two = PixelClassifier(wrong=[(0, 0), (1, 0)])
    r1 = evaluate(Writer(), one, x, y, progress=False, truth=_truth(x))
    r2 = evaluate(Writer(), two, x, y, progress=False, truth=_truth(x))
    assert r1["renderer_edit_accuracy_per_attribute"]["Young"] == 0.9
    assert r2["renderer_edit_accuracy_per_attribute"]["Young"] == 0.8
    assert "Young" in r1["shown_attributes"] and "Young" not in r2["shown_attributes"]


def test_diversity_is_the_mean_absolute_difference_between_noise_draws():
    """Outputs differing by independent N(0, s^2) noise: E|X - Y| = 2 s / sqrt(pi)."""
    x, y = _sources(6, seed=15)
    s = 0.1
    report = evaluate(Writer(noise=s), PixelClassifier(), x, y, progress=False)
    assert report["diversity_l1"] == pytest.approx(2 * s / torch.pi ** 0.5, rel=0.03)


def test_bootstrap_interval_is_95_percent_wide():
    """Many sources of equal counts: the ratio is the mean of the per-source ratios and its
    95% interval is about +-1.96 standard errors (a 90% one would be 16% narrower)."""
    g = torch.Generator().manual_seed(16)
    n = 400
    counts = torch.full((n,), 10.0)
    hits = torch.randint(0, 11, (n,), generator=g).double()
    r = hits / counts
    se = r.std().item() / n ** 0.5
    lo, hi = bootstrap_ci(hits, counts, draws=4000, seed=3)
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.08)
    assert lo < r.mean().item() < hi
