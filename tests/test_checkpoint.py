"""Checkpoints: bit-identical round trip, atomic writes, and named failures."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bridgegan.numerics import psnr, tolerance
from bridgegan.reference import BridgeGAN, CheckpointError, load_checkpoint, save_checkpoint
from conftest import images, labels, randomize, small_config


def outputs(model):
    cfg = model.config
    x, ys = images(2, cfg.image_size, 11), labels(2, cfg.n_attrs, 11)
    noise = torch.randn(2, cfg.noise_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model.translate(x, ys, 1 - ys, noise=noise), model.discriminator(x)[1]


def test_round_trip_is_bit_identical(small_model, tmp_path):
    save_checkpoint(tmp_path / "ck", small_model)
    loaded = load_checkpoint(tmp_path / "ck", expected_config=small_model.config)
    assert loaded.config == small_model.config
    want = small_model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    for a, b in zip(outputs(small_model), outputs(loaded)):
        assert torch.equal(a, b)


def test_overwrite_is_atomic_and_leaves_no_temporaries(small_model, tmp_path):
    save_checkpoint(tmp_path / "ck", small_model)
    other = randomize(BridgeGAN(small_model.config), seed=5).eval()
    save_checkpoint(tmp_path / "ck", other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert torch.equal(outputs(load_checkpoint(tmp_path / "ck"))[0], outputs(other)[0])


def test_failed_write_keeps_the_old_checkpoint(small_model, tmp_path):
    save_checkpoint(tmp_path / "ck", small_model)

    def boom(path):
        path.write_text("partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):  # boom's, not another failure
        save_checkpoint(tmp_path / "ck", small_model, extra={"z.bin": boom})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert torch.equal(outputs(load_checkpoint(tmp_path / "ck"))[0], outputs(small_model)[0])


def test_fp16_checkpoint_loads_as_float32(small_model, tmp_path):
    save_checkpoint(tmp_path / "ck", small_model, dtype=torch.float16)
    assert load_file(tmp_path / "ck" / "model.safetensors")["generator.stem.weight"].dtype == torch.float16
    loaded = load_checkpoint(tmp_path / "ck")
    assert next(loaded.parameters()).dtype == torch.float32
    got, want = outputs(loaded)[0], outputs(small_model)[0]  # fp16 weights: the fp16 image row
    assert psnr(got, want).min() >= tolerance("float16").image_min_psnr_db


def test_other_configuration_is_named(small_model, tmp_path):
    save_checkpoint(tmp_path / "ck", small_model)
    with pytest.raises(CheckpointError, match=r"g_width: 16 != 8"):
        load_checkpoint(tmp_path / "ck", expected_config=small_model.config.replace(g_width=16))
    # config.json edited to another width: the tensors no longer fit, each is named
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["spade_hidden"] = 32
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatch.*shared.weight: checkpoint \(16, 8, 3, 3\) vs model \(32, 8, 3, 3\)"):
        load_checkpoint(tmp_path / "ck")


def test_truncated_file_is_named(small_model, tmp_path):
    save_checkpoint(tmp_path / "ck", small_model)
    weights = tmp_path / "ck" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt or truncated"):
        load_checkpoint(tmp_path / "ck")


def test_missing_tensor_is_named(small_model, tmp_path):
    save_checkpoint(tmp_path / "ck", small_model)
    weights = tmp_path / "ck" / "model.safetensors"
    tensors = load_file(weights)
    del tensors["mapping.fc.bias"]
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=r"1 missing tensor\(s\): mapping.fc.bias"):
        load_checkpoint(tmp_path / "ck")


def test_missing_folder_and_bad_config(tmp_path):
    with pytest.raises(CheckpointError, match="expected a folder holding config.json"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid BridgeGAN config"):
        load_checkpoint(tmp_path / "bad")


def test_a_folder_holding_other_files_is_not_replaced(small_model, tmp_path):
    (tmp_path / "userdir").mkdir()
    (tmp_path / "userdir" / "thesis.txt").write_text("years of work")
    (tmp_path / "notes.txt").write_text("notes")
    with pytest.raises(ValueError, match=r"userdir holds thesis.txt, which is not a file"):
        save_checkpoint(tmp_path / "userdir", small_model)
    with pytest.raises(ValueError, match=r"notes.txt is a file, not a folder"):
        save_checkpoint(tmp_path / "notes.txt", small_model)
    assert (tmp_path / "userdir" / "thesis.txt").read_text() == "years of work"
    assert (tmp_path / "notes.txt").read_text() == "notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "userdir"]


def test_a_training_checkpoint_is_resaved_without_its_training_state(small_model, tmp_path):
    from bridgegan.reference.train_state import STATE_JSON, STATE_TENSORS

    state = {STATE_JSON: lambda p: p.write_text("{}"),
             STATE_TENSORS: lambda p: save_file({"x": torch.zeros(1)}, str(p))}
    save_checkpoint(tmp_path / "ck", small_model, extra=state)
    save_checkpoint(tmp_path / "ck", small_model, dtype=torch.float16)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json",
                                                                  "model.safetensors"]


def test_a_classifier_is_saved_again_over_its_earlier_save_and_report(tmp_path):
    from bridgegan.reference.classifier import REPORT_FILE, AttributeClassifier

    clf = AttributeClassifier(("Male", "Smiling"), 32, 4)
    out = clf.save(tmp_path / "clf", report={"val_accuracy_mean": 0.5})
    assert json.loads((out / REPORT_FILE).read_text()) == {"val_accuracy_mean": 0.5}
    clf.save(out)
    assert sorted(p.name for p in out.iterdir()) == ["classifier.json", "classifier.safetensors"]
    (out / "thesis.txt").write_text("years of work")
    with pytest.raises(ValueError, match=r"clf holds thesis.txt"):
        clf.save(out)
    assert (out / "thesis.txt").read_text() == "years of work"


@pytest.mark.parametrize("meta", [{}, [], {"attributes": ["Male"], "image_size": "32", "width": 4},
                                  {"attributes": ["Male"], "image_size": 32, "width": True}])
def test_a_classifier_config_without_its_fields_is_named(tmp_path, meta):
    from bridgegan.reference.classifier import CONFIG_FILE, AttributeClassifier

    out = AttributeClassifier(("Male",), 32, 4).save(tmp_path / "clf")
    (out / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"classifier.json lacks valid .*: it must be an "
                                              r"object with attributes"):
        AttributeClassifier.load(out)




@pytest.mark.parametrize("edit,pattern", [
    (lambda t: b"{oops", r"classifier.json is not a JSON classifier configuration"),
    (lambda t: t.replace(b"Male", b"M\xe9le"),  # Latin-1, not UTF-8
     r"classifier.json is not a JSON classifier configuration"),
    (lambda t: t.replace(b'"width": 4', b'"width": -1'), r"classifier.json: .*width must be"),
    (lambda t: t.replace(b'"width": 4', b'"width": 0'), r"classifier.json: .*width must be"),
    (lambda t: t.replace(b'"image_size": 32', b'"image_size": -5'), r"image size must be"),
    (lambda t: t.replace(b'"Male"', b'"Mal"'), r"classifier.json: unknown attribute name"),
    (lambda t: t.replace(b'"Male"', b"7"), r"classifier.json: attributes must be"),
    (lambda t: t.replace(b'"Smiling"', b'"Male"'), r"classifier.json: attribute list has dup"),
])
def test_a_classifier_config_with_bad_values_is_named(tmp_path, edit, pattern):
    """classifier.json that is not JSON, or whose attributes, width or size could not
    have been written by save(), fails with the file's name (one CheckpointError), not a
    bare decoder or torch error, nor loads as a classifier of unknown attributes."""
    from bridgegan.reference.classifier import CONFIG_FILE, AttributeClassifier

    out = AttributeClassifier(("Male", "Smiling"), 32, 4).save(tmp_path / "clf")
    (out / CONFIG_FILE).write_bytes(edit((out / CONFIG_FILE).read_bytes()))
    with pytest.raises(CheckpointError, match=pattern):
        AttributeClassifier.load(out)


def test_a_classifier_too_small_for_its_convolutions_is_refused():
    """Kernel 4 halves the size four times: under 16 px the last convolution has no
    input; the constructor says so before any training (kernel 3 takes any size)."""
    from bridgegan.reference.classifier import AttributeClassifier

    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"image size must be an integer >= 16 \(kernel 4\), "
                                         r"got 8"):
        AttributeClassifier(("Male",), 8, 4)
    x8 = torch.rand(1, 3, 8, 8, generator=gen) * 2 - 1
    assert AttributeClassifier(("Male",), 8, 4, kernel=3)(x8).shape == (1, 1)
    x16 = torch.rand(1, 3, 16, 16, generator=gen) * 2 - 1
    assert AttributeClassifier(("Male",), 16, 4)(x16).shape == (1, 1)


def test_a_tensor_of_the_right_size_but_another_shape_is_named(tmp_path):
    """Shapes are compared, not sizes: a weight stored transposed (same element count) is
    a shape mismatch naming it, never a torch error or weights read in the wrong order."""
    import re

    model = randomize(BridgeGAN(small_config(32)), seed=51).eval()
    save_checkpoint(tmp_path / "ck", model)
    weights = tmp_path / "ck" / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k, v in tensors.items() if v.dim() == 4 and v.shape[0] != v.shape[1])
    tensors[name] = tensors[name].transpose(0, 1).contiguous()
    save_file(tensors, weights)
    shape = tuple(tensors[name].shape)
    want = shape[1::-1] + shape[2:]
    with pytest.raises(CheckpointError, match=re.escape(
            f"1 shape mismatch(es): {name}: checkpoint {shape} vs model {want}")):
        load_checkpoint(tmp_path / "ck")
