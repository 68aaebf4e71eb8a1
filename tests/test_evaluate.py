"""Evaluation: the metrics themselves, the classifier round trip, and the bookkeeping of
edit accuracy / preservation / diversity on engines whose answers are known."""
from __future__ import annotations

import json

import pytest
import torch

from bridgegan.engine import Engine
from bridgegan.evaluate import TARGETS, evaluate, missed_targets, ssim
from bridgegan.numerics import psnr
from bridgegan.reference import BridgeGAN
from bridgegan.reference.attributes import apply_edits
from bridgegan.reference.classifier import AttributeClassifier, train_classifier
from bridgegan.reference.data import PROCEDURAL_ATTRIBUTES, make_dataset, procedural_batch
from conftest import dead_pid, small_config


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    train = make_dataset("synthetic:512", 32, split="train")
    val = make_dataset("synthetic:64", 32, split="val")
    clf, report = train_classifier(train, val, steps=40, batch=32, progress=False)
    path = tmp_path_factory.mktemp("clf")
    clf.save(path)
    loaded = AttributeClassifier.load(path)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert torch.equal(loaded(x), clf(x))  # round trip is exact
    assert 0.5 < report["val_accuracy_mean"] <= 1.0
    return loaded


class Identity:
    """An 'engine' that returns its sources unchanged (and ignores noise)."""

    attributes = PROCEDURAL_ATTRIBUTES
    config = small_config(32, attributes=PROCEDURAL_ATTRIBUTES)

    def translate(self, images, target, source=None, strength=None, seed=None):
        return images.clone()

    def translate_reference(self, images, refs, source=None, reference_labels=None, strength=None):
        return images.clone()

    def reconstruct(self, images, seed=None):
        return images.clone()


def test_psnr_and_ssim():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    noisy = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    noisier = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert (ssim(x, noisier) < ssim(x, noisy)).all() and (ssim(x, noisy) < 1).all()
    assert (psnr(x, noisier) < psnr(x, noisy)).all()
    # PSNR of a known error: a constant offset of 0.2 on [-1, 1] images -> 10 log10(4 / 0.04)
    assert torch.allclose(psnr(x, x + 0.2), torch.full((2,), 20.0), atol=1e-4)


def test_identity_engine_preserves_everything_and_edits_nothing(classifier):
    x, y = procedural_batch(12, 32, seed=3)
    report = evaluate(Identity(), classifier, x, y, progress=False)
    assert report["strength"] == Identity.config.edit_strength == 1.5  # the default, named
    assert report["label_preservation"] == 1.0 and report["reference_preservation"] == 1.0
    assert report["label_preservation_ci95"] == [1.0, 1.0]
    # unchanged outputs meet a flipped target only where the classifier errs on the source
    err = 1 - report["classifier_accuracy_on_sources"]
    assert report["label_edit_accuracy"] <= err + 0.15
    assert report["diversity_l1"] == 0.0
    assert report["reconstruction_psnr_db"] > 100 and report["reconstruction_ssim"] > 0.999
    assert report["reconstruction_agreement"] == 1.0


def test_evaluate_a_model_through_the_engine(classifier):
    torch.manual_seed(0)
    model = BridgeGAN(small_config(32, attributes=PROCEDURAL_ATTRIBUTES)).eval()
    x, y = procedural_batch(6, 32, seed=4)
    report = evaluate(Engine(model), classifier, x, y, progress=False)
    for key in ("label_edit_accuracy", "label_preservation", "reference_edit_accuracy",
                "reference_preservation", "reconstruction_ssim"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["diversity_l1"] > 0  # noise changes an (untrained) model's output
    for mode in ("label", "reference"):
        lo, hi = report[f"{mode}_preservation_ci95"]
        assert lo <= report[f"{mode}_preservation"] <= hi
    rec = Engine(model).reconstruct(x, seed=0)
    agree = (classifier.predict(rec) == classifier.predict(x)).float()
    assert report["reconstruction_agreement"] == round(agree.mean().item(), 4)
    assert list(report["reconstruction_agreement_per_attribute"].values()) == [
        round(v, 4) for v in agree.mean(0).tolist()]
    assert set(report["label_edit_accuracy_per_attribute"]) == set(PROCEDURAL_ATTRIBUTES)
    # the attribute asked for only (every attribute flipped on every source: the mean of the
    # per-attribute numbers), not the hair colours the conflict rules clear beside it
    per = report["label_edit_accuracy_per_attribute"].values()
    assert report["label_edit_accuracy"] == pytest.approx(sum(per) / len(per), abs=2e-4)
    with pytest.raises(ValueError, match="classifier attributes"):
        evaluate(Engine(BridgeGAN(small_config(32)).eval()), classifier, x, y[:, :6],
                 progress=False)


class Oracle(Identity):
    """An 'engine' whose label and reference edits are the renderer's true edits."""

    def __init__(self, dataset, sources):
        self.dataset, self.sources = dataset, sources

    def _truth(self, images, target):
        rows = [int((self.sources == im).flatten(1).all(1).nonzero()[0]) for im in images]
        return torch.stack([self.dataset.render_labels(i, t) for i, t in zip(rows, target)])

    def translate(self, images, target, source=None, strength=None, seed=None):
        if isinstance(target, dict):
            target = apply_edits(source, self.attributes, target)
        return self._truth(images, target)

    def translate_reference(self, images, refs, source=None, reference_labels=None, strength=None):
        return self._truth(images, reference_labels)


def test_true_change_score_and_shown_attributes(classifier):
    ds = make_dataset("synthetic:10", 32, split="test", seed=5)
    x, y = torch.stack([ds[i][0] for i in range(10)]), ds.labels
    def truth(rows, target):
        return torch.stack([ds.render_labels(int(r), t) for r, t in zip(rows.tolist(), target)])
    none = evaluate(Identity(), classifier, x, y, progress=False, truth=truth)
    true = evaluate(Oracle(ds, x), classifier, x, y, progress=False, truth=truth)
    assert none["label_true_change"] == 0.0 and none["reference_true_change"] == 0.0
    assert true["label_true_change"] == 1.0 and true["reference_true_change"] == 1.0
    # the oracle's outputs are the true edits: its accuracy is the renderer's, per attribute
    assert (true["label_edit_accuracy_per_attribute"]
            == true["renderer_edit_accuracy_per_attribute"])
    assert true["renderer_preservation"] == true["label_preservation"] < 1.0
    assert none["renderer_preservation"] == true["renderer_preservation"]
    assert none["label_preservation"] == 1.0  # no edit keeps every verdict
    shown = true["shown_attributes"]
    assert all(true["renderer_edit_accuracy_per_attribute"][n] >= 0.9 for n in shown)
    assert true["label_edit_accuracy_shown"] >= 0.9 or not shown


def _ssim_wang2004(x, y):
    """SSIM written from Wang et al. 2004 directly (numpy, float64), an independent check:
    for every 11x11 window inside the image, Gaussian weights w (sigma 1.5, sum 1),
    mu = sum w x, sigma^2 = sum w (x - mu)^2, sigma_xy = sum w (x - mu_x)(y - mu_y),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1 on [0, 1]; mean over windows, then
    channels. x, y: (C, H, W) in [-1, 1]."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    r = np.arange(11) - 5.0
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5 ** 2))
    w /= w.sum()
    c1, c2, out = 0.01 ** 2, 0.03 ** 2, []
    for xc, yc in zip((np.asarray(x, np.float64) + 1) / 2, (np.asarray(y, np.float64) + 1) / 2):
        wx, wy = sliding_window_view(xc, (11, 11)), sliding_window_view(yc, (11, 11))
        mx, my = (wx * w).sum((-2, -1)), (wy * w).sum((-2, -1))
        dx, dy = wx - mx[..., None, None], wy - my[..., None, None]
        vx, vy = (w * dx * dx).sum((-2, -1)), (w * dy * dy).sum((-2, -1))
        cxy = (w * dx * dy).sum((-2, -1))
        out.append((((2 * mx * my + c1) * (2 * cxy + c2))
                    / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean())
    return float(np.mean(out))


def test_ssim_matches_wang_2004_on_random_and_structured_images():
    """ssim against the paper's formula computed independently, on seeded random and
    structured images (gradients, a disk, a checkerboard, constants), in float64 and in
    float32 (the evaluation's dtype: float32 inputs must not cost precision), and one value
    by hand: constant images, where SSIM is the luminance term alone."""
    g = torch.Generator().manual_seed(0)
    s = 32
    yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
    rand = torch.rand(3, s, s, generator=g) * 2 - 1
    grad = torch.stack([xx, yy, xx * yy]) * 2 - 1
    disk = torch.where((xx - .5) ** 2 + (yy - .5) ** 2 < .1, 0.8, -0.6).expand(3, -1, -1)
    check = (((xx * 8).floor() + (yy * 8).floor()) % 2 * 2 - 1).expand(3, -1, -1)

    def noise(t, k):
        return (t + k * torch.randn(t.shape, generator=g)).clamp(-1, 1)

    pairs = [(rand, noise(rand, 0.1)), (rand, torch.rand(3, s, s, generator=g) * 2 - 1),
             (grad, (grad * 0.9 + 0.05)), (disk, noise(disk, 0.05)),
             (check, check.roll(1, 2)), (grad, noise(grad, 0.02))]
    a = torch.stack([p for p, _ in pairs]).double()
    b = torch.stack([q for _, q in pairs]).double()
    want = torch.tensor([_ssim_wang2004(p, q) for p, q in zip(a, b)], dtype=torch.float64)
    assert torch.allclose(ssim(a, b), want, rtol=0, atol=1e-12)
    a32, b32 = a.float(), b.float()  # exactly representable: the same images in float32
    want32 = torch.tensor([_ssim_wang2004(p, q) for p, q in zip(a32, b32)], dtype=torch.float64)
    got32 = ssim(a32, b32)
    assert got32.dtype == torch.float32
    assert torch.allclose(got32.double(), want32, rtol=0, atol=1e-6), (got32.double() - want32)
    # constants 0.1 and 0.15 on [0, 1]: (2 * 0.1 * 0.15 + C1) / (0.1^2 + 0.15^2 + C1)
    c = torch.full((1, 3, s, s), -0.8, dtype=torch.float64)
    assert ssim(c, c + 0.1).item() == pytest.approx(0.0301 / 0.0326, abs=1e-12)


def test_missed_targets_names_each_shortfall():
    good = {k: v + 0.01 for k, v in TARGETS.items()}
    assert missed_targets(good) == []
    bad = dict(good, reconstruction_psnr_db=21.5, diversity_l1=0.0)
    missed = missed_targets(bad)
    assert len(missed) == 2 and "reconstruction_psnr_db 21.5 < 28.0" in missed
    assert len(missed_targets({})) == len(TARGETS)


def test_classifier_kernel_round_trips_and_older_files_load_as_kernel_4(tmp_path):
    """A classifier used in training may differ from the judge in kernel size: saved and
    loaded exactly; a classifier.json written before the option loads with kernel 4."""
    import json

    torch.manual_seed(2)
    attrs = ("Male", "Young")
    clf = AttributeClassifier(attrs, 32, 8, kernel=3)
    clf.save(tmp_path / "k3")
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    loaded = AttributeClassifier.load(tmp_path / "k3")
    assert loaded.kernel == 3 and torch.equal(loaded(x), clf(x))
    assert [f.shape[-1] for f in clf.features(x)] == [16, 8, 4, 2]
    AttributeClassifier(attrs, 32, 8).save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "classifier.json").read_text())
    del meta["kernel"]
    (tmp_path / "old" / "classifier.json").write_text(json.dumps(meta))
    assert AttributeClassifier.load(tmp_path / "old").kernel == 4
    loaded.check_fits(attrs, 32)
    with pytest.raises(ValueError, match="trained at 32 px, the model makes 64 px images"):
        loaded.check_fits(attrs, 64)
    with pytest.raises(ValueError, match=r"kernel must be one of \(3, 4\), got 5"):
        AttributeClassifier(attrs, 32, 8, kernel=5)
    # a downloaded classifier.json: a width of 2000 allocated 11 GB before the weights
    # were read; a kernel of 4.0 passed the check and failed in torch
    for field, value, problem in (("width", 2000, r"width must be an integer from 1 to 64, "
                                                  r"got 2000"),
                                  ("kernel", 4.0, r"kernel must be one of \(3, 4\), got 4.0")):
        meta = json.loads((tmp_path / "k3" / "classifier.json").read_text())
        meta[field] = value
        (tmp_path / "bad").mkdir(exist_ok=True)
        (tmp_path / "bad" / "classifier.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=problem):
            AttributeClassifier.load(tmp_path / "bad")


def test_bootstrap_interval_resamples_sources():
    """Sources with 9 of 10 verdicts kept and sources with 5 of 10: the ratio is 0.7 and
    the interval spans what resampling which faces came in can give."""
    from bridgegan.evaluate import bootstrap_ci

    hits = torch.tensor([9.0, 5.0] * 50)
    counts = torch.full((100,), 10.0)
    lo, hi = bootstrap_ci(hits, counts)
    assert 0.65 < lo < 0.7 < hi < 0.75
    lo1, hi1 = bootstrap_ci(hits.repeat(16), counts.repeat(16))  # 16x the sources
    assert hi1 - lo1 < (hi - lo) / 3
    assert bootstrap_ci(torch.full((5,), 3.0), torch.full((5,), 3.0)) == [1.0, 1.0]


def test_eval_command_prints_the_report_and_writes_its_json(tmp_path, capsys):
    """`bridgegan eval` on a small checkpoint and a saved classifier: status 0, the report
    table on stdout, and --json holding every metric of evaluate() on the same sources
    (the test split of the procedural faces, with their true edits) plus what was judged."""
    import json

    from bridgegan.cli import main
    from bridgegan.evaluate import _sources, format_report
    from bridgegan.reference import save_checkpoint
    from conftest import dead_pid, randomize

    torch.manual_seed(6)
    model = randomize(BridgeGAN(small_config(32, attributes=PROCEDURAL_ATTRIBUTES)), seed=6)
    ck = save_checkpoint(tmp_path / "ck", model.eval())
    torch.manual_seed(7)
    AttributeClassifier(PROCEDURAL_ATTRIBUTES, 32, 8).save(tmp_path / "clf")
    out = tmp_path / "report.json"
    leftover = tmp_path / f".report.json.tmp-{dead_pid()}-ab"  # a killed run's write
    leftover.write_text("{")
    n, seed = 4, 3
    threads = torch.get_num_threads()
    try:
        assert main(["eval", "--checkpoint", str(ck), "--classifier", str(tmp_path / "clf"),
                     "--data", "synthetic:16", "--n", str(n), "--seed", str(seed), "--json",
                     str(out), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    stdout = capsys.readouterr().out
    report = json.loads(out.read_text())
    # the same evaluation in process: the command judged these sources with these models
    eng, clf = Engine.from_checkpoint(ck), AttributeClassifier.load(tmp_path / "clf")
    x, y, truth = _sources("synthetic:16", 32, list(PROCEDURAL_ATTRIBUTES), "test", n, seed)
    want = evaluate(eng, clf, x, y, seed=seed, progress=False, truth=truth)
    want.update(checkpoint=str(ck), data="synthetic:16", split="test", seed=seed)
    assert report == json.loads(json.dumps(want))
    assert report["sources"] == n and report["strength"] == model.config.edit_strength
    for key in ("label_edit_accuracy", "label_preservation", "reference_edit_accuracy",
                "reference_preservation", "reconstruction_ssim", "reconstruction_agreement",
                "label_true_change", "reference_true_change", "classifier_accuracy_on_sources"):
        assert isinstance(report[key], float) and report[key] <= 1.0, key
    assert set(report["label_edit_accuracy_per_attribute"]) == set(PROCEDURAL_ATTRIBUTES)
    rec = Engine(model).reconstruct(x, seed=seed)
    assert report["reconstruction_psnr_db"] == round(psnr(rec, x).mean().item(), 2)
    assert report["diversity_l1"] > 0  # noise changes a randomised model's output
    assert stdout == f"{format_report(report)}\nwrote {out}\n"
    assert not leftover.exists()
    lines = {line[:22].strip(): line[22:].split() for line in stdout.splitlines()}
    assert lines["reconstruction PSNR"] == [f"{report['reconstruction_psnr_db']:.2f}", "dB"]
    assert lines["diversity (L1)"] == [f"{report['diversity_l1']:.4f}"]
    assert lines["edit accuracy"] == [f"{report[f'{m}_edit_accuracy']:.1%}"
                                      for m in ("label", "reference")]
    assert lines["preservation"] == [f"{report[f'{m}_preservation']:.1%}"
                                     for m in ("label", "reference")]


def test_metrics_without_samples_are_none_not_numbers():
    """One source is its own reference (the references are the sources rolled by one), so
    no reference-based edit is made: those metrics are unknown (None, "n/a" in the table),
    never 0% accuracy and preservation or a perfect true-change score of 1."""
    from bridgegan.evaluate import format_report

    torch.manual_seed(3)
    clf = AttributeClassifier(PROCEDURAL_ATTRIBUTES, 32, 8)
    ds = make_dataset("synthetic:2", 32, split="test", seed=5)
    x, y = ds[0][0][None], ds.labels[:1]

    def truth(rows, target):
        return torch.stack([ds.render_labels(int(r), t) for r, t in zip(rows.tolist(), target)])

    report = evaluate(Identity(), clf, x, y, progress=False, truth=truth)
    for key in ("reference_edit_accuracy", "reference_preservation",
                "reference_preservation_ci95", "reference_edit_accuracy_shown",
                "reference_true_change"):
        assert report[key] is None, key
    assert all(v is None for v in report["reference_edit_accuracy_per_attribute"].values())
    assert report["label_true_change"] == 0.0 and report["label_preservation"] == 1.0
    table = format_report(report).splitlines()
    assert "n/a" in table[1]  # edit accuracy, reference column
    at = next(i for i, line in enumerate(table) if line.startswith("preservation"))
    assert table[at + 1].startswith("  95% interval")  # the preservation's, beneath it


def test_an_interrupted_classifier_run_resumes_to_the_uninterrupted_result(tmp_path,
                                                                             monkeypatch):
    """A classifier run stopped after a step keeps its state (also every SAVE_EVERY steps)
    and its resume gives the uninterrupted run's weights and report, bit for bit; a state
    of other settings is refused, naming them."""
    from bridgegan.reference import classifier as clf_module
    from bridgegan.reference.classifier import ClassifierStopped

    monkeypatch.setattr(clf_module, "SAVE_EVERY", 2)
    train = make_dataset("synthetic:24", 32, "Male,Young,Smiling", split="train")
    val = make_dataset("synthetic:8", 32, "Male,Young,Smiling", split="val")
    kw = dict(steps=7, batch=4, width=4, seed=3, progress=False)
    whole, report = train_classifier(train, val, **kw)
    state, steps = tmp_path / "state", []

    def stop_at_three() -> bool:
        steps.append(None)
        return len(steps) == 3
    with pytest.raises(ClassifierStopped) as stopped:
        train_classifier(train, val, state=state, stop=stop_at_three, **kw)
    assert stopped.value.step == 3 and (state / "state.json").is_file()
    resumed, again = train_classifier(train, val, state=state, resume=True, **kw)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert again["val_accuracy"] == report["val_accuracy"]
    with pytest.raises(ValueError, match=r"other settings \(steps 7 there, 8 here\)"):
        train_classifier(train, val, state=state, resume=True, **{**kw, "steps": 8})
    from bridgegan.reference.checkpoint import CheckpointError, read_tensors, write_tensors

    tensors = read_tensors(state / "state.safetensors")
    tensors["adam.0.exp_avg"][0] = float("nan")  # a damaged state: named, not a late failure
    write_tensors(tensors, state / "state.safetensors")
    with pytest.raises(CheckpointError, match=r"damaged .* non-finite: exp_avg of weight 0\)"):
        train_classifier(train, val, state=state, resume=True, **kw)
    kept = tmp_path / "kept"  # a run that is not stopped keeps its state every 2 steps
    train_classifier(train, val, state=kept, **kw)
    assert json.loads((kept / "state.json").read_text())["step"] == 6


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_train_classifier_stops_on_a_signal_and_resumes(tmp_path, monkeypatch, capsys, sig):
    """`train-classifier` stopped by Ctrl-C or SIGTERM (here at the 13th image read: the
    third step's last, after the first image's) ends after that step with its state in
    OUT/state, status 128 + the signal; `--resume` finishes the run as an uninterrupted
    one, its state gone. A state is not overwritten by a new run, nor is --resume taken
    without one; a state write a SIGKILL cut short is no obstacle."""
    import os
    import signal

    from bridgegan.cli import main
    from bridgegan.reference.data.synthetic import ProceduralFaces

    def run(out, *extra):
        return main(["train-classifier", "--data", "synthetic:24", "--resolution", "32",
                     "--attributes", "Male,Young", "--steps", "6", "--batch", "4", "--width",
                     "4", "--threads", "1", "--out", str(out), *extra])

    assert run(tmp_path / "whole") == 0
    reads, get = [], ProceduralFaces.__getitem__

    def interrupted(self, i):
        reads.append(i)
        if len(reads) == 13:
            os.kill(os.getpid(), getattr(signal, sig))
        return get(self, i)
    monkeypatch.setattr(ProceduralFaces, "__getitem__", interrupted)
    out = tmp_path / "clf"
    assert run(out) == 128 + getattr(signal, sig)
    assert f"stopped by {sig} at step 3 with its state in {out / 'state'}; continue with " \
           f"--resume" in capsys.readouterr().err
    monkeypatch.undo()
    cut = out / f".state.tmp-{dead_pid()}-0a1b2c3d"  # what a killed state write leaves
    cut.mkdir()
    (cut / "state.json").write_text("{")
    assert run(out) == 2 and "pass --resume to continue it" in capsys.readouterr().err
    assert run(tmp_path / "new", "--resume") == 2
    assert "holds no interrupted run's state" in capsys.readouterr().err
    assert run(out, "--resume") == 0 and not (out / "state").exists()
    assert (out / "classifier.safetensors").read_bytes() == \
        (tmp_path / "whole" / "classifier.safetensors").read_bytes()
