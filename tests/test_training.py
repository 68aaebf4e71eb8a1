"""Training: every parameter moves, the reconstruction loss falls, resume is bit-exact,
checkpoints hold no pickles, the CLI trains and resumes."""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bridgegan.reference import load_checkpoint
from bridgegan.reference.layers import InstanceNorm
from bridgegan.reference.checkpoint import read_config, read_tensors
from bridgegan.reference.data import make_dataset
from bridgegan.reference.train_data import ResumableBatchSampler, epoch_order
from bridgegan.reference.train_modes import AMP_MODES
from bridgegan.reference.train_config import TrainConfig
from bridgegan.reference.run_folder import CHECKPOINTS, SAMPLES, latest_checkpoint
from bridgegan.reference.train_state import STATE_JSON, STATE_TENSORS, read_train_state
from bridgegan.reference.trainer import Trainer
from conftest import dead_pid, read_image, small_config, stops_without_gc

SIZE = 32


@pytest.fixture(scope="module")
def faces():
    return make_dataset("synthetic:48", SIZE)


def tiny(dataset, **kw):
    return small_config(SIZE, attributes=dataset.attributes, **kw)


def train_config(**kw) -> TrainConfig:
    base = dict(batch=8, n_d=1, steps=4, workers=0, log_every=0, sample_every=0, ckpt_every=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: multi-threaded oneDNN kernels were seen to differ in the last
    bits on their first call, which would break the bit-exact comparisons, and spinning
    OpenMP threads slow these tiny workloads down badly on a loaded 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def deterministic():
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(old)


def test_one_step_updates_every_parameter_and_only_the_references_memory_rows(faces):
    t = Trainer(tiny(faces), train_config(n_d=2), faces, progress=False)
    before = {k: v.detach().clone() for k, v in t.model.named_parameters()}
    ema_before = {k: v.detach().clone() for k, v in t.ema.generator.named_parameters()}
    table = t.memory.table.clone()
    decay = t.ema_decay()
    seen, written = [], []
    local, write = t._local, t.memory.write
    t._local = lambda *a: seen.append(local(*a)) or seen[-1]
    t.memory.write = lambda index, rows: written.append(index.clone()) or write(index, rows)
    terms = t.train_step()
    # the G step's noise is each REFERENCE's stored r0, and the refined noise goes back
    # into those same rows, in the same order (spec section 5)
    g_step = seen[-1]
    assert torch.equal(g_step["noise"], table[g_step["ref_index"]])
    assert len(written) == 1 and torch.equal(written[0], g_step["ref_index"])
    for net in ("generator", "encoder", "mapping", "discriminator"):
        params = [(k, v) for k, v in t.model.named_parameters() if k.startswith(net + ".")]
        assert params
        unchanged = [k for k, v in params if torch.equal(v, before[k])]
        assert not unchanged, f"{net}: parameters not updated: {unchanged}"
    # EMA moved towards the new weights, by (1 - decay) of the step
    for k, v in t.ema.generator.named_parameters():
        raw = dict(t.model.generator.named_parameters())[k]
        assert torch.allclose(v, ema_before[k] + (1 - decay) * (raw - ema_before[k]), atol=1e-7)
    # the memory rows written are exactly the generator batch's references (the whole
    # batch: the permutation is a bijection); the D batches' rows are not written
    changed = (t.memory.table != table).any(1).nonzero().flatten()
    g_batch = t.sampler.global_batch_indices(2)  # batches 0, 1 fed D, batch 2 fed G
    assert torch.equal(changed.sort().values, g_batch.sort().values)
    assert t.memory.table[g_batch].abs().max() <= 1  # refined rows are clipped
    assert t.step == 1 and t.batches == 3
    assert all(torch.isfinite(v) for v in terms.values())
    assert {"d/adv", "d/gp", "d/attr", "g/adv", "g/attr", "g/rec", "g/latent", "g/cycle",
            "g/mode_seeking", "g/total"} <= set(terms)


def test_ema_decay_warms_up_to_the_configured_value(faces):
    t = Trainer(tiny(faces), train_config(ema=0.999), faces, progress=False)
    decays = []
    for step in (0, 10, 100, 20_000):
        t.step = step
        decays.append(t.ema_decay())
    assert decays[0] == pytest.approx(0.1) and decays[1] == pytest.approx(11 / 20)
    assert decays == sorted(decays) and decays[-1] == 0.999


def test_cosine_schedule_sets_each_steps_learning_rate_from_the_step_alone(faces, tmp_path):
    tc = train_config(lr=1e-3, lr_schedule="cosine", steps=4, log_every=1)
    t = Trainer(tiny(faces), tc, faces, out_dir=tmp_path, progress=False)
    t.train(3)
    cosine = [1e-3 * (1 + math.cos(math.pi * s / 4)) / 2 for s in range(5)]
    # step 3 (the third) ran at the rate of step index 2, for G/E/M and D alike
    assert {g["lr"] for opt in (t.opt_g, t.opt_d) for g in opt.param_groups} == {5e-4}
    logged = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").open()]
    assert logged == pytest.approx(cosine[1:4])  # each record: the next step's rate
    t.step = 4
    assert t.learning_rate() == 0.0
    t.step = 9  # beyond steps it stays at 0 instead of climbing the cosine again
    assert t.learning_rate() == 0.0
    assert Trainer(tiny(faces), train_config(lr=3e-4), faces, progress=False).learning_rate() == 3e-4
    # a resume that changes steps would move the rest of the schedule: said, not refused
    longer = Trainer(tiny(faces), train_config(lr=1e-3, lr_schedule="cosine", steps=8), faces,
                     progress=False)
    with pytest.warns(UserWarning, match="resuming with steps=8 but the checkpoint used 4"):
        longer.load(latest_checkpoint(tmp_path))
    # EMA switched off (or its decay changed) drops the accumulated average: said
    no_ema = Trainer(tiny(faces), train_config(lr=1e-3, lr_schedule="cosine", steps=4, ema=0.0),
                     faces, progress=False)
    with pytest.warns(UserWarning, match="resuming with ema=0.0 but the checkpoint used"):
        no_ema.load(latest_checkpoint(tmp_path))
    # a checkpoint written before the option existed ran at a constant rate: no warning
    ckpt = latest_checkpoint(tmp_path)
    meta = json.loads((ckpt / STATE_JSON).read_text())
    del meta["train_config"]["lr_schedule"]
    (ckpt / STATE_JSON).write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(tiny(faces), train_config(lr=1e-3, steps=4), faces, progress=False).load(ckpt)


def test_paired_loss_trains_towards_the_rendered_true_edit(faces):
    """With the paired weight on, the generator step sees each source drawn with its
    target labels: the rendered targets are those of the procedural renderer, and the
    paired term is the L1 of the three fakes to them."""
    cfg = train_config(n_d=0, ema=0.0, noise_memory="off",
                       weights={"adv": 0.0, "attr": 0.0, "paired": 100.0})
    t = Trainer(tiny(faces), cfg, faces, progress=False)
    idx = torch.tensor([3, 5])
    target = faces.labels[[7, 9]]
    truth = t._true_edits(idx, target)
    for k, (i, y) in enumerate(zip(idx.tolist(), target)):
        full = {n: int(v) for n, v in zip(faces.attributes, y.tolist())}
        assert torch.equal(truth[k], faces.render(i, full)[0])
    d_before = [p.detach().clone() for p in t.model.discriminator.parameters()]
    terms = [t.train_step() for _ in range(3)]
    assert all(0 < s["g/paired"].item() < 2 for s in terms)
    assert all(s["g/adv"].item() == 0 for s in terms)  # the critic is not run
    assert all(torch.equal(a, b) for a, b in zip(d_before, t.model.discriminator.parameters()))


def test_feature_loss_trains_with_a_frozen_classifier_from_its_folder(faces, tmp_path):
    """--w-feature with --feature-classifier: the classifier is loaded from its folder,
    stays frozen, and g/feature enters the step; a classifier of other attributes or size,
    or a weight without a folder, is refused with what is wrong."""
    from bridgegan.reference.classifier import AttributeClassifier

    torch.manual_seed(3)
    AttributeClassifier(faces.attributes, SIZE, 8, kernel=3).save(tmp_path / "clf")
    cfg = train_config(n_d=0, ema=0.0, noise_memory="off", feature_classifier=str(tmp_path / "clf"),
                       weights={"adv": 0.0, "attr": 0.0, "paired": 100.0, "feature": 10.0})
    t = Trainer(tiny(faces), cfg, faces, progress=False)
    before = [p.clone() for p in t.feature_net.parameters()]
    g_before = t.model.generator.to_rgb.weight.detach().clone()
    terms = [t.train_step() for _ in range(2)]
    assert all(s["g/feature"].item() > 0 for s in terms)
    assert all(torch.equal(a, b) for a, b in zip(before, t.feature_net.parameters()))
    assert not torch.equal(g_before, t.model.generator.to_rgb.weight)
    AttributeClassifier(faces.attributes[:3], SIZE, 8).save(tmp_path / "other")
    with pytest.raises(ValueError, match=r"--feature-classifier .*other: classifier attributes "
                                         r".* differ from the model's .*: train one with `bridgegan "
                                         r"train-classifier --attributes Young,Mouth_Slightly_Open,"):
        Trainer(tiny(faces), train_config(feature_classifier=str(tmp_path / "other"),
                                          weights={"feature": 1.0}), faces, progress=False)
    with pytest.raises(ValueError, match="needs both a weight > 0"):
        train_config(weights={"feature": 1.0})
    with pytest.raises(ValueError, match="needs both a weight > 0"):
        train_config(feature_classifier=str(tmp_path / "clf"))


def test_single_edits_take_one_attribute_from_the_reference(faces):
    """With single_edits 1 each target is its source with one attribute set to the
    reference's value (the conflict rules may clear others); with 0 it is the reference's
    labels, as in the paper; the draws are those of the step (resume stays exact)."""
    from bridgegan.reference.attributes import apply_edits

    t = Trainer(tiny(faces), train_config(single_edits=1.0), faces, progress=False)
    names = t.model_config.attributes
    batch, draws = t.read_batches(1)[0], t._draws(0)
    p = t._local(batch, draws)
    y, yr_full = p["y"], batch[1][draws["perm"]]
    singles = 0
    for k in range(len(y)):
        differ = (y[k] != yr_full[k]).nonzero().flatten().tolist()
        if not differ:
            assert torch.equal(p["yr"][k], y[k])
            continue
        taken = [j for j in differ if p["yr"][k, j] == yr_full[k, j]]
        assert any(torch.equal(p["yr"][k], apply_edits(y[k:k + 1], names, {names[j]: int(yr_full[k, j])})[0])
                   for j in taken)
        singles += 1
    assert singles >= 4
    assert torch.equal(t._local(batch, draws)["yr"], p["yr"])  # same draws, same targets
    t0 = Trainer(tiny(faces), train_config(), faces, progress=False)
    assert torch.equal(t0._local(batch, draws)["yr"], yr_full)


def test_init_xavier_draws_the_weights_as_the_authors_code(faces):
    """init "xavier": every convolution and linear weight Glorot-uniform within
    sqrt(6 / (fan_in + fan_out)), every bias 0, the instance norms at scale 1 and shift 0;
    "torch" (the default) keeps PyTorch's (non-zero biases, other bounds). Each run's draw
    comes from its seed alone."""
    xavier = Trainer(tiny(faces), train_config(init="xavier"), faces, progress=False).model
    again = Trainer(tiny(faces), train_config(init="xavier"), faces, progress=False).model
    built = Trainer(tiny(faces), train_config(), faces, progress=False).model
    scaled, torch_biases = [], []
    for layer, same, other in zip(xavier.modules(), again.modules(), built.modules()):
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            receptive = layer.weight[0, 0].numel()
            bound = math.sqrt(6 / (receptive * (layer.weight.shape[0] + layer.weight.shape[1])))
            scaled.append(layer.weight.detach().flatten() / bound)
            assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
            assert torch.equal(layer.weight, same.weight)
            torch_biases.append(other.bias.detach().abs().max())
        elif isinstance(layer, InstanceNorm):
            assert torch.equal(layer.weight, torch.ones_like(layer.weight))
            assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    u = torch.cat(scaled)  # U(-1, 1) if every layer kept its own bound
    assert u.abs().max() <= 1 and u.abs().max() > 0.999
    assert abs(u.std().item() - 1 / math.sqrt(3)) < 0.01 and abs(u.mean().item()) < 0.01
    assert min(torch_biases) > 0


def test_paired_loss_needs_data_that_renders_the_true_edit(faces):
    class NoRender(torch.utils.data.Dataset):
        attributes = faces.attributes

        def __len__(self):
            return len(faces)

        def __getitem__(self, i):
            return faces[i]

    cfg = train_config(weights={"paired": 1.0})
    with pytest.raises(ValueError, match="render the true edit"):
        Trainer(tiny(faces), cfg, NoRender(), progress=False)


def test_init_from_starts_from_the_weights_of_an_fp16_inference_checkpoint(tmp_path):
    """--init-from: the run starts at step 0 from a checkpoint's weights (raw and EMA), with
    the architecture read from it; with --resume auto finding a checkpoint it is ignored."""
    from bridgegan.cli import main
    from bridgegan.reference import load_checkpoint, save_checkpoint

    args = ["train", "--data", "synthetic:24", "--batch", "8", "--n-d", "1", "--workers", "0",
            "--log-every", "0", "--sample-every", "0", "--ckpt-every", "0", "--no-progress",
            "--d-attr-warmup", "0"]
    first = tmp_path / "first"
    assert main([*args, "--resolution", "32", "--g-width", "8", "--e-width", "4",
                 "--e-blocks", "1", "--latent-channels", "8", "--spade-hidden", "16",
                 "--mapping-channels", "16", "--noise-dim", "8", "--d-width", "4",
                 "--d-downs", "3", "--steps", "2", "--out", str(first)]) == 0
    shipped = save_checkpoint(tmp_path / "shipped", load_checkpoint(latest_checkpoint(first)),
                              dtype=torch.float16)
    second = tmp_path / "second"
    t = Trainer(read_config(shipped), train_config(), make_dataset("synthetic:24", SIZE),
                progress=False)
    t.init_weights(shipped)
    want = load_checkpoint(shipped)
    assert t.step == 0 and all(torch.equal(a, b) for a, b in zip(
        t.model.state_dict().values(), want.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(t.ema.generator.parameters(),
                                                 want.generator.parameters()))
    assert main([*args, "--init-from", str(shipped), "--steps", "1", "--out", str(second)]) == 0
    assert json.loads((latest_checkpoint(second) / STATE_JSON).read_text())["step"] == 1
    assert main([*args, "--init-from", str(tmp_path / "missing"), "--resume", "auto",
                 "--steps", "2", "--out", str(second)]) == 0  # resumed: init ignored
    assert main([*args, "--init-from", str(shipped), "--resume", str(latest_checkpoint(second)),
                 "--steps", "3", "--out", str(second)]) == 2


def test_widening_computes_what_the_narrower_model_did(tmp_path, faces):
    """--init-from CKPT --widen: every width raised at once, the wider model's label-based,
    reference-based and discriminator outputs equal the checkpoint's; a config that is not
    a widening is refused naming the field, and the CLI trains a widened model."""
    from bridgegan.cli import main
    from bridgegan.reference import BridgeGAN, save_checkpoint
    from bridgegan.reference.widen import widen_into
    from conftest import images, labels, randomize

    cfg = tiny(faces)
    narrow = randomize(BridgeGAN(cfg), seed=4).eval()
    wide_cfg = cfg.replace(g_width=cfg.g_width + 4, e_width=2 * cfg.e_width,
                           latent_channels=2 * cfg.latent_channels, spade_hidden=cfg.spade_hidden + 3,
                           mapping_channels=2 * cfg.mapping_channels, d_width=cfg.d_width + 1)
    wide = BridgeGAN(wide_cfg).eval()
    assert widen_into(wide, narrow) > 0
    x, ys = images(3, SIZE, 4), labels(3, cfg.n_attrs, 4)
    noise = torch.randn(3, cfg.noise_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(wide.translate(x, ys, {"Male": 1}, noise=noise),
                           narrow.translate(x, ys, {"Male": 1}, noise=noise))
        assert torch.equal(wide.translate_reference(x, x.flip(0), ys, ys.flip(0)),
                           narrow.translate_reference(x, x.flip(0), ys, ys.flip(0)))
        for a, b in zip(wide.discriminator(x), narrow.discriminator(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for bad, field in ((cfg.replace(e_width=cfg.e_width - 1), "e_width"),
                       (cfg.replace(noise_dim=cfg.noise_dim + 1), "noise_dim"),
                       (cfg.replace(e_blocks=cfg.e_blocks + 1), "e_blocks")):
        with pytest.raises(ValueError, match=f"lowers none; these differ: {field}"):
            widen_into(BridgeGAN(bad), narrow)
    save_checkpoint(tmp_path / "narrow", narrow)
    args = ["train", "--data", "synthetic:24", "--batch", "8", "--n-d", "1", "--workers", "0",
            "--log-every", "0", "--sample-every", "0", "--ckpt-every", "0", "--no-progress",
            "--d-attr-warmup", "0", "--steps", "1", "--resolution", "32", "--g-width", "8",
            "--e-width", "8", "--e-blocks", "1", "--latent-channels", "16", "--spade-hidden",
            "16", "--mapping-channels", "16", "--noise-dim", "8", "--d-width", "4", "--d-downs",
            "3", "--init-from", str(tmp_path / "narrow")]
    assert main([*args, "--out", str(tmp_path / "same")]) == 2  # widths differ: refused
    assert main([*args[:-2], "--widen", "--out", str(tmp_path / "none")]) == 2  # no --init-from
    assert main([*args, "--widen", "--out", str(tmp_path / "wide")]) == 0
    assert read_config(latest_checkpoint(tmp_path / "wide")).latent_channels == 16


def test_reconstruction_loss_decreases_on_procedural_faces():
    data = make_dataset("synthetic:64", SIZE)
    t = Trainer(tiny(data), train_config(n_d=1, lr=5e-4, seed=1), data, progress=False)
    rec = [t.train_step()["g/rec"].item() for _ in range(36)]
    first, last = sum(rec[:6]) / 6, sum(rec[-6:]) / 6
    assert last < 0.88 * first, (first, last, rec)


def test_attribute_warm_up_trains_only_the_discriminator_and_is_kept_on_resume(tmp_path):
    data = make_dataset("synthetic:64", SIZE)
    t = Trainer(tiny(data), train_config(d_attr_warmup=30, lr=1e-3, seed=2), data,
                out_dir=tmp_path, progress=False)
    gen = {k: v.detach().clone() for k, v in t.model.named_parameters()
           if not k.startswith("discriminator.")}
    x, y = torch.stack([data[i][0] for i in range(32)]), torch.stack([data[i][1] for i in range(32)])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    with torch.no_grad():
        before = bce(t.model.discriminator(x)[1], y).item()
    record = t.warm_up()
    assert t.step == 0 and t.warmup_done == 30 and t.batches == 30
    assert set(record) >= {"warmup/d_attr", "warmup/d_acc"}
    assert all(torch.equal(v, dict(t.model.named_parameters())[k]) for k, v in gen.items())
    with torch.no_grad():
        after = bce(t.model.discriminator(x)[1], y).item()
    assert after < 0.9 * before, (before, after)
    assert t.warm_up() == {}  # nothing left to do
    t.train(1)
    resumed = Trainer(tiny(data), train_config(d_attr_warmup=30, seed=2), data, progress=False)
    resumed.load(latest_checkpoint(tmp_path))
    assert resumed.warmup_done == 30 and resumed.warm_up() == {}


def test_time_limit_stops_with_a_final_checkpoint(faces, tmp_path):
    """Behaviour, not speed: the run stops long before its steps (at whatever step a busy
    machine reached, 0 included) and leaves a checkpoint of that step."""
    t = Trainer(tiny(faces), train_config(), faces, out_dir=tmp_path, progress=False)
    t.train(steps=100_000, time_limit=1.0)
    assert t.step < 100_000
    assert latest_checkpoint(tmp_path).name == f"step-{t.step:08d}"


def test_a_new_run_removes_what_killed_writes_left(faces, tmp_path):
    """What a killed run's checkpoint and sample-grid writes left (temporary names of a
    process that is gone) is removed as the next run starts in its folder; a running
    process's is kept (in use)."""
    gone = [tmp_path / CHECKPOINTS / f".step-00000002.tmp-{dead_pid()}-ab",
            tmp_path / SAMPLES / f".step-00000002.png.tmp-{dead_pid()}-cd"]
    running = tmp_path / SAMPLES / f".step-00000004.png.tmp-{os.getpid()}-ef"
    for path in gone + [running]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"partial")
    Trainer(tiny(faces), train_config(), faces, out_dir=tmp_path, progress=False)
    assert [p.exists() for p in gone] == [False, False] and running.exists()


def _slow_clock(t: Trainer, monkeypatch, **seconds) -> list[float]:
    """A stand-in clock for the trainer module that advances ``seconds[name]`` whenever
    ``t.<name>`` runs (train_step, save, _d_attr_step), and only then."""
    from bridgegan.reference import trainer as trainer_module

    clock = [0.0]
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(
        monotonic=lambda: clock[0], perf_counter=time.perf_counter))
    for name, dt in seconds.items():
        def slow(*args, _run=getattr(t, name), _dt=dt, **kwargs):
            clock[0] += _dt
            return _run(*args, **kwargs)
        monkeypatch.setattr(t, name, slow)
    return clock


def test_time_limit_leaves_room_for_the_next_step_and_the_final_checkpoint(faces, tmp_path,
                                                                          monkeypatch):
    """A step takes 10 s, a checkpoint 30 s (every 3 steps): a 100 s limit runs step 4
    (ending at 70 s), stops there (step 5 and a checkpoint would end at 110 s) and ends its
    final checkpoint at 100 s (without a margin: step 6 and its checkpoint, ending at 120 s;
    with the checkpoint counted in the step too: step 3, at 60 s)."""
    t = Trainer(tiny(faces), train_config(ckpt_every=3), faces, out_dir=tmp_path,
                progress=False)
    clock = _slow_clock(t, monkeypatch, train_step=10, save=30)
    t.train(steps=100, time_limit=100.0)
    assert t.step == 4 and clock[0] == 100.0
    assert latest_checkpoint(tmp_path).name == "step-00000004"


def test_a_warm_up_stopped_by_the_time_limit_ends_the_run(faces, tmp_path, monkeypatch):
    """Warm-up updates of 10 s and a 55 s limit: five updates, then the run stops with no
    generator step (which would leave the warm-up never completed) and resumes it."""
    t = Trainer(tiny(faces), train_config(d_attr_warmup=10), faces, out_dir=tmp_path,
                progress=False)
    clock = _slow_clock(t, monkeypatch, _d_attr_step=10, train_step=10)
    t.train(steps=100, time_limit=55.0)
    assert (t.step, t.warmup_done, clock[0]) == (0, 5, 50.0)
    resumed = Trainer(tiny(faces), train_config(d_attr_warmup=10), faces, progress=False)
    resumed.load(latest_checkpoint(tmp_path))
    assert resumed.warmup_done == 5
    for bad in (math.nan, math.inf, 0.0, -1.0, "5", True):
        with pytest.raises(ValueError, match="time_limit must be a finite number of seconds"):
            resumed.train(steps=1, time_limit=bad)


def _state(t: Trainer) -> dict[str, torch.Tensor]:
    tensors, meta = t.state().tensors_and_meta()
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}


def test_resume_is_bit_identical_to_an_uninterrupted_run(faces, tmp_path, deterministic):
    # n_d = 2: three batches per step, 48 / 8 = 6 batches per epoch: the interruption at
    # step 3 (batch 9) falls mid-epoch and the run crosses epoch boundaries.
    cfg, tc = tiny(faces), train_config(n_d=2, steps=5, seed=3)
    full = Trainer(cfg, tc, faces, progress=False)
    full.train(5)

    first = Trainer(cfg, tc, faces, out_dir=tmp_path / "a", progress=False)
    first.train(3)  # writes the final checkpoint step-00000003
    ckpt = latest_checkpoint(tmp_path / "a")
    assert ckpt is not None and ckpt.name == "step-00000003"
    del first
    resumed = Trainer(cfg, tc, faces, out_dir=tmp_path / "a", progress=False)
    resumed.load(ckpt)
    assert resumed.step == 3 and resumed.batches == 9
    resumed.train(5)

    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:10]
    assert any(k.startswith("ema.") for k in a) and "noise_memory" in a
    assert any(k.startswith("opt_g.") for k in a) and any(k.startswith("opt_d.") for k in a)


@pytest.mark.parametrize("warmup, bad_batch, progress", [
    (0, 5, dict(step=2, batches=4, warmup_done=0)),  # step 3's second batch (n_d 1)
    (6, 3, dict(step=0, batches=3, warmup_done=3))])  # the fourth warm-up update's
def test_unreadable_data_checkpoints_the_updates_done_and_the_resume_is_exact(
        faces, tmp_path, monkeypatch, deterministic, warmup, bad_batch, progress):
    """An image that cannot be read stops the run with a checkpoint of the updates done
    before it (a step reads all its batches before its first update: the checkpoint is the
    step's start); the image mended, a resume ends bit-identical to an uninterrupted run."""
    from bridgegan.reference.data.image import UnreadableImageError

    cfg = tiny(faces)
    tc = train_config(n_d=1, steps=4, seed=3, ckpt_every=1000, d_attr_warmup=warmup)
    full = Trainer(cfg, tc, faces, progress=False)
    full.train(4)
    reads, broken = [0], [True]
    read = type(faces).__getitem__

    def flaky(self, i):
        reads[0] += 1
        if broken[0] and reads[0] == bad_batch * tc.batch + 2:  # in batch bad_batch (from 0)
            raise UnreadableImageError(f"cannot read image file {i}.png")
        return read(self, i)

    monkeypatch.setattr(type(faces), "__getitem__", flaky)
    run = Trainer(cfg, tc, faces, out_dir=tmp_path, progress=False)
    with pytest.raises(UnreadableImageError, match="cannot read image file .*replace that file"):
        run.train(4)
    ckpt = latest_checkpoint(tmp_path)
    state = read_train_state(ckpt)
    assert ckpt.name == f"step-{progress['step']:08d}"
    assert {k: state[k] for k in progress} == progress
    broken[0] = False
    resumed = Trainer(cfg, tc, faces, out_dir=tmp_path, progress=False)
    resumed.load(ckpt)
    resumed.train(4)
    a, b = _state(full), _state(resumed)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_an_unreadable_sample_grid_image_stops_the_run_before_its_first_update(faces, tmp_path):
    """The sample grids' images are read when the trainer is made: a broken one (here a
    truncated PNG) is refused then, naming the file, not at the first grid, where the steps
    since the last checkpoint would be lost."""
    from PIL import Image

    from bridgegan.reference.data.image import UnreadableImageError, open_rgb

    broken = tmp_path / "val-3.png"
    Image.new("RGB", (SIZE, SIZE), (200, 30, 90)).save(broken)
    broken.write_bytes(broken.read_bytes()[:60])

    class Validation(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 3:
                open_rgb(broken)
            return faces[i]

    out = tmp_path / "run"
    with pytest.raises(UnreadableImageError,
                       match=r"val-3\.png.*one of the 4 images the sample grids show"):
        Trainer(tiny(faces), train_config(sample_every=1), faces, out_dir=out,
                sample_set=Validation(), progress=False)
    assert not out.exists()
    for every, n in ((1, 3), (0, 8)):  # the three it shows are read; with no grids, none
        t = Trainer(tiny(faces), train_config(n_samples=n, sample_every=every), faces,
                    out_dir=out / str(every), sample_set=Validation(), progress=False)
        t.train(1)
        assert (out / str(every) / "samples" / "step-00000001.png").is_file() == bool(every)


def test_resume_restores_the_global_rng_state_of_an_uninterrupted_run(faces, tmp_path):
    """The global torch RNG state a checkpoint holds is the uninterrupted run's: training
    draws nothing from it (the DataLoader took its workers' base seed from it, one draw
    more on each resume)."""
    cfg, tc = tiny(faces), train_config(steps=3, seed=3)
    torch.manual_seed(0)
    full = Trainer(cfg, tc, faces, progress=False)
    full.train(3)
    want = full.state().tensors_and_meta()[0]["rng.torch_cpu"]  # the global state, now
    torch.manual_seed(0)
    first = Trainer(cfg, tc, faces, out_dir=tmp_path, progress=False)
    first.train(2)
    torch.manual_seed(1)  # a new process: another global state until the checkpoint's
    resumed = Trainer(cfg, tc, faces, out_dir=tmp_path, progress=False)
    resumed.load(latest_checkpoint(tmp_path))
    resumed.train(3)
    assert torch.equal(resumed.state().tensors_and_meta()[0]["rng.torch_cpu"], want)


def test_a_diverged_run_is_not_checkpointed_and_keeps_the_earlier_ones(faces, tmp_path):
    """NaN weights: no checkpoint (a resume would refuse it, and it would prune the good
    ones), a message naming the step and the latest good checkpoint, which still resumes."""
    t = Trainer(tiny(faces), train_config(steps=4, ckpt_every=1, keep_checkpoints=1,
                                          log_every=1), faces, out_dir=tmp_path, progress=False)
    t.train(2)
    assert _checkpoints(tmp_path) == ["step-00000002"]
    with torch.no_grad():
        next(t.model.generator.parameters()).view(-1)[0] = math.nan  # the step diverged
    with pytest.raises(ValueError, match=r"diverged: NaN or Inf in \d+ tensor\(s\) at step 3 "
                                         r"\(raw\..*no checkpoint written.*"
                                         r"step-00000002; resume from it"):
        t.train(4)
    assert _checkpoints(tmp_path) == ["step-00000002"]
    # metrics.jsonl stays strict JSON (no bare NaN tokens): the diverged losses as strings
    def refuse(token):
        raise ValueError(f"bare {token} in metrics.jsonl")
    records = [json.loads(line, parse_constant=refuse)
               for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert "NaN" in records[2].values() and math.isnan(float(records[2]["g/rec"]))
    Trainer(tiny(faces), train_config(), faces, progress=False).load(latest_checkpoint(tmp_path))


def test_checkpoint_folder_contents(faces, tmp_path):
    t = Trainer(tiny(faces), train_config(steps=2, ckpt_every=1, keep_checkpoints=1, log_every=1,
                                          sample_every=2), faces, out_dir=tmp_path, progress=False)
    t.train()
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step-00000002"]  # pruned to keep_checkpoints
    ck = tmp_path / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in ck.iterdir()) == sorted(
        ["config.json", "model.safetensors", STATE_TENSORS, STATE_JSON])
    # model.safetensors = EMA G/E/M + raw D, loadable for inference
    model = load_checkpoint(ck)
    for name in ("generator", "encoder", "mapping"):
        for (k, v), (_, e) in zip(getattr(model, name).state_dict().items(),
                                  getattr(t.ema, name).state_dict().items()):
            assert torch.equal(v, e), k
    for (k, v), (_, r) in zip(model.discriminator.state_dict().items(),
                              t.model.discriminator.state_dict().items()):
        assert torch.equal(v, r), k
    meta = json.loads((ck / STATE_JSON).read_text())
    assert meta["step"] == 2 and meta["batches"] == 4 and meta["train_config"]["batch"] == 8
    tensors = read_tensors(ck / STATE_TENSORS)
    assert tensors["noise_memory"].shape == (len(faces), t.model_config.noise_dim)
    assert "rng.torch_cpu" in tensors and "rng.numpy_keys" in tensors
    # no pickles anywhere: every file is JSON or safetensors
    for p in ck.iterdir():
        assert p.suffix in (".json", ".safetensors")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert "g/rec" in json.loads(lines[0]) and "images_per_sec" in json.loads(lines[0])
    # sample grid: 8 columns; rows: source, reconstruction, 4 edits, references, ref edits
    im = read_image(tmp_path / "samples" / "step-00000002.png")
    assert im.size == (8 * SIZE + 9 * 2, 8 * SIZE + 9 * 2)


def test_resume_rejects_another_dataset_or_config(faces, tmp_path):
    t = Trainer(tiny(faces), train_config(steps=1), faces, out_dir=tmp_path, progress=False)
    t.train()
    ck = latest_checkpoint(tmp_path)
    other = make_dataset("synthetic:40", SIZE)
    with pytest.raises(ValueError, match="dataset of 48 items"):
        Trainer(tiny(other), train_config(), other, progress=False).load(ck)
    with pytest.raises(ValueError, match="g_width"):
        Trainer(tiny(faces, g_width=4), train_config(), faces, progress=False).load(ck)


def test_sampler_order_sharding_and_resume():
    s = ResumableBatchSampler(20, 8, seed=5)
    it = iter(s)
    batches = [next(it) for _ in range(5)]  # 2 batches per epoch, tail of 4 dropped
    assert batches[0] + batches[1] == epoch_order(20, 5, 0)[:16].tolist()
    assert batches[2] == epoch_order(20, 5, 1)[:8].tolist()
    ranks = [iter(ResumableBatchSampler(20, 8, 5, rank=r, world_size=2, start=3)) for r in (0, 1)]
    assert next(ranks[0]) + next(ranks[1]) == batches[3]
    with pytest.raises(ValueError, match="multiple"):
        ResumableBatchSampler(20, 7, 0, world_size=2)


def test_train_config_validation():
    for lr in (math.inf, math.nan, 0.0):  # an infinite rate makes every weight NaN
        with pytest.raises(ValueError, match="lr must be a finite number > 0"):
            TrainConfig(lr=lr)
    with pytest.raises(ValueError, match="noise_memory"):
        TrainConfig(noise_memory="ascent")
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match=r"init must be one of \('torch', 'xavier'\), got 'he'"):
        TrainConfig(init="he")
    assert TrainConfig.from_dict(TrainConfig(lr=1e-3).to_dict()) == TrainConfig(lr=1e-3)


@pytest.mark.parametrize("mode", ["off", "descent"])
def test_noise_memory_modes_train(faces, mode):
    t = Trainer(tiny(faces), train_config(noise_memory=mode, ema=0.0), faces, progress=False)
    terms = t.train_step()
    assert all(torch.isfinite(v) for v in terms.values())
    assert (t.memory.table is None) == (mode == "off") and t.ema is None


def test_bf16_autocast_on_cpu_runs(faces):
    t = Trainer(tiny(faces), train_config(amp="bf16"), faces, progress=False)
    terms = t.train_step()
    assert all(torch.isfinite(v) for v in terms.values())


def _cli(argv):
    from bridgegan.reference import train_cli

    p = argparse.ArgumentParser()
    train_cli.add_arguments(p)
    return train_cli.run(p.parse_args(argv))


TINY_ARCH = ["--resolution", "32", "--g-width", "8", "--e-width", "4", "--e-blocks", "1",
             "--latent-channels", "8", "--spade-hidden", "16", "--mapping-channels", "16",
             "--noise-dim", "8", "--d-width", "4", "--d-downs", "3"]


def test_cli_trains_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data", "synthetic:24", "--batch", "4", "--n-d", "1", "--workers", "0",
              "--out", str(out), "--no-progress", "--log-every", "1", "--sample-every", "0",
              "--attributes", "Black_Hair,Blond_Hair,Male,Young"]
    assert _cli(common + TINY_ARCH + ["--steps", "2", "--w-ms", "0.01"]) == 0
    assert latest_checkpoint(out).name == "step-00000002"
    meta = json.loads((latest_checkpoint(out) / STATE_JSON).read_text())
    assert meta["train_config"]["weights"]["mode_seeking"] == 0.01
    # resume: architecture, attributes and weights come from the checkpoint
    assert _cli(["--data", "synthetic:24", "--workers", "0", "--out", str(out), "--no-progress",
                 "--resume", "auto", "--steps", "3"]) == 0
    assert latest_checkpoint(out).name == "step-00000003"
    meta = json.loads((latest_checkpoint(out) / STATE_JSON).read_text())
    assert meta["train_config"]["weights"]["mode_seeking"] == 0.01 and meta["step"] == 3
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    # conflicting architecture on resume, and bad input, fail with a message
    assert _cli(common + TINY_ARCH[:2] + ["--resume", "auto", "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "differ from the checkpoint" in err and "a run resumes as it is" in err
    ckpt = latest_checkpoint(out)
    assert _cli(common + ["--init-from", str(ckpt), "--out", str(tmp_path / "b"),
                          "--attributes", "Male,Young"]) == 2
    assert "--init-from takes a model of the same attributes" in capsys.readouterr().err
    (ckpt / STATE_JSON).unlink()  # what an inference checkpoint lacks
    assert _cli(common + ["--resume", str(ckpt), "--out", str(tmp_path / "c")]) == 2
    assert f"an inference checkpoint; --init-from {ckpt} starts a run" in capsys.readouterr().err
    assert _cli(common + TINY_ARCH + ["--resume", "auto", "--out", str(tmp_path / "typo"),
                                      "--steps", "1"]) == 0
    assert f"--resume auto: no checkpoint in {tmp_path / 'typo' / 'checkpoints'}; a new run " \
           "starts" in capsys.readouterr().err
    assert _cli(["--data", "nowhere:x", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "bad dataset spec" in capsys.readouterr().err



def test_a_resume_finds_its_feature_classifier_from_anywhere_and_notices_another(
        tmp_path, monkeypatch, capsys):
    """--feature-classifier given relative is recorded absolute (a resume from another
    working folder finds it) with its weights' sha256: a resume warns where the folder
    now holds another classifier, and names the way out where it is gone."""
    from bridgegan.reference.classifier import AttributeClassifier, weights_sha256

    attrs = ("Black_Hair", "Blond_Hair", "Male", "Young")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    torch.manual_seed(5)
    AttributeClassifier(attrs, 32, 4, kernel=3).save("clf")
    out = tmp_path / "run"
    common = ["--data", "synthetic:24", "--workers", "0", "--out", str(out), "--no-progress",
              "--sample-every", "0"]
    assert _cli(common + TINY_ARCH + ["--batch", "4", "--n-d", "1", "--steps", "1",
                                      "--attributes", ",".join(attrs), "--w-feature", "1",
                                      "--feature-classifier", "clf"]) == 0
    meta = json.loads((latest_checkpoint(out) / STATE_JSON).read_text())
    clf = tmp_path / "work" / "clf"
    assert meta["train_config"]["feature_classifier"] == str(clf)
    assert meta["feature_classifier_sha256"] == weights_sha256(clf)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():  # the same classifier: no warning
        warnings.simplefilter("error")
        assert _cli(common + ["--resume", "auto", "--steps", "2"]) == 0
    torch.manual_seed(6)
    AttributeClassifier(attrs, 32, 4, kernel=3).save(clf)  # replaced under the run
    with pytest.warns(UserWarning, match=r"the feature classifier .*clf is not the one the "
                                         r"checkpoint trained with"):
        assert _cli(common + ["--resume", "auto", "--steps", "3"]) == 0
    clf.rename(tmp_path / "moved")
    capsys.readouterr()
    assert _cli(common + ["--resume", "auto", "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert f"the run's --feature-classifier {clf} holds no classifier" in err
    assert "pass --feature-classifier FOLDER to name where it is now" in err
    assert _cli(common + ["--resume", "auto", "--steps", "4",
                          "--feature-classifier", "moved"]) == 0
    meta = json.loads((latest_checkpoint(out) / STATE_JSON).read_text())
    assert meta["train_config"]["feature_classifier"] == str(tmp_path / "moved")
    assert _cli(common + ["--resume", "auto", "--steps", "5", "--w-feature", "0",
                          "--feature-classifier", ""]) == 0  # the term turned off: none
    meta = json.loads((latest_checkpoint(out) / STATE_JSON).read_text())
    assert meta["train_config"]["feature_classifier"] == meta["feature_classifier_sha256"] == ""


def _checkpoints(out) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_a_new_run_is_refused_in_an_earlier_runs_folder(tmp_path, capsys):
    """A run without --resume would prune the earlier run's checkpoints against its own
    (or its own against them) and mix the metrics: refused up front, nothing changed; a
    folder holding only metrics.jsonl too."""
    def run(out, *extra):
        return _cli(["--data", "synthetic:24", "--batch", "4", "--n-d", "1", "--workers", "0",
                     "--out", str(out), "--no-progress", "--log-every", "1", "--sample-every",
                     "0", "--ckpt-every", "1", *TINY_ARCH, *extra])

    out = tmp_path / "run"
    assert run(out, "--steps", "4", "--keep-checkpoints", "2") == 0
    assert _checkpoints(out) == ["step-00000003", "step-00000004"]
    metrics = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert run(out, "--steps", "2") == 2
    err = capsys.readouterr().err
    assert f"--out {out} holds an earlier run ({out / 'checkpoints' / 'step-00000004'}, " \
           f"{out / 'metrics.jsonl'}): pass --resume auto" in err
    assert _checkpoints(out) == ["step-00000003", "step-00000004"]
    assert (out / "metrics.jsonl").read_bytes() == metrics
    killed = tmp_path / "killed"  # a run killed before its first checkpoint
    killed.mkdir()
    (killed / "metrics.jsonl").write_text('{"step": 1}\n')
    assert run(killed, "--steps", "2") == 2
    assert f"--out {killed} holds {killed / 'metrics.jsonl'} of an earlier run that saved no " \
           "checkpoint: move or remove it" in capsys.readouterr().err
    assert sorted(p.name for p in killed.iterdir()) == ["metrics.jsonl"]


def test_pruning_keeps_the_checkpoint_just_written(tmp_path, capsys):
    """Resumed from step 3 with step 4 of the abandoned course above it and
    --keep-checkpoints 1, the run's final checkpoint (step 3) stays and step 4 goes."""
    out = tmp_path / "run"
    common = ["--data", "synthetic:24", "--workers", "0", "--out", str(out), "--no-progress",
              "--sample-every", "0"]
    assert _cli(common + TINY_ARCH + ["--batch", "4", "--n-d", "1", "--steps", "4",
                                      "--ckpt-every", "1", "--keep-checkpoints", "2"]) == 0
    assert _cli(common + ["--resume", str(out / "checkpoints" / "step-00000003"), "--steps",
                          "3", "--keep-checkpoints", "1"]) == 0
    assert _checkpoints(out) == ["step-00000003"]
    assert "done: step 3" in capsys.readouterr().err

def test_a_resume_from_an_earlier_checkpoint_drops_the_abandoned_course(tmp_path, capsys):
    """Resumed from step 3 of a run that reached step 6, with --keep-checkpoints 2: the
    checkpoints of steps 4-6 it does not redo belong to the abandoned course and go, so
    that --resume auto continues the new course; its own step 4 and 5 stay."""
    out = tmp_path / "run"
    common = ["--data", "synthetic:24", "--workers", "0", "--out", str(out), "--no-progress",
              "--sample-every", "0", "--log-every", "1"]
    assert _cli(common + TINY_ARCH + ["--batch", "4", "--n-d", "1", "--steps", "6",
                                      "--ckpt-every", "1", "--keep-checkpoints", "4"]) == 0
    assert _checkpoints(out) == [f"step-0000000{i}" for i in (3, 4, 5, 6)]
    capsys.readouterr()
    assert _cli(common + ["--resume", str(out / "checkpoints" / "step-00000003"), "--steps",
                          "5", "--keep-checkpoints", "2"]) == 0
    assert ("removed the later checkpoints of the course the run leaves: step-00000004, "
            "step-00000005, step-00000006") in capsys.readouterr().err  # said, not silent
    assert _checkpoints(out) == ["step-00000004", "step-00000005"]
    assert latest_checkpoint(out).name == "step-00000005"
    assert [r["step"] for r in _records(out)] == [1, 2, 3, 4, 5]
    # another run's checkpoint continued into this folder would drop this run's course
    # (its checkpoints past that step, its metrics past it mixed with the other's)
    other = tmp_path / "other"
    elsewhere = [str(other) if a == str(out) else a for a in common]
    assert _cli(elsewhere + ["--resume", str(out / "checkpoints" / "step-00000004"),
                             "--steps", "5"]) == 0  # into an empty --out: fine
    assert _cli(common + ["--resume", str(other / "checkpoints" / "step-00000005"),
                          "--steps", "6"]) == 2
    assert (f"--out {out} holds an earlier run" in capsys.readouterr().err)
    assert _checkpoints(out) == ["step-00000004", "step-00000005"]
    assert [r["step"] for r in _records(out)] == [1, 2, 3, 4, 5]


def test_a_resume_drops_the_abandoned_course_before_its_first_checkpoint(faces, tmp_path):
    """Loading step 2 of a run that reached step 4 drops steps 3 and 4 with their metrics
    records at once: killed before its first checkpoint (or between writing it and
    pruning), the run's --resume auto took the abandoned course up again, its records
    already gone."""
    t = Trainer(tiny(faces), train_config(steps=4, ckpt_every=1, keep_checkpoints=0,
                                          log_every=1), faces, out_dir=tmp_path, progress=False)
    t.train(4)
    assert _checkpoints(tmp_path) == [f"step-0000000{i}" for i in (1, 2, 3, 4)]
    resumed = Trainer(tiny(faces), train_config(steps=4, ckpt_every=1, keep_checkpoints=0,
                                                log_every=1), faces, out_dir=tmp_path,
                      progress=False)
    resumed.load(tmp_path / "checkpoints" / "step-00000002")  # then killed
    assert _checkpoints(tmp_path) == ["step-00000001", "step-00000002"]
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    assert [r["step"] for r in _records(tmp_path)] == [1, 2]


def test_a_checkpoint_saved_under_a_name_of_its_own_is_kept_and_prunes_by_count(faces,
                                                                                 tmp_path):
    """Trainer.save(out/"checkpoints"/"best"): written and kept; it is no step of the
    course, so the numbered ones are pruned by --keep-checkpoints alone."""
    t = Trainer(tiny(faces), train_config(steps=3, ckpt_every=1, keep_checkpoints=2), faces,
                out_dir=tmp_path, progress=False)
    t.train(3)
    assert _checkpoints(tmp_path) == ["step-00000002", "step-00000003"]
    assert t.save(tmp_path / "checkpoints" / "best").name == "best"
    assert _checkpoints(tmp_path) == ["best", "step-00000003"]


def _records(out) -> list[dict]:
    """metrics.jsonl without its timing fields (they differ between any two runs)."""
    timing = ("sec_per_step", "images_per_sec")
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stop", [2, 4])  # before the first record (step 3), and after it
def test_a_stopped_and_resumed_run_logs_what_an_uninterrupted_one_does(faces, tmp_path, stop):
    """The loss sums since the last record travel in the checkpoint, and the short record a
    run writes where it stops is marked partial and dropped on resume: the resumed run's
    metrics.jsonl equals the uninterrupted run's record for record."""
    cfg = train_config(steps=6, log_every=3, ckpt_every=2, seed=1)
    Trainer(tiny(faces), cfg, faces, out_dir=tmp_path / "full", progress=False).train(6)
    Trainer(tiny(faces), cfg, faces, out_dir=tmp_path / "cut", progress=False).train(stop)
    last = _records(tmp_path / "cut")[-1]
    assert last["step"] == stop and last["partial"] is True
    resumed = Trainer(tiny(faces), cfg, faces, out_dir=tmp_path / "cut", progress=False)
    resumed.load(latest_checkpoint(tmp_path / "cut"))
    resumed.train(6)
    assert _records(tmp_path / "cut") == _records(tmp_path / "full")


def test_a_run_killed_after_a_checkpoint_logs_what_an_uninterrupted_one_does(faces, tmp_path):
    """Killed right after the step-2 checkpoint (no record since step 0): the resumed run's
    step-3 record still averages steps 1-3."""
    cfg = train_config(steps=3, log_every=3, ckpt_every=2, seed=1)
    Trainer(tiny(faces), cfg, faces, out_dir=tmp_path / "full", progress=False).train(3)
    killed = Trainer(tiny(faces), cfg, faces, out_dir=tmp_path / "cut", progress=False)
    for _ in range(2):  # train()'s loop up to its checkpoint, then nothing more
        killed._accumulate(killed.train_step())
    killed.save()
    resumed = Trainer(tiny(faces), cfg, faces, out_dir=tmp_path / "cut", progress=False)
    resumed.load(latest_checkpoint(tmp_path / "cut"))
    resumed.train(3)
    assert _records(tmp_path / "cut") == _records(tmp_path / "full")


def test_a_stop_during_the_warm_up_checkpoints_it_and_the_resume_is_exact(faces, tmp_path):
    """A stop (the time limit's or a signal's) in the discriminator's attribute warm-up ends
    it there with a step-0 checkpoint; resumed, the run ends with the uninterrupted run's
    weights."""
    cfg = train_config(steps=1, d_attr_warmup=12, seed=4)
    t = Trainer(tiny(faces), cfg, faces, out_dir=tmp_path, progress=False)
    real, calls = t._d_attr_step, []

    def step(batch):  # the stop arrives during the fifth update
        calls.append(1)
        if len(calls) == 5:
            t.request_stop()
        return real(batch)

    t._d_attr_step = step
    t.train()
    assert (t.step, t.warmup_done) == (0, 5)
    assert latest_checkpoint(tmp_path).name == "step-00000000"
    resumed = Trainer(tiny(faces), cfg, faces, out_dir=tmp_path, progress=False)
    resumed.load(latest_checkpoint(tmp_path))
    assert resumed.warmup_done == 5
    resumed.train()
    full = Trainer(tiny(faces), cfg, faces, progress=False)
    full.train()
    assert all(torch.equal(v, resumed.model.state_dict()[k])
               for k, v in full.model.state_dict().items())


@pytest.mark.parametrize("field, value", [("lr", "0.0002"), ("beta1", None), ("beta2", "0.9"),
                                          ("ema", "0.999"), ("seed", "0"), ("device", 0),
                                          ("noise_memory", ["off"])])
def test_a_train_config_value_of_the_wrong_type_is_named(field, value):
    data = TrainConfig().to_dict()
    data[field] = value
    with pytest.raises(ValueError, match=f"^{field} must be "):
        TrainConfig.from_dict(data)


def _train_args(out, *extra) -> list[str]:
    return ["train", "--data", "synthetic:24", "--batch", "4", "--n-d", "1", "--workers", "0",
            "--threads", "1", "--out", str(out), "--no-progress", "--sample-every", "0",
            *TINY_ARCH, *extra]


def test_progress_in_a_log_is_a_line_per_log_step_with_each_term(faces, capsys):
    """Where stderr is no terminal (here pytest's capture), training writes a plain line
    per --log-every, not a bar's redraws on one line, and shows D's adversarial term and
    G's apart (they shared one label, G's hiding D's), beside the warm-up's progress."""
    t = Trainer(tiny(faces), train_config(n_d=1, steps=4, log_every=2, d_attr_warmup=3),
                faces)
    t.train()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0] == "D attribute warm-up: 2/3"
    assert [line.split(":")[1] for line in lines[1:]] == [" step 2/4", " step 4/4"]
    for line in lines[1:]:
        assert re.fullmatch(r"train: step \d/4: D adv \S+, G adv \S+, rec \S+, \S+ s/step",
                            line), line


def test_the_end_of_a_run_says_why_it_ended(tmp_path, capsys):
    """A run stopped by --time-limit says so and how to continue (it said "done", as a
    finished run does); a resume past --steps says there was nothing to train; each names
    the last checkpoint."""
    from bridgegan.cli import main

    assert main(_train_args(tmp_path / "limited", "--steps", "100000", "--time-limit",
                            "0.5")) == 0
    err = capsys.readouterr().err
    assert re.search(r"stopped by --time-limit at step \d+ of 100000 with a checkpoint in "
                     r".*; continue with --resume auto", err), err
    out = tmp_path / "run"
    assert main(_train_args(out, "--steps", "2")) == 0
    last = out / "checkpoints" / "step-00000002"  # named: what eval and export take
    assert f"done: step 2, checkpoint {last}" in capsys.readouterr().err
    assert main(_train_args(out, "--steps", "1", "--resume", "auto")) == 0
    assert (f"nothing to train: the checkpoint is at step 2, past --steps 1: {last}"
            in capsys.readouterr().err)


def test_resume_auto_without_a_checkpoint_starts_a_fresh_log(tmp_path):
    """A run killed before its first checkpoint left a log (its last line cut short):
    --resume auto starts afresh, its log too."""
    from bridgegan.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "g/total": 1.0}\n{"step": 2, "g/total": 2.0}'
                                       '\n{"step": 3, "g/to')
    assert main(_train_args(out, "--log-every", "1", "--steps", "2", "--resume", "auto")) == 0
    assert [r["step"] for r in _records(out)] == [1, 2]
    assert all("g/total" in r and r["g/total"] not in (1.0, 2.0) for r in _records(out))


@pytest.mark.parametrize("sig, workers", [(signal.SIGTERM, "0"), (signal.SIGTERM, "1"),
                                         (signal.SIGINT, "1")])
def test_a_signal_stops_training_with_a_checkpoint(tmp_path, sig, workers):
    """SIGTERM or Ctrl-C's SIGINT to the whole process group (data-loader workers too: a
    worker killed by SIGTERM failed the step, and the run ended, status 2, without its
    checkpoint) stops `bridgegan train` after the step under way with a checkpoint of it,
    no traceback; the process ends by the signal (what a shell's loop stops for and
    systemd takes for a clean stop)."""
    out = tmp_path / "run"
    args = _train_args(out, "--log-every", "1", "--ckpt-every", "1000", "--steps", "100000")
    args[args.index("--workers") + 1] = workers
    p = subprocess.Popen([sys.executable, "-m", "bridgegan.cli", *args], stderr=subprocess.PIPE,
                         text=True, start_new_session=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 600  # a hang guard, not a speed limit
    try:
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < deadline, "no three records in 600 s"
            time.sleep(0.1)
        os.killpg(p.pid, sig)
        _, err = p.communicate(timeout=300)  # a hang guard
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert "Traceback" not in err and p.returncode == -sig, (p.returncode, err)
    assert "continue with --resume auto" in err
    last = max(r["step"] for r in _records(out))
    assert _checkpoints(out)[-1] == f"step-{last:08d}"


def test_a_write_protected_log_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """A resumed run whose metrics.jsonl is write-protected is refused before any step
    (it failed at the first record, the steps before it lost). (os.access faked too:
    this suite may run as root, whom no mode stops.)"""
    from bridgegan.cli import main

    out = tmp_path / "run"
    out.mkdir()
    log = out / "metrics.jsonl"
    log.write_text('{"step": 1}\n')  # a run killed before its first checkpoint
    log.chmod(0o444)
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
        Path(p) != log or not mode & os.W_OK) and access(p, mode, **kw))
    assert main(_train_args(out, "--steps", "2", "--resume", "auto")) == 2
    assert capsys.readouterr().err == (f"bridgegan train: error: {log} is write-protected: the "
                                       f"run appends its records there; make it writable or "
                                       f"choose another --out\n")
    assert log.read_text() == '{"step": 1}\n' and not (out / "checkpoints").exists()


class _HangsAfterTwo(torch.utils.data.Dataset):
    """Items 0 and 1, then a ``__getitem__`` that never returns (a hung read)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        while i >= 2:
            time.sleep(1)
        return torch.tensor(i)


def _sigterm_pending(pid: int) -> bool:
    """Whether SIGTERM waits in process ``pid``'s shared pending set (/proc)."""
    status = dict(line.split(":\t", 1) for line in
                  open(f"/proc/{pid}/status").read().splitlines() if ":\t" in line)
    return bool(int(status["ShdPnd"], 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")
@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_a_data_loader_worker_ignores_others_sigterm_but_not_its_loaders(start):
    """A training worker lives through a SIGTERM from another process (a process group's:
    the run still needs its batches) but ends on its main process's, torch's last resort
    for a worker hung in ``__getitem__`` as its loader shuts down (ignoring every SIGTERM,
    such a worker outlived the run); a forkserver's worker too (Python 3.14's default on
    Linux), whose parent is the forkserver."""
    from bridgegan.exits import worker_ignores_stops

    it = iter(torch.utils.data.DataLoader(_HangsAfterTwo(), num_workers=1,
                                          worker_init_fn=worker_ignores_stops,
                                          multiprocessing_context=start))
    worker = it._workers[0]
    try:
        assert next(it).item() == 0
        subprocess.run([sys.executable, "-c", f"import os; os.kill({worker.pid}, 15)"],
                       check=True)
        deadline = time.monotonic() + 60  # a hang guard, not a speed limit
        while worker.is_alive() and _sigterm_pending(worker.pid):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert worker.is_alive() and next(it).item() == 1
        it._shutdown_workers()  # the hung worker: 5 s to end, then torch's SIGTERM
        worker.join(timeout=60)
        assert worker.exitcode == 0
    finally:
        if worker.is_alive():
            worker.kill()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_corrupt_image_is_one_line_with_or_without_workers(tmp_path, capsys, workers,
                                                             faces_with_a_corrupt_image):
    from bridgegan.cli import main

    root = faces_with_a_corrupt_image
    args = _train_args(tmp_path / "run", "--steps", "4")
    args[args.index("--data") + 1] = f"folder:{root}"
    args[args.index("--workers") + 1] = workers
    # the loader's workers stop with the error (the error's frames held the loader until
    # exit, whose handlers killed them, each leaving a /tmp/pymp-* folder)
    assert stops_without_gc(lambda: main(args)) == (2, True)
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and err[0].startswith(
        f"bridgegan train: error: cannot read image file {root / '5.png'}"), err
    assert err[0].endswith("replace that file with a readable image of the same name, then "
                           "continue with --resume auto")  # the data order is the run's


def test_files_of_the_users_among_the_checkpoints_are_never_removed(tmp_path, capsys):
    """A numbered checkpoint folder holding a file of the user's (or a file named like a
    checkpoint) was removed with it by pruning or a resume's dropped course: refused
    before a run starts; put there during a run, kept with a warning (its training state
    removed, so that no resume picks the dropped course)."""
    from bridgegan.cli import main
    from bridgegan.reference import run_folder

    out = tmp_path / "run"
    args = _train_args(out, "--ckpt-every", "1", "--keep-checkpoints", "1", "--resume", "auto")
    notes = out / "checkpoints" / "step-00000002" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("mine")
    assert main(args + ["--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{notes.parent} holds notes.txt, which is not a file this write produces" in err
    notes.parent.rename(tmp_path / "aside")
    (out / "checkpoints" / "step-00000009").write_text("a file named like a checkpoint")
    assert main(args + ["--steps", "2"]) == 2
    assert f"{out / 'checkpoints' / 'step-00000009'} is a file" in capsys.readouterr().err
    (out / "checkpoints" / "step-00000009").unlink()
    assert main(args + ["--steps", "2"]) == 0
    kept = out / "checkpoints" / "step-00000002"
    (kept / "notes.txt").write_text("mine")  # beside a checkpoint the next one prunes
    with pytest.warns(UserWarning, match=rf"kept {re.escape(str(kept))} \(the run removes this "
                                         rf"checkpoint, its training state removed\): .* "
                                         rf"holds notes.txt"):
        run_folder.prune_checkpoints(out, 1, run_folder.numbered_checkpoint(out, 3))
    assert (kept / "notes.txt").read_text() == "mine"
    assert run_folder.latest_checkpoint(out) is None  # its state gone: no resume picks it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not at every later save
        run_folder.prune_checkpoints(out, 1, run_folder.numbered_checkpoint(out, 4))
        assert run_folder.drop_checkpoints_after(out, 0) == []  # kept: not reported removed
    assert (kept / "notes.txt").read_text() == "mine"


def test_a_full_disk_names_the_checkpoint_and_keeps_the_earlier_one(tmp_path, capsys, monkeypatch):
    """safetensors reports a full disk as a SafetensorError (not an OSError): the trainer
    and train-classifier printed its traceback."""
    from safetensors import SafetensorError

    from bridgegan.cli import main
    from bridgegan.reference import checkpoint

    out = tmp_path / "run"
    args = _train_args(out, "--log-every", "1", "--ckpt-every", "2")
    assert main(args + ["--steps", "2"]) == 0

    def full(tensors, filename, metadata=None):  # what safetensors 0.4-0.6 raise
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    capsys.readouterr()
    assert main(args + ["--steps", "4", "--resume", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    step = out / 'checkpoints' / 'step-00000004'
    assert f"[Errno 28] cannot write {step / 'model.safetensors'}: " in err, err
    assert "No space left" in err and f"the checkpoint {step} was not written; earlier " \
        "checkpoints are intact" in err, err
    assert _checkpoints(out) == ["step-00000002"]
    assert main(["train-classifier", "--data", "synthetic:16", "--steps", "1", "--threads", "1",
                 "--out", str(tmp_path / "clf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"bridgegan train-classifier: error: [Errno 28] cannot write "
                   f"{tmp_path / 'clf' / 'classifier.safetensors'}: Error while serializing: "
                   f"I/O error: No space left on device (os error 28) (the classifier was not "
                   f"written: {tmp_path / 'clf'} is as it was)"), err
    assert not (tmp_path / "clf").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", AMP_MODES)
def test_cuda_training_steps(faces, tmp_path, amp):
    t = Trainer(tiny(faces), train_config(steps=2, device="cuda", amp=amp, ckpt_every=2,
                                          sample_every=2), faces, out_dir=tmp_path, progress=False)
    last = t.train()
    assert all(v == v and abs(v) != float("inf") for v in last.values())
    assert t.memory.table.device.type == "cuda"
    resumed = Trainer(tiny(faces), train_config(steps=3, device="cuda", amp=amp), faces,
                      progress=False)
    resumed.load(latest_checkpoint(tmp_path))
    assert resumed.step == 2
    resumed.train(3)
