"""Export: ONNX graphs against the reference model (other batch sizes than the traced one,
fp16 variant), what the graphs hold, the onnxruntime backend, the TensorRT build
configuration as data, plan sidecar checks, the Triton model repository, bad input."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

from bridgegan import __version__
from bridgegan.cli import main
from bridgegan.engine import BackendUnavailable, Engine, InferenceGraph, Rewrites
from bridgegan.engine.graph import Block, Conv
from bridgegan.numerics import errors, float64_model, psnr, tolerance
from bridgegan.reference import BridgeGAN, BridgeGANConfig, CheckpointError, save_checkpoint
from conftest import images, labels, randomize, small_config

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from bridgegan.engine.export.names import GRAPHS, PROGRAMS  # noqa: E402
from bridgegan.engine.export.onnx_export import (OPSET, OnnxFileError,  # noqa: E402
                                                 export_key, export_model, export_onnx,
                                                 file_name)
from bridgegan.engine.export.tensorrt_build import (PlanMismatch, build_config,  # noqa: E402
                                                    check_sidecar, import_tensorrt,
                                                    sidecar_problems)
from bridgegan.engine.export.triton_repo import write_triton_repo  # noqa: E402

ATOL = tolerance("float32").image_max_abs
# what an exported inference graph may contain: no training-only ops, no control flow
ALLOWED_OPS = {"Conv", "ConvTranspose", "InstanceNormalization", "Relu", "Tanh", "Gemm", "Add",
               "Sub", "Mul", "Neg", "AveragePool", "Resize", "Pad", "Split", "Slice", "Gather", "Concat",
               "Reshape", "Transpose", "Unsqueeze", "Expand", "Shape", "Constant",
               "ConstantOfShape", "Cast", "Equal", "Where", "Identity"}
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}
HAVE_TRT = find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(2)
    return randomize(BridgeGAN(small_config(32)), seed=2).eval()


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ck", model)


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    """Every graph, float32, traced at batch 2."""
    return export_onnx(ckpt, tmp_path_factory.mktemp("onnx") / "out", precisions=("fp32",))


def run(path, **feeds) -> torch.Tensor:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in feeds.items()})[0])


def graph_inputs(m) -> list:
    weights = {i.name for i in m.graph.initializer}
    return [v for v in m.graph.input if v.name not in weights]


@pytest.mark.parametrize("n", [1, 3])
def test_programs_match_the_reference_model(model, exported, n):
    cfg = model.config
    x, ref = images(n, 32, 30 + n), images(n, 32, 40 + n)
    ys = labels(n, cfg.n_attrs, n)
    d = 1.5 * (1 - 2 * ys)
    noise = torch.randn(n, cfg.noise_dim, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        want_label = model.generator(x, model.mapping(noise, d) + model.encoder(x, -d))
        want_ref = model.generator(x, model.encoder(ref, d) + model.encoder(x, -d))
    got = run(exported / "translate_label.onnx", image=x, d=d, noise=noise)
    assert got.shape == (n, 3, 32, 32) and torch.isfinite(got).all()
    assert (got - want_label).abs().max() <= ATOL
    got = run(exported / "translate_reference.onnx", image=x, reference=ref, d=d)
    assert (got - want_ref).abs().max() <= ATOL


def test_graphs_hold_the_inference_graph_only(model, exported):
    m = onnx.load(str(exported / "translate_label.onnx"))
    onnx.checker.check_model(m, full_check=True)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = [n.op_type for n in m.graph.node]
    assert set(ops) <= ALLOWED_OPS, set(ops) - ALLOWED_OPS
    assert len(ops) < 1500
    assert "Cast" not in ops  # all float32: torch's traced x.to(x.dtype) Casts are dropped
    graph = InferenceGraph(model)
    blocks = [b for b in graph.modules() if isinstance(b, Block)]
    convs = [c for c in graph.modules() if isinstance(c, Conv)]
    assert ops.count("Conv") == sum(not c.transposed for c in convs)
    assert ops.count("ConvTranspose") == sum(c.transposed for c in convs) > 0
    norms = 2 + 2 * sum(b.kind in ("in", "spade") for b in blocks)  # + the heads of E and M
    assert ops.count("InstanceNormalization") == norms
    # the weights are the rewritten G / E / M (plus instance-norm scales), never D
    sizes = [onnx.numpy_helper.to_array(i).size for i in m.graph.initializer]
    want = sum(b.numel() for b in graph.buffers())
    d_size = sum(p.numel() for p in model.discriminator.parameters())
    assert d_size > 0.01 * want and 0 <= sum(sizes) - want < 0.01 * want
    assert not any("discriminator" in i.name for i in m.graph.initializer)
    props = {p.key: p.value for p in m.metadata_props}
    assert BridgeGANConfig.from_json(props["bridgegan.config"]) == model.config
    assert json.loads(props["bridgegan.attributes"]) == list(model.config.attributes)
    assert props["bridgegan.version"] == __version__
    assert props["bridgegan.graph"] == "translate_label"
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph_inputs(m), *m.graph.output]}
    assert shapes == {"image": ["batch", 3, 32, 32], "d": ["batch", 6], "noise": ["batch", 8],
                      "output": ["batch", 3, 32, 32]}
    manifest = json.loads((exported / "manifest.json").read_text())
    assert set(manifest["graphs"]) == set(GRAPHS) and manifest["opset"] >= 17
    assert manifest["graphs"]["decode_mix"]["files"] == {"fp32": "decode_mix.onnx"}


def test_fp16_variant_from_the_cli(tmp_path):
    """Default-initialised weights, as in test_engine's reduced-precision test."""
    torch.manual_seed(3)
    m = BridgeGAN(small_config(32)).eval()
    save_checkpoint(tmp_path / "ck", m)
    out = tmp_path / "out"
    assert main(["export", "onnx", str(tmp_path / "ck"), str(out), "--precision", "fp16",
                 "--graphs", "translate_label"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "translate_label_fp16.onnx"]
    g = onnx.load(str(out / "translate_label_fp16.onnx"))
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
               for v in [*graph_inputs(g), *g.graph.output])
    kinds = {i.name: i.data_type for i in g.graph.initializer}
    convs = [kinds[n.input[1]] for n in g.graph.node if n.op_type == "Conv"]
    # all fp16 but E's head, which adds the label constant in float32 (fold_labels)
    assert sorted(convs) == [onnx.TensorProto.FLOAT] + [onnx.TensorProto.FLOAT16] * (len(convs) - 1)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*graph_inputs(g), *onnx.shape_inference.infer_shapes(g).graph.value_info]}
    norms = [n for n in g.graph.node if n.op_type == "InstanceNormalization"]  # float32 stats
    assert norms and all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in norms)
    casts = [n for n in g.graph.node if n.op_type == "Cast"]
    assert casts and all(types[n.input[0]] != n.attribute[0].i for n in casts)  # each converts
    x, ys = images(3, 32, 50), labels(3, 6, 50)
    d, noise = 1.5 * (1 - 2 * ys), torch.randn(3, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = m.generator(x, m.mapping(noise, d) + m.encoder(x, -d))
    got = run(out / "translate_label_fp16.onnx", image=x, d=d, noise=noise)
    assert torch.isfinite(got).all() and psnr(got, want).min() >= tolerance("fp16").image_min_psnr_db


def test_export_cli_says_which_graphs_it_wrote_and_which_it_kept(tmp_path, capsys):
    """A fresh folder: every graph written, none 'kept'; a second export into it adds the
    new graph and names the one already there; a symbolic link in it is refused (carried
    over, its target was copied in)."""
    save_checkpoint(tmp_path / "ck", BridgeGAN(small_config(32)).eval())
    out = tmp_path / "out"
    args = ["export", "onnx", str(tmp_path / "ck"), str(out), "--graphs"]
    assert main([*args, "map"]) == 0
    said = capsys.readouterr().out
    assert "wrote map.onnx, map_fp16.onnx and manifest.json" in said and "kept" not in said
    assert main([*args, "map", "encode", "--precision", "fp32"]) == 0
    said = capsys.readouterr().out
    assert "wrote encode.onnx and manifest.json; kept map.onnx, map_fp16.onnx" in said
    assert main([*args, "map", "--precision", "fp32"]) == 0  # nothing missing
    said = capsys.readouterr().out
    assert "nothing to write; encode.onnx, map.onnx, map_fp16.onnx already there" in said
    secret = tmp_path / "secret"
    secret.write_text("not the export's")
    (out / "evil.plan").symlink_to(secret)  # carried over, its target was copied in
    before = sorted(p.name for p in out.iterdir())
    assert main([*args, "decode", "--precision", "fp32"]) == 2
    assert f"{out / 'evil.plan'} is a symbolic link" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before and (out / "evil.plan").is_symlink()


def test_classify_graph_is_ds_attribute_head_in_float32(model, exported, tmp_path):
    """``classify`` holds D's attribute head (the logits whose signs are the engine's source
    labels), float32 inside at any precision asked for: an fp16-only export writes it as
    classify.onnx, float32, beside the fp16 stage graphs."""
    x = images(3, 32, 70)
    with torch.no_grad():
        want = float64_model(model.discriminator).classify(x.double())
    got = run(exported / "classify.onnx", image=x)
    assert got.shape == (3, model.config.n_attrs)
    assert errors(got, want)[1] <= tolerance("float32").op_rel
    m = onnx.load(str(exported / "classify.onnx"))
    assert {i.data_type for i in m.graph.initializer} == {onnx.TensorProto.FLOAT}
    assert not any("encoder" in i.name or "generator" in i.name for i in m.graph.initializer)
    out = export_model(model, tmp_path / "fp16", ["decode", "classify"], ["fp16"])
    assert sorted(p.name for p in out.iterdir()) == ["classify.onnx", "decode_fp16.onnx",
                                                     "manifest.json"]
    files = json.loads((out / "manifest.json").read_text())["graphs"]["classify"]["files"]
    assert files == {"fp32": "classify.onnx"}
    assert torch.equal(run(out / "classify.onnx", image=x), got)


def test_engine_onnxruntime_backend_classifies_with_the_exported_head(model, ckpt, exported):
    """The onnxruntime engine estimates source labels with the exported ``classify`` graph
    (a session, not torch's D), to the labels and logits of the torch engine's head."""
    eng = Engine.from_checkpoint(ckpt, backend="onnxruntime", onnx_dir=exported)
    want = Engine(model, backend="torch")
    assert not isinstance(eng.attribute_logits, torch.nn.Module)
    x = images(8, 32, 71)
    assert errors(eng.attribute_logits(x), want.attribute_logits(x))[1] <= tolerance("float32").op_rel
    assert torch.equal(eng.classify(x), want.classify(x))


def test_a_read_only_export_without_the_head_falls_back_to_torchs(model, tmp_path,
                                                                  monkeypatch):
    """An export folder made with the stage graphs only and then write-protected: the
    onnxruntime engine runs on it, estimating source labels with torch's head (a warning
    says so); it failed trying to add classify.onnx."""
    from bridgegan import files
    from bridgegan.engine.export.names import STAGES
    from bridgegan.engine.graph import AttributeHead

    folder = export_model(model, tmp_path / "stages", STAGES, ["fp32"])
    access = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode: Path(p) != tmp_path and
                        access(p, mode))  # the folder above: where it would be replaced
    with pytest.warns(UserWarning, match=rf"{re.escape(str(folder))} is not writable .*; it "
                                         rf"holds no classify.onnx: source labels are "
                                         rf"estimated by torch's attribute head"):
        eng = Engine(model, backend="onnxruntime", onnx_dir=folder)
    assert isinstance(eng.attribute_logits, AttributeHead)
    x = images(4, 32, 72)
    assert torch.equal(eng.classify(x), Engine(model, backend="torch").classify(x))
    assert not (folder / "classify.onnx").exists()


def test_engine_onnxruntime_backend(model, ckpt, exported):
    eng = Engine.from_checkpoint(ckpt, backend="onnxruntime", onnx_dir=exported)
    want = Engine(model, backend="reference")
    x, r, r2 = images(2, 32, 60), images(2, 32, 61), images(1, 32, 62)
    ys = labels(2, 6, 60)
    for fn in (lambda e: e.translate(x, {"Male": 1}, source=ys, seed=3),
               lambda e: e.translate_reference(x, [r, r2], source=ys, reference_labels=1 - ys),
               lambda e: e.interpolate(x, r, {"Young": 1}, [0.25, 1.0], level="spade", seed=4,
                                       source=ys),
               lambda e: e.edit_strip(x[:1], samples=2, seed=5, source=ys[:1]).images,
               lambda e: e.translate_samples(x, {"Male": 1}, 2, seed=6, source=ys)):
        assert (fn(eng) - fn(want)).abs().max() <= ATOL


def test_export_folder_of_another_model_is_refused(model, ckpt, exported, tmp_path):
    other = model.config.replace(spade_hidden=32)
    save_checkpoint(tmp_path / "other", BridgeGAN(other))
    with pytest.raises(CheckpointError, match="another configuration .*spade_hidden"):
        Engine.from_checkpoint(tmp_path / "other", backend="onnxruntime", onnx_dir=exported)
    retrained = randomize(BridgeGAN(model.config), seed=9).eval()
    with pytest.raises(CheckpointError, match="other weights"):
        Engine(retrained, backend="onnxruntime", onnx_dir=exported)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not an ONNX export folder"):
        export_model(model, tmp_path / "junk", ["trunk"], ["fp32"])
    with pytest.raises(CheckpointError, match="another configuration than expected.*spade_hidden"):
        export_onnx(ckpt, tmp_path / "x", expected_config=other)
    (tmp_path / "other.json").write_text(other.to_json())
    assert main(["export", "onnx", str(ckpt), str(tmp_path / "x"), "--expect-config",
                 str(tmp_path / "other.json")]) == 2
    assert not (tmp_path / "x").exists()


def test_files_that_are_not_onnx(exported, ckpt, tmp_path, capsys):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not an ONNX model")
    with pytest.raises(OnnxFileError, match="model.onnx is not a valid ONNX model"):
        build_config(bad)
    with pytest.raises(OnnxFileError, match="no ONNX file at .*missing.onnx"):
        build_config(tmp_path / "missing.onnx")
    assert main(["export", "tensorrt", str(bad), str(tmp_path / "m.plan")]) == 2
    assert "model.onnx is not a valid ONNX model" in capsys.readouterr().err
    copy = shutil.copytree(exported, tmp_path / "copy")
    garbage = b"\x08\x07garbage"
    (copy / "trunk.onnx").write_bytes(garbage)
    with pytest.raises(OnnxFileError, match=r"trunk.onnx does not match its sha256"):
        Engine.from_checkpoint(ckpt, backend="onnxruntime", onnx_dir=copy)
    # the manifest vouches for the damaged file (written damaged): onnxruntime's refusal, named
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["graphs"]["trunk"]["sha256"]["fp32"] = hashlib.sha256(garbage).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OnnxFileError, match=r"onnxruntime cannot load .*trunk.onnx"):
        Engine.from_checkpoint(ckpt, backend="onnxruntime", onnx_dir=copy)


def test_tensorrt_build_configuration_is_data(exported):
    cfg = build_config(exported / "translate_label.onnx", "fp16", (1, 4, 16))
    assert cfg.graph == "translate_label" and cfg.batch_range == (1, 16)
    assert cfg.profile == {
        "image": ((1, 3, 32, 32), (4, 3, 32, 32), (16, 3, 32, 32)),
        "d": ((1, 6), (4, 6), (16, 6)), "noise": ((1, 8), (4, 8), (16, 8))}
    assert set(cfg.flags) == {"FP16", "OBEY_PRECISION_CONSTRAINTS"} and cfg.clear_flags == ()
    g = onnx.load(cfg.onnx)
    norms = [n.name for n in g.graph.node if n.op_type == "InstanceNormalization"]
    assert len(norms) == len(set(norms)) == 26 and all(norms)
    assert cfg.fp32_layers == tuple(norms)
    # E's head, from the labels' constant (fold_labels) to its ReLU, in float32 as the
    # torch engine runs it: the encoder's path from d to the head's output is pinned
    head = {n.name: n for n in g.graph.node if n.name in cfg.fp32_head}
    assert {n.op_type for n in head.values()} == {
        "Gemm", "Unsqueeze", "Add", "Relu", "Conv", "Slice", "Sub"}
    assert all(n.name.startswith("/e_head/") for n in head.values())
    assert json.loads(json.dumps(cfg.to_dict()))["precision"] == "fp16"
    reference = build_config(exported / "translate_reference.onnx", "bf16")
    assert {n.split("/")[1] for n in reference.fp32_head} == {"e_head", "e_head_1"}
    bf16 = build_config(exported / "decode_mix.onnx", "bf16", (2, 2, 8))
    assert set(bf16.flags) == {"BF16", "OBEY_PRECISION_CONSTRAINTS"}
    assert bf16.profile["alpha"] == ((2,), (2,), (8,)) and len(bf16.fp32_layers) == 8
    assert bf16.fp32_head == ()
    fp32 = build_config(exported / "encode.onnx", "fp32")
    assert fp32.flags == () and fp32.clear_flags == ("TF32",)
    assert fp32.fp32_layers == fp32.fp32_head == ()
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16"):
        build_config(exported / "trunk.onnx", "int8")
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        build_config(exported / "trunk.onnx", "fp16", (4, 2, 8))


def test_tensorrt_pins_the_named_nodes_layers_to_float32(exported):
    """The builder's pinning over a network as the ONNX parser names it (layers after
    their nodes, a suffix on the second and later): every normalisation layer and every
    layer of a pinned node gets float32; a network short of normalisation layers is
    refused."""
    from types import SimpleNamespace

    from bridgegan.engine.export.tensorrt_build import _pin_float32

    trt = SimpleNamespace(float32="float32",
                          LayerType=SimpleNamespace(NORMALIZATION="norm", OTHER="other"))

    class Layer:
        def __init__(self, name, kind="other"):
            self.name, self.type, self.num_outputs = name, kind, 1
            self.precision, self.outputs = None, {}

        def set_output_type(self, k, dtype):
            self.outputs[k] = dtype

    cfg = build_config(exported / "encode.onnx", "fp16")
    layers = ([Layer(n, "norm") for n in cfg.fp32_layers]
              + [Layer(n) for n in cfg.fp32_head] + [Layer(cfg.fp32_head[0] + "_0"),
                                                     Layer("/e_blocks.0/conv1/Conv"),
                                                     Layer("(Unnamed Layer* 7) [Shuffle]")])
    network = SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    _pin_float32(network, cfg.fp32_layers, cfg.fp32_head, trt)
    pinned = [layer for layer in layers if layer.precision == "float32"]
    assert len(pinned) == len(layers) - 2 and all(p.outputs == {0: "float32"} for p in pinned)
    network = SimpleNamespace(num_layers=len(layers) - 1, get_layer=layers[1:].__getitem__)
    with pytest.raises(RuntimeError, match=f"expected {len(cfg.fp32_layers)} instance-norm "
                                           f"layers.*has {len(cfg.fp32_layers) - 1}"):
        _pin_float32(network, cfg.fp32_layers, cfg.fp32_head, trt)


def test_plan_sidecar_check():
    built = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3",
             "compute_capability": "9.0", "precision": "fp16"}
    assert sidecar_problems(built, dict(built)) == []
    here = {**built, "gpu_name": "NVIDIA A10G", "compute_capability": "8.6"}
    problems = sidecar_problems(built, here)
    assert len(problems) == 2 and "NVIDIA A10G" in problems[0] and "'9.0'" in problems[1]
    with pytest.raises(PlanMismatch, match="x.plan was built for another GPU.*A10G.*rebuild"):
        check_sidecar(built, here, "x.plan")
    with pytest.raises(PlanMismatch, match="tensorrt_version: plan '10.3.0', here '10.8.0'"):
        check_sidecar(built, {**built, "tensorrt_version": "10.8.0"}, "x.plan")


def test_a_plan_is_rebuilt_when_its_graph_batch_or_machine_changed(exported, tmp_path):
    """stale_plan: a plan is reused only for the same source graph (sha256), precision,
    batch range, GPU and TensorRT version (a re-export keeps the plans beside the graphs)."""
    from bridgegan.engine.export.tensorrt_build import stale_plan

    onnx = tmp_path / "trunk.onnx"
    shutil.copyfile(exported / "trunk.onnx", onnx)
    cfg = build_config(onnx, "fp16", (1, 8, 64))
    here = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0"}
    plan = tmp_path / "trunk_fp16.plan"
    assert stale_plan(plan, cfg, here)  # none yet
    plan.write_bytes(b"plan")
    sidecar = {**here, **cfg.to_dict(),
               "onnx_sha256": hashlib.sha256(onnx.read_bytes()).hexdigest(),
               "plan_sha256": hashlib.sha256(b"plan").hexdigest()}
    (tmp_path / "trunk_fp16.plan.json").write_text(json.dumps(sidecar))
    assert not stale_plan(plan, cfg, here)
    # the sidecar vouches for its own plan only: one written over it (a build killed before
    # its sidecar, a plan copied in) is rebuilt, and so is one whose sidecar has no hash
    plan.write_bytes(b"another plan")
    assert stale_plan(plan, cfg, here)
    plan.write_bytes(b"plan")
    del sidecar["plan_sha256"]
    (tmp_path / "trunk_fp16.plan.json").write_text(json.dumps(sidecar))
    assert stale_plan(plan, cfg, here)
    sidecar["plan_sha256"] = hashlib.sha256(b"plan").hexdigest()
    (tmp_path / "trunk_fp16.plan.json").write_text(json.dumps(sidecar))
    assert stale_plan(plan, build_config(onnx, "fp16", (1, 8, 128)), here)
    assert stale_plan(plan, build_config(onnx, "bf16", (1, 8, 64)), here)
    assert stale_plan(plan, cfg, {**here, "tensorrt_version": "10.8.0"})
    onnx.write_bytes(onnx.read_bytes() + b" ")  # exported again
    assert stale_plan(plan, cfg, here)


@pytest.mark.parametrize("damage", ["truncated", "a list"])
def test_a_damaged_plan_sidecar_means_a_rebuild(exported, tmp_path, damage):
    """A sidecar that is not a JSON object vouches for nothing: the tensorrt backend builds
    the plan again (stale_plan raised PlanMismatch, "is corrupt", failing the engine for
    good on the cache's folder, or AttributeError for a JSON list); a plan loaded on its
    own is refused, naming the sidecar."""
    from bridgegan.engine.export.tensorrt_build import read_sidecar, stale_plan

    onnx_file = tmp_path / "trunk.onnx"
    shutil.copyfile(exported / "trunk.onnx", onnx_file)
    cfg = build_config(onnx_file, "fp16", (1, 8, 64))
    here = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0"}
    plan = tmp_path / "trunk_fp16.plan"
    plan.write_bytes(b"plan")
    sidecar = {**here, **cfg.to_dict(),
               "onnx_sha256": hashlib.sha256(onnx_file.read_bytes()).hexdigest(),
               "plan_sha256": hashlib.sha256(b"plan").hexdigest()}
    text = json.dumps(sidecar)
    (tmp_path / "trunk_fp16.plan.json").write_text(
        text[: len(text) // 2] if damage == "truncated" else json.dumps([sidecar]))
    assert stale_plan(plan, cfg, here)
    with pytest.raises(PlanMismatch, match=r"trunk_fp16\.plan\.json is corrupt"):
        read_sidecar(plan)


@pytest.mark.parametrize("version", ["9.3.0", "11.1.0"])
def test_tensorrt_outside_version_10_is_refused(monkeypatch, version):
    """9 lacks the API used; 11 removed the reduced-precision flags the fp16 / bf16 plans
    set: either is refused up front, naming the version and the supported one."""
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
    with pytest.raises(BackendUnavailable, match=rf"TensorRT {version} is not supported; this "
                                                 rf"build uses the TensorRT 10 API"):
        import_tensorrt()


@pytest.mark.skipif(HAVE_TRT, reason="checks the message shown without tensorrt")
def test_tensorrt_missing_names_the_extra(model, exported, tmp_path, capsys):
    with pytest.raises(BackendUnavailable, match=r"pip install 'bridgegan\[tensorrt\]'"):
        import_tensorrt()
    with pytest.raises(BackendUnavailable, match=r"pip install 'bridgegan\[tensorrt\]'"):
        Engine(model, backend="tensorrt", device="cpu")
    assert main(["export", "tensorrt", str(exported / "trunk.onnx"), str(tmp_path / "t.plan")]) == 2
    assert "bridgegan[tensorrt]" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_TRT and torch.cuda.is_available()),
                    reason="needs tensorrt (TensorRT 10) and a CUDA device")
def test_tensorrt_plan_matches_the_reference(model, exported, tmp_path):
    from bridgegan.engine.export.tensorrt_build import build_plan
    from bridgegan.engine.backends.tensorrt import TrtPlan

    plan = build_plan(build_config(exported / "translate_label.onnx", "fp32", (1, 2, 4)),
                      tmp_path / "label.plan")
    sidecar = json.loads((tmp_path / "label.plan.json").read_text())
    assert sidecar["gpu_name"] == torch.cuda.get_device_name()
    assert len(list(tmp_path.glob("timing_*-sm*.cache"))) == 1
    x, ys = images(3, 32, 70), labels(3, 6, 70)
    d, noise = 1.5 * (1 - 2 * ys), torch.randn(3, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = model.generator(x, model.mapping(noise, d) + model.encoder(x, -d))
    got = TrtPlan(plan)(x.cuda(), d.cuda(), noise.cuda())[0]
    torch.cuda.synchronize()
    assert (got.cpu() - want).abs().max() <= ATOL


def parse_config(text: str) -> dict:
    """The fields of a generated config.pbtxt that the test checks."""
    def ports(kind):
        block = re.search(kind + r" \[\n(.*?)\n\]", text, re.S).group(1)
        return [(n, t, [int(v) for v in dims.replace(",", " ").split()]) for n, t, dims in
                re.findall(r'name: "(\w+)"\s+data_type: (\w+)\s+dims: \[([\d, ]*)\]', block)]

    return {"name": re.search(r'^name: "(\w+)"', text, re.M).group(1),
            "platform": re.search(r'^platform: "(\w+)"', text, re.M).group(1),
            "max_batch_size": int(re.search(r"^max_batch_size: (\d+)", text, re.M).group(1)),
            "preferred": [int(v) for v in re.search(r"preferred_batch_size: \[([\d, ]*)\]",
                                                    text).group(1).replace(",", " ").split()],
            "delay": int(re.search(r"max_queue_delay_microseconds: (\d+)", text).group(1)),
            "queue": int((re.search(r"max_queue_size: (\d+)", text) or [0, 0])[1]),
            "input": ports("input"), "output": ports("output")}


def onnx_ports(path) -> tuple[list, list]:
    g = onnx.load(str(path))

    def port(v):
        dims = v.type.tensor_type.shape.dim
        assert dims[0].dim_param  # dynamic batch: Triton batches on it
        return v.name, ONNX_TO_TRITON[v.type.tensor_type.elem_type], [d.dim_value for d in dims[1:]]

    return [port(v) for v in graph_inputs(g)], [port(v) for v in g.graph.output]


@pytest.mark.parametrize("port, problem", [
    (('image"\n}', "FP32", (3,)), "is not an identifier"),
    (("image", "FP64", (3,)), "data type 'FP64' is not one of"),
    (("image", "FP32", ("3 ] } ] #",)), "must be integers >= 1"),
    (("image", "FP32", (0,)), "must be integers >= 1"),
    (("image", "FP32", (True,)), "must be integers >= 1")])
def test_a_port_that_would_not_be_one_in_config_pbtxt_is_refused(port, problem):
    """config.pbtxt is text: a port name with a quote and line breaks (from a manifest on
    disk) wrote other settings into it."""
    from bridgegan.engine.export.pbtxt import Port

    with pytest.raises(ValueError, match=re.escape(problem)):
        Port(*port)


def test_triton_model_repository(ckpt, exported, tmp_path):
    repo = tmp_path / "repo"
    assert main(["export", "triton-repo", str(ckpt), str(repo), "--onnx-dir", str(exported)]) == 0
    assert sorted(p.name for p in repo.iterdir()) == sorted(PROGRAMS)
    for name in PROGRAMS:
        folder = repo / name
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
            "1/model.onnx", "bridgegan.json", "config.pbtxt"]
        assert (folder / "1/model.onnx").read_bytes() == (exported / f"{name}.onnx").read_bytes()
        cfg = parse_config((folder / "config.pbtxt").read_text())
        assert (cfg["name"], cfg["platform"]) == (name, "onnxruntime_onnx")
        assert cfg["max_batch_size"] == 64
        assert cfg["preferred"] == [4, 8, 16, 32] and cfg["delay"] == 1000
        assert cfg["queue"] == 0  # no bound unless asked
        assert (cfg["input"], cfg["output"]) == onnx_ports(folder / "1/model.onnx")
        assert json.loads((folder / "bridgegan.json").read_text())["attributes"][0] == "Black_Hair"
    assert main(["export", "triton-repo", str(ckpt), str(repo), "--onnx-dir", str(exported),
                 "--max-queue-size", "16"]) == 0
    assert {parse_config((repo / n / "config.pbtxt").read_text())["queue"] for n in PROGRAMS} \
        == {16}
    # a plan replaces the ONNX model of the graph its sidecar names (sidecar as data here)
    plan = tmp_path / "label.plan"
    plan.write_bytes(b"serialized engine")
    sidecar = {**build_config(exported / "translate_label.onnx", "fp16", (1, 8, 16)).to_dict(),
               "tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0",
               "onnx_sha256": hashlib.sha256((exported / "translate_label.onnx").read_bytes())
               .hexdigest()}
    (tmp_path / "label.plan.json").write_text(json.dumps(sidecar))
    write_triton_repo(ckpt, repo, plans=[plan], onnx_dir=exported)
    cfg = parse_config((repo / "translate_label/config.pbtxt").read_text())
    assert (cfg["platform"], cfg["max_batch_size"]) == ("tensorrt_plan", 16)
    assert cfg["preferred"] == [4, 8, 16]
    assert (repo / "translate_label/1/model.plan").read_bytes() == b"serialized engine"
    assert not (repo / "translate_label/1/model.onnx").exists()
    other = parse_config((repo / "translate_reference/config.pbtxt").read_text())
    assert other["platform"] == "onnxruntime_onnx"
    sidecar["profile"]["image"] = [[1, 3, 64, 64]] * 3
    (tmp_path / "label.plan.json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match="a plan of another configuration"):
        write_triton_repo(ckpt, repo, plans=[plan], onnx_dir=exported)
    (tmp_path / "label.plan.json").write_text(json.dumps({**sidecar, "graph": "trunk"}))
    with pytest.raises(ValueError, match="plan of graph 'trunk'"):
        write_triton_repo(ckpt, repo, plans=[plan], onnx_dir=exported)
    # Triton forms batches from 1 up (a lone request, a queue delay that expires): a profile
    # starting above 1 fails those requests in the tensorrt backend (ValidateDimension)
    sidecar = {**build_config(exported / "translate_label.onnx", "fp16", (4, 8, 16)).to_dict(),
               "tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0",
               "onnx_sha256": hashlib.sha256((exported / "translate_label.onnx").read_bytes())
               .hexdigest()}
    (tmp_path / "label.plan.json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match=r"built for batches 4 to 16; Triton runs the model on "
                                         r"any batch from 1 .*--min-batch 1"):
        write_triton_repo(ckpt, repo, plans=[plan], onnx_dir=exported)


@pytest.mark.parametrize("other", ["2/model.onnx", "notes.txt"])
def test_triton_model_folder_holding_other_files_is_refused_before_exporting(ckpt, tmp_path,
                                                                            other):
    kept = tmp_path / "repo" / PROGRAMS[-1] / other
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"the user's")
    with pytest.raises(ValueError, match=rf"{PROGRAMS[-1]} holds {other}, which is not a file"):
        write_triton_repo(ckpt, tmp_path / "repo", onnx_dir=tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()  # refused before the export
    assert [p.name for p in (tmp_path / "repo").iterdir()] == [PROGRAMS[-1]]
    assert kept.read_bytes() == b"the user's"


def test_a_re_export_carries_tensorrt_plans_over_and_refuses_other_files(ckpt, tmp_path):
    out = export_onnx(ckpt, tmp_path / "x", graphs=["map"], precisions=["fp32"])
    built = {"map_fp16_nvidia-h100-sm90.plan": b"engine", "map_fp16_nvidia-h100-sm90.plan.json":
             b"{}", "timing_nvidia-h100-sm90.cache": b"cache", "timing_nvidia-a100-sm80.cache":
             b"another GPU kind's"}
    for name, data in built.items():  # as the tensorrt backend builds them there
        (out / name).write_bytes(data)
    export_onnx(ckpt, out, graphs=["map", "encode"], precisions=["fp32"])
    assert {n: (out / n).read_bytes() for n in built} == built
    assert (out / "encode.onnx").is_file()
    (out / "notes.txt").write_text("user data")
    with pytest.raises(ValueError, match=r"x holds notes.txt, which is not a file"):
        export_onnx(ckpt, out, graphs=["map", "encode", "trunk"], precisions=["fp32"])
    assert (out / "notes.txt").read_text() == "user data" and not (out / "trunk.onnx").exists()


def test_triton_repository_refuses_a_plan_of_other_weights(model, ckpt, exported, tmp_path):
    """A plan built from the graph of a model of the same configuration but other weights
    (its sidecar's onnx_sha256 is not this export's) would serve that other model under
    this checkpoint's bridgegan.json: refused, naming the graph to build from."""
    other = export_model(randomize(BridgeGAN(model.config), seed=7).eval(), tmp_path / "other",
                         ["translate_label"], ["fp32"])
    plan = tmp_path / "label.plan"
    plan.write_bytes(b"serialized engine")
    source = other / "translate_label.onnx"
    sidecar = {**build_config(source, "fp16", (1, 8, 16)).to_dict(),
               "tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0",
               "onnx_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    (tmp_path / "label.plan.json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match=r"label.plan was built from .*other.*not from this "
                                         r"checkpoint's translate_label graph"):
        write_triton_repo(ckpt, tmp_path / "repo", plans=[plan], onnx_dir=exported)
    assert not (tmp_path / "repo").exists()


def test_triton_repository_refuses_a_plan_its_sidecar_was_not_written_with(ckpt, exported,
                                                                           tmp_path):
    """The sidecar names the plan it was written with (plan_sha256): a plan rebuilt or
    copied over it, with the old sidecar left beside it, is refused."""
    plan = tmp_path / "label.plan"
    plan.write_bytes(b"another engine")
    source = exported / "translate_label.onnx"
    sidecar = {**build_config(source, "fp16", (1, 8, 16)).to_dict(),
               "tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0",
               "onnx_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
               "plan_sha256": hashlib.sha256(b"serialized engine").hexdigest()}
    (tmp_path / "label.plan.json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match=r"label.plan is not the plan its sidecar "
                                         r"label.plan.json was written with"):
        write_triton_repo(ckpt, tmp_path / "repo", plans=[plan], onnx_dir=exported)
    plan.write_bytes(b"serialized engine")
    write_triton_repo(ckpt, tmp_path / "repo", plans=[plan], onnx_dir=exported)
    assert (tmp_path / "repo/translate_label/1/model.plan").read_bytes() == b"serialized engine"
    (tmp_path / "label2.plan").write_bytes(b"serialized engine")  # a second plan of one graph
    (tmp_path / "label2.plan.json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match=r"label.plan and .*label2.plan are both plans of "
                                         r"translate_label: give one plan per graph"):
        write_triton_repo(ckpt, tmp_path / "repo", plans=[plan, tmp_path / "label2.plan"],
                          onnx_dir=exported)


def test_tensorrt_plan_runs_any_batch_size_within_its_profile():
    """The engine's stages see K * N rows (K references per source: one encoder call) and
    edit strips 1 + A + samples rows, which may pass the profile's max (64 by default, and
    the engine cannot choose another): a plan runs them in chunks of its max, as every
    other backend runs them whole, and a batch (or last chunk) below the profile's least
    padded up to it. Views at an address TensorRT refuses (it needs 256-byte alignment; a
    slice of rows is such a view) are copied before binding."""
    from bridgegan.engine.backends.tensorrt import TrtPlan, aligned

    plan = object.__new__(TrtPlan)  # no TensorRT here: the batch logic, before any binding
    plan.path, plan.inputs, plan.batch_range = "s.plan", ["h", "s"], (1, 64)
    seen = []

    def run(h, s):
        seen.append(h.shape[0])
        assert h.shape[0] == s.shape[0] <= 64
        return [h * 2 + s.sum(1, keepdim=True)]

    plan._enqueue = run
    g = torch.Generator().manual_seed(11)
    h, s = torch.randn(150, 3, generator=g), torch.randn(150, 5, generator=g)
    (out,) = plan(h, s)
    assert seen == [64, 64, 22] and torch.equal(out, h * 2 + s.sum(1, keepdim=True))
    assert plan(h[:7], s[:7])[0].shape == (7, 3) and seen[-1] == 7
    plan.batch_range = (8, 64)  # a hand-built plan's least batch: 70 rows as 64 + 6 (-> 8)
    (out,) = plan(h[:70], s[:70])
    assert seen[-2:] == [64, 8] and torch.equal(out, (h * 2 + s.sum(1, keepdim=True))[:70])
    with pytest.raises(ValueError, match=r"must share their first \(batch\) dimension"):
        plan(h, s[:10])

    buf = torch.randn(2048, generator=g)
    start = (-buf.data_ptr() % 256) // 4  # an address TensorRT takes (CUDA's allocator
    rows = buf[start:start + 9 * 18].view(9, 18)  # gives 512-byte aligned blocks)
    assert rows.data_ptr() % 256 == 0 and aligned(rows) is rows
    view = rows[1:]  # 72-byte rows: contiguous, but not at an address TensorRT takes
    assert view.is_contiguous() and view.data_ptr() % 256
    copy = aligned(view)
    assert copy.untyped_storage().data_ptr() != rows.untyped_storage().data_ptr()
    assert copy.storage_offset() == 0 and torch.equal(copy, view)


def test_tensorrt_backend_builds_a_stale_plan_under_the_export_folders_lock(tmp_path,
                                                                            monkeypatch):
    """A plan is built holding the export folder's lock, and only if it is still stale once
    the lock is held: two processes' first use build it once (neither loads a plan the other
    replaces, whose sidecar then names other bytes), and `bridgegan cache --prune`, which
    takes that lock, waits for the build. A fresh plan is loaded without the lock."""
    import contextlib

    from bridgegan.engine.backends import tensorrt as trt_backend
    from bridgegan.engine.export.names import STAGES
    from bridgegan.locks import held

    folder = tmp_path / "export"
    folder.mkdir()
    built, checks = [], []

    def lock_held() -> bool:
        lock = tmp_path / ".export.lock"
        return lock.exists() and held(lock)

    def stale(plan, cfg, here):  # stale before the lock; the trunk is built meanwhile
        checks.append((plan.name, lock_held()))
        return not plan.name.startswith(("map", "decode_mix")) and not (
            plan.name.startswith("trunk") and lock_held())

    def build(cfg, plan):
        assert lock_held()
        built.append(plan.name)

    here = {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    for name, value in {"import_tensorrt": lambda: None, "device_info": lambda trt: here,
                        "export_model": lambda *a: folder, "build_config": lambda *a: None,
                        "stale_plan": stale, "build_plan": build,
                        "TrtPlan": lambda plan, device: plan.name,
                        "exported_stages": lambda plans: plans}.items():
        monkeypatch.setattr(trt_backend, name, value)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    plans = trt_backend.build(None, None, torch.float16, "cuda:0")
    assert list(plans) == list(STAGES)
    gpu = "nvidia-h100-80gb-hbm3-sm90"  # plans of GPUs of two kinds sharing a cache apart
    assert built == [f"encode_fp16_{gpu}.plan", f"decode_fp16_{gpu}.plan"]
    assert [c for c in checks if c[0].startswith(("map", "trunk"))] == [
        (f"trunk_fp16_{gpu}.plan", False), (f"trunk_fp16_{gpu}.plan", True),
        (f"map_fp16_{gpu}.plan", False)]


@pytest.mark.parametrize("bad, accepted", [("inf", "a finite number > 0"),
                                           ("nan", "a finite number > 0"),
                                           ("-1", "a finite number > 0"),
                                           ("0", "a finite number > 0"),
                                           ("1e300", "a number > 0 and <= 1024")])
def test_tensorrt_cli_refuses_a_bad_workspace_or_a_folder_for_the_plan(exported, tmp_path,
                                                                        capsys, bad, accepted):
    """Refused by the command line before any build, in one line naming what is accepted
    (--workspace-gb inf was an OverflowError traceback, nan 'cannot convert float NaN to
    integer', 1e300 overflowed as the bytes were counted, -1 and 0 reached TensorRT's
    set_memory_pool_limit; a folder OUT failed only after the build); build_config refuses
    the same."""
    onnx_file = str(exported / "trunk.onnx")
    with pytest.raises(SystemExit) as exit_:
        main(["export", "tensorrt", onnx_file, str(tmp_path / "t.plan"), "--workspace-gb", bad])
    assert exit_.value.code == 2
    assert f"argument --workspace-gb: must be {accepted}, got '{bad}'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^--workspace-gb must be above 0 and at most 1024"):
        build_config(onnx_file, workspace_gb=float(bad))
    with pytest.raises(SystemExit) as exit_:
        main(["export", "tensorrt", onnx_file, str(tmp_path)])
    assert exit_.value.code == 2
    assert f"argument out: {tmp_path} is a folder: give a file path" in capsys.readouterr().err


def test_tensorrt_build_refuses_the_fp16_onnx_variant(ckpt, tmp_path):
    """A plan built from the fp16 graph runs fp16 weights and activations whatever its
    --precision, while its sidecar says "fp32": refused, naming the float32 graph."""
    out = export_onnx(ckpt, tmp_path / "x", graphs=["trunk"], precisions=["fp16"])
    with pytest.raises(ValueError, match=r"trunk_fp16.onnx is the fp16 variant of its graph; "
                                         r"build plans from the float32 graph"):
        build_config(out / "trunk_fp16.onnx", "fp32")


def test_an_export_into_a_named_folder_leaves_no_lock_file_beside_it(model, tmp_path):
    """`.NAME.lock` stayed beside every export folder a user named, a refused one's too
    (the cache's go with their folders, when pruned)."""
    export_model(model, tmp_path / "x", ["trunk"], ["fp32"])
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="is a symbolic link"):
        export_model(model, tmp_path / "link", ["trunk"], ["fp32"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "link", "x"]


def test_tensorrt_builds_the_attribute_head_in_fp32_only(exported):
    """classify's logits are thresholds at 0: an fp16 / bf16 plan (the default precision)
    would tip labels near 0, so only an fp32 plan of it is built."""
    for precision in ("fp16", "bf16"):
        with pytest.raises(ValueError, match=r"classify.onnx is D's attribute head \(classify\)"
                                             r".*: build it with --precision fp32"):
            build_config(exported / "classify.onnx", precision)
    assert build_config(exported / "classify.onnx", "fp32").precision == "fp32"


@pytest.mark.parametrize("changed", ["kernels/layout.py", "kernels/conv_act.py",
                                     "reference/layers.py", "engine/graph.py"])
def test_export_key_covers_the_code_the_graphs_are_traced_from(model, monkeypatch, changed):
    """A cached export is keyed by the code it was traced from: changing any module whose
    torch ops the tracer records (add_upsampled in kernels/layout.py, conv2d_relu's plain
    path, the reference layers) makes a new key, so the engine's onnxruntime backend never
    serves a graph of older code beside the torch backend's new results."""
    from pathlib import Path

    from bridgegan.engine.export import onnx_export
    from bridgegan.engine.graph import Rewrites

    rewrites = Rewrites()
    onnx_export._traced_code.cache_clear()
    before = onnx_export.export_key(model, rewrites, 17)
    target = Path(onnx_export.__file__).parents[2] / changed
    read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes",
                        lambda p: read(p) + (b"\n# changed" if p == target else b""))
    onnx_export._traced_code.cache_clear()
    try:
        assert onnx_export.export_key(model, rewrites, 17) != before, changed
    finally:
        monkeypatch.undo()
        onnx_export._traced_code.cache_clear()


def test_export_key_covers_the_attribute_head(model):
    """The ``classify`` graph holds D: a model whose D alone differs is another export."""
    other = randomize(BridgeGAN(model.config), seed=2).eval()
    other.load_state_dict(model.state_dict())
    assert export_key(other, Rewrites(), OPSET) == export_key(model, Rewrites(), OPSET)
    with torch.no_grad():
        other.discriminator.cls_fc.bias.add_(1e-3)
    assert export_key(other, Rewrites(), OPSET) != export_key(model, Rewrites(), OPSET)


def test_export_key_names_the_rewrites_and_the_opset(model):
    """An export traced with other rewrites (or opset) is another graph: another key, so
    the cache never hands it out for these settings."""
    base = export_key(model, Rewrites(), OPSET)
    assert export_key(model, Rewrites(), OPSET) == base
    assert export_key(model, Rewrites(fused_relu=False), OPSET) != base
    assert export_key(model, Rewrites(), OPSET + 1) != base


def test_triton_repository_in_fp16_serves_the_fp16_graphs(ckpt, tmp_path):
    onnx_dir = tmp_path / "onnx"
    write_triton_repo(ckpt, tmp_path / "repo", precision="fp16", onnx_dir=onnx_dir)
    for name in PROGRAMS:
        served = tmp_path / "repo" / name / "1" / "model.onnx"
        assert served.read_bytes() == (onnx_dir / file_name(name, "fp16")).read_bytes()
        props = {p.key: p.value for p in onnx.load(str(served)).metadata_props}
        assert props["bridgegan.precision"] == "fp16"
