"""The inference engine against the reference model: each rewrite alone and all together,
the trunk cache, every backend that runs here, bad input, and concurrent callers."""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bridgegan.engine import BackendUnavailable, Engine, InferenceGraph, Rewrites
from bridgegan.engine.backends import BACKENDS, REGISTRY
from bridgegan.engine.graph import four_phase_weight
from bridgegan.engine.variants import Variant, parse_variants
from bridgegan.numerics import errors, float64_call, psnr, tolerance
from bridgegan.reference import BridgeGAN, programs, save_checkpoint
from bridgegan.torch_flags import cudnn_search, no_tf32, tf32_state
from conftest import images, labels, randomize, small_config

ATOL = tolerance("float32").image_max_abs
OP_REL = tolerance("float32").op_rel


@pytest.fixture(scope="module", params=[32, 64], ids=["s32", "s64"])
def model(request):
    torch.manual_seed(request.param)
    return randomize(BridgeGAN(small_config(request.param)), seed=request.param).eval()


def reference_translation(m, x, d, r):
    with torch.no_grad():
        return m.generator(x, m.mapping(r, d) + m.encoder(x, -d))


@pytest.mark.parametrize("rewrite", ["none"] + [f.name for f in fields(Rewrites)] + ["all"])
def test_each_rewrite_matches_the_reference(model, rewrite):
    cfg = model.config
    rw = {"none": Rewrites.none(), "all": Rewrites()}.get(rewrite) or Rewrites.only(rewrite)
    x, ys = images(3, cfg.image_size, 1), labels(3, cfg.n_attrs, 1)
    d, r = 1.5 * (1 - 2 * ys), torch.randn(3, cfg.noise_dim, generator=torch.Generator().manual_seed(2))
    ref = reference_translation(model, x, d, r)
    g = InferenceGraph(model, rw).eval()
    with torch.no_grad():
        out = g.decode(g.trunk(x), g.map(r, d) + g.encode(x, -d))
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max().item() <= ATOL


def test_four_phase_weight_equals_conv_after_upsample():
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(2, 5, 6, 7, generator=g), torch.randn(4, 5, 3, 3, generator=g)
    conv = torch.nn.Conv2d(5, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(w)
    from bridgegan.engine.graph import Conv

    want = float64_call(lambda t, w_, b: torch.nn.functional.conv2d(
        torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest"), w_, b, padding=1),
        x, conv.weight.detach(), conv.bias.detach())
    got = Conv(conv, four_phase=True)(x)
    assert four_phase_weight(w).shape == (16, 5, 2, 2)
    assert got.shape == want.shape and errors(got, want)[1] <= OP_REL
    got_cl = Conv(conv, four_phase=True)(x.contiguous(memory_format=torch.channels_last))
    assert errors(got_cl, want)[1] <= OP_REL


def test_pooled_weight_equals_conv_then_average_pool():
    from bridgegan.engine.graph import Conv

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 8, 6, generator=g)
    conv = torch.nn.Conv2d(5, 4, 3, padding=1)
    want = float64_call(lambda t, w_, b: torch.nn.functional.avg_pool2d(
        torch.nn.functional.conv2d(t, w_, b, padding=1), 2),
        x, conv.weight.detach(), conv.bias.detach())
    for fmt in (torch.contiguous_format, torch.channels_last):
        got = Conv(conv, pooled=True)(x.contiguous(memory_format=fmt))
        assert got.shape == want.shape and errors(got, want)[1] <= OP_REL


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_engine_modes_match_the_reference_model(model, backend):
    cfg = model.config
    eng = Engine(model, backend=backend)
    x, r = images(2, cfg.image_size, 5), images(2, cfg.image_size, 6)
    ys = labels(2, cfg.n_attrs, 5)
    noise = torch.randn(2, cfg.noise_dim, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        lab = model.translate(x, ys, 1 - ys, noise=noise)
        ref = model.translate_reference(x, r, ys, 1 - ys)
        two = model.translate_reference(x, [r, images(2, cfg.image_size, 8)], ys, 1 - ys)
        mid = model.interpolate(x, r, ys, 1 - ys, 0.4, noise=noise, level="spade")
        rec = model.reconstruct(x, noise=noise)
    assert (eng.translate(x, 1 - ys, noise=noise, source=ys) - lab).abs().max() <= ATOL
    out = eng.translate_reference(x, r, source=ys, reference_labels=1 - ys)
    assert (out - ref).abs().max() <= ATOL
    out = eng.translate_reference(x, [r, images(2, cfg.image_size, 8)], source=ys,
                                  reference_labels=1 - ys)
    assert (out - two).abs().max() <= ATOL
    out = eng.interpolate(x, r, 1 - ys, [0.4], noise=noise, level="spade", source=ys)
    assert out.shape == (1, 2, 3, cfg.image_size, cfg.image_size)
    assert (out[0] - mid).abs().max() <= ATOL
    assert (eng.reconstruct(x, noise=noise) - rec).abs().max() <= ATOL


def test_named_targets_and_reference_attributes(model):
    cfg = model.config
    eng = Engine(model)
    x, r, ys = images(2, cfg.image_size, 9), images(2, cfg.image_size, 10), labels(2, cfg.n_attrs, 9)
    by_name = eng.translate(x, {"Blond_Hair": 1, "Male": 0}, source=ys, seed=1)
    y_t = ys.clone()
    y_t[:, :4] = 0  # hair colours are exclusive; Bangs (index 5) is kept
    y_t[:, 1], y_t[:, 3] = 1, 0
    assert torch.equal(by_name, eng.translate(x, y_t, source=ys, seed=1))
    ry = labels(2, cfg.n_attrs, 11)
    only_male = eng.translate_reference(x, r, attributes=["Male"], source=ys, reference_labels=ry)
    y_t = ys.clone()
    y_t[:, 3] = ry[:, 3]
    with torch.no_grad():
        want = model.translate_reference(x, r, ys, y_t)
    assert (only_male - want).abs().max() <= ATOL


def test_reference_attributes_apply_the_conflict_rules(model):
    """A hair colour taken from the reference clears the source's other hair colour, as
    a dict target does (spec section 1; the official test flips and checks conflicts)."""
    cfg = model.config
    eng = Engine(model)
    names = list(cfg.attributes)
    x, r = images(1, cfg.image_size, 12), images(1, cfg.image_size, 13)
    ys = torch.zeros(1, cfg.n_attrs)
    ys[0, names.index("Blond_Hair")] = 1
    ry = torch.zeros(1, cfg.n_attrs)
    ry[0, names.index("Black_Hair")] = 1
    got = eng.translate_reference(x, r, attributes=["Black_Hair"], source=ys, reference_labels=ry)
    y_t = eng._target(ys, {"Black_Hair": 1})
    assert y_t[0, names.index("Blond_Hair")] == 0
    with torch.no_grad():
        want = model.translate_reference(x, r, ys, y_t)
    assert (got - want).abs().max() <= ATOL


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_region_edits_stay_inside_the_mask(model, backend):
    """A mask of ones is the plain edit, zeros the reconstruction; a half mask leaves the
    other half reconstructed and edits inside it, in every mode; a soft mask blends."""
    cfg = model.config
    s = cfg.image_size
    eng = Engine(model, backend=backend)
    x, r, ys = images(3, s, 21), images(3, s, 22), labels(3, cfg.n_attrs, 21)
    target = 1 - ys
    edit = eng.translate(x, target, source=ys, seed=4)
    rec = eng.reconstruct(x, seed=4)
    assert torch.allclose(eng.translate(x, target, source=ys, seed=4, region=torch.ones(s, s)),
                          edit, atol=ATOL)
    assert torch.allclose(eng.translate(x, target, source=ys, seed=4, region=torch.zeros(s, s)),
                          rec, atol=ATOL)
    left = torch.zeros(s, s)
    left[:, : s // 2] = 1
    out = eng.translate(x, target, source=ys, seed=4, region=left)
    assert torch.allclose(out[..., s // 2:], rec[..., s // 2:], atol=ATOL)
    assert (out[..., : s // 2] - rec[..., : s // 2]).abs().mean() > 0.01
    ref = eng.translate_reference(x, r, source=ys, reference_labels=target, region=left[None])
    ref_rec = eng.translate_reference(x, r, source=ys, reference_labels=ys)
    assert torch.allclose(ref[..., s // 2:], ref_rec[..., s // 2:], atol=ATOL)
    assert (ref[..., : s // 2] - ref_rec[..., : s // 2]).abs().mean() > 0.01
    rows = eng.interpolate(x, r, target, alphas=[1.0, 0.0], source=ys, seed=4, region=left)
    assert torch.allclose(rows[0], out, atol=ATOL) and torch.allclose(rows[1], ref, atol=ATOL)
    soft = torch.full((s, s), 0.25)
    blend = eng.translate(x, target, source=ys, seed=4, region=soft)
    assert not torch.allclose(blend, rec, atol=1e-3) and not torch.allclose(blend, edit, atol=1e-3)
    with pytest.raises(ValueError, match="region must be a mask of shape"):
        eng.translate(x, target, source=ys, region=torch.ones(s // 2, s // 2))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        eng.translate(x, target, source=ys, region=2 * left)
    with pytest.raises(ValueError, match="level='latent'"):
        eng.interpolate(x, r, target, alphas=[0.5], source=ys, level="spade", region=left)
    d, noise = torch.zeros(x.shape[0], cfg.n_attrs), torch.zeros(x.shape[0], cfg.noise_dim)
    with pytest.raises(ValueError, match="level='latent'"):  # the program itself refuses
        programs.interpolate(model.stages(), x, r, d, noise, [0.5], "spade", left)


class _Reversed:
    """Stages that run a program's branches last to first (``programs.branches``)."""

    def __init__(self, stages):
        self.trunk, self.encode, self.map, self.decode = (
            stages.trunk, stages.encode, stages.map, stages.decode)
        self.branch_counts = []

    def concurrent(self, thunks):
        self.branch_counts.append(len(thunks))
        return [t() for t in thunks[::-1]][::-1]


def test_program_branches_are_independent(model):
    """The branches the programs hand to ``concurrent`` (the engine's CUDA streams) give the
    same images in any order: none reads what another one writes."""
    cfg = model.config
    x, ys = images(2, cfg.image_size, 5), labels(2, cfg.n_attrs, 5)
    refs = images(2, cfg.image_size, 6)
    d = 1.5 * (1 - 2 * ys)
    r = torch.randn(2, cfg.noise_dim, generator=torch.Generator().manual_seed(5))
    m = torch.zeros(2, 1, cfg.image_size, cfg.image_size)
    m[..., : cfg.image_size // 2] = 1
    st = model.stages()
    rev = _Reversed(st)
    with torch.no_grad():
        for program, args in ((programs.translate_label, (x, d, r)),
                              (programs.translate_reference, (x, refs, d))):
            for region in (None, m):
                assert torch.equal(program(rev, *args, region), program(st, *args, region))
    assert rev.branch_counts == [2, 3, 2, 3]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_is_the_device_current_when_the_engine_is_made(model):
    """device="cuda" is the current device at construction, where the weights go, also for
    calls made while another device is current (another thread's default, device 0)."""
    with torch.cuda.device(1):
        eng = Engine(model, device="cuda")
    assert eng.device == torch.device("cuda", 1)
    out = eng.translate(images(2, model.config.image_size, 3), {"Male": 1}, seed=1)
    assert out.device == torch.device("cuda", 1)


def test_streams_need_a_cuda_device(model):
    with pytest.raises(ValueError, match="streams needs device='cuda'"):
        Engine(model, backend="torch", streams=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_streams_give_the_images_of_one_stream(model, graphs):
    """The trunk and the codes on side streams (engine.streams), eager and captured in a
    CUDA graph, give the images of one stream, region edits included (to float rounding:
    cuDNN's algorithm search may pick a non-deterministic one, which adds atomically)."""
    cfg = model.config
    x, ys = images(3, cfg.image_size, 7), labels(3, cfg.n_attrs, 7)
    refs = images(3, cfg.image_size, 8)
    m = torch.rand(cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(7))
    one, two = (Engine(model, backend="torch", device="cuda", cuda_graphs=graphs, streams=s)
                for s in (False, True))
    for region in (None, m):
        for _ in range(2):  # the second call replays the captured graph
            a = [e.translate(x, 1 - ys, source=ys, seed=3, region=region) for e in (one, two)]
            b = [e.translate_reference(x, refs, source=ys, reference_labels=1 - ys,
                                       region=region) for e in (one, two)]
            assert (a[0] - a[1]).abs().max() <= ATOL and (b[0] - b[1]).abs().max() <= ATOL


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graph_calls_on_two_streams_keep_their_inputs():
    """A CUDA graph's replays share its input and output buffers: a call queued on another
    stream (another thread's) must not overwrite them before an earlier call's replay,
    held up here by a sleep inside the graph, has read its input and its output is copied."""
    from bridgegan.engine.cudagraphs import CudaGraphed

    def slow_double(x):
        torch.cuda._sleep(100_000_000)  # tens of milliseconds
        return 2 * x

    graphed = CudaGraphed(slow_double, (0,), torch.device("cuda", torch.cuda.current_device()))
    a, b = (torch.full((256,), v, device="cuda") for v in (1.0, 3.0))
    graphed(a)  # the capture
    torch.cuda.synchronize()
    first, second = torch.cuda.Stream(), torch.cuda.Stream()
    with torch.cuda.stream(first):
        out_a = graphed(a)
    with torch.cuda.stream(second):
        out_b = graphed(b)
    torch.cuda.synchronize()
    assert out_a.eq(2).all() and out_b.eq(6).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_head_logits_in_a_batch_and_alone_agree_far_inside_the_label_margin(backend):
    """The attribute head on CUDA as an engine runs it (torch's, or onnxruntime's classify
    graph; float32, TF32 off): a row's logits in batches of 2 to 64 and alone differ by
    far less than LABEL_MARGIN, which ``Engine._head_labels`` relies on (1e-5 on the
    CPU)."""
    from bridgegan.engine.engine import LABEL_MARGIN
    from bridgegan.reference.checkpoint import SHIPPED

    problem = REGISTRY[backend].problem("cuda")
    if problem is None and backend == "onnxruntime":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            problem = "onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu)"
    if problem is not None:
        pytest.skip(f"backend {backend} cannot run on CUDA here: {problem}")
    eng = Engine.from_checkpoint(SHIPPED, backend=backend, device="cuda")
    x = images(64, eng.config.image_size, 40).cuda()
    with torch.no_grad(), no_tf32():
        alone = torch.cat([eng.attribute_logits(x[i:i + 1]) for i in range(len(x))])
        gaps = {n: (eng.attribute_logits(x[:n]) - alone[:n]).abs().max().item()
                for n in (2, 8, 33, 64)}
    assert max(gaps.values()) < LABEL_MARGIN / 10, gaps


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphs_sharing_a_memory_pool_keep_each_calls_result():
    """Graphs of three buckets, with and without a second input, share one memory pool
    (a later capture may put its intermediates on an earlier graph's output): calls
    alternating between them each give what the function gives eagerly."""
    from bridgegan.engine.cudagraphs import CudaGraphed

    def work(x, m=None):
        h = torch.tanh(x @ x.transpose(1, 2)).exp()  # intermediates of the graph's own
        return h.sum(-1) if m is None else (h * m[:, None]).sum(-1)

    graphed = CudaGraphed(work, (0, 0), torch.device("cuda", torch.cuda.current_device()))
    g = torch.Generator(device="cuda").manual_seed(39)
    calls = [(torch.randn(n, 32, 16, generator=g, device="cuda"),) for n in (3, 20, 100)]
    calls += [(x, torch.rand(x.shape[0], 32, generator=g, device="cuda")) for (x,) in calls]
    for args in calls * 2 + calls[::-1]:
        assert torch.allclose(graphed(*args), work(*args), rtol=1e-5, atol=1e-5)
    assert len(graphed.graphs) == 6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphs_serve_every_batch_size_of_their_bucket(model):
    """Batches of 3 and 4 replay one graph captured at 4 (the padded rows dropped), as
    eager calls compute them; a call of 3 after one of 4 is not given the 4's last row."""
    cfg = model.config
    graphed = Engine(model, backend="torch", device="cuda", cuda_graphs=True)
    eager = Engine(model, backend="torch", device="cuda", cuda_graphs=False)
    x, ys = images(4, cfg.image_size, 21).cuda(), labels(4, cfg.n_attrs, 21)
    for rows in (slice(0, 4), slice(1, 4), slice(0, 3)):
        a, b = (e.translate(x[rows], 1 - ys[rows], source=ys[rows], seed=5)
                for e in (graphed, eager))
        assert (a - b).abs().max() <= ATOL
    assert len(graphed._label.fn.graphs) == 1


def test_edit_strip_cache_equals_uncached(model):
    cfg = model.config
    eng = Engine(model)
    x, ys = images(1, cfg.image_size, 12), labels(1, cfg.n_attrs, 12)
    cached = eng.edit_strip(x, samples=3, seed=4, source=ys)
    plain = eng.edit_strip(x, samples=3, seed=4, source=ys, cache=False)
    assert cached.images.shape == (1 + cfg.n_attrs + 3, 3, cfg.image_size, cfg.image_size)
    assert len(cached.captions) == cached.images.shape[0]
    assert (cached.images - plain.images).abs().max() <= ATOL  # batch-size rounding only
    # the rows are the single calls they claim to be, with the seeds of their rows (sample
    # k: seed + 1 + k), whatever the number of samples (the strip was one draw: its rows
    # changed with --samples, and its reconstruction was not reconstruct(seed=seed)'s)
    flip = ys.clone()
    flip[0, 2] = 1 - flip[0, 2]
    assert (cached.images[3:4] - eng.translate(x, flip, seed=4, source=ys)).abs().max() <= ATOL
    assert (cached.images[0:1] - eng.reconstruct(x, seed=4)).abs().max() <= ATOL
    first = {cfg.attributes[0]: 1 - int(ys[0, 0])}
    for k in range(3):
        one = eng.translate(x, first, seed=5 + k, source=ys)
        assert (cached.images[1 + cfg.n_attrs + k] - one[0]).abs().max() <= ATOL, k
    fewer = eng.edit_strip(x, samples=2, seed=4, source=ys)
    assert (fewer.images - cached.images[:-1]).abs().max() <= ATOL
    assert cached.images[-1].sub(cached.images[-2]).abs().max() > 1e-3  # noise samples differ
    with pytest.raises(ValueError, match=f"with 3 samples draws seeds up to {2**64}; .* give "
                                         f"seed <= {2**64 - 4}"):
        eng.edit_strip(x, samples=3, seed=2**64 - 3, source=ys)


def test_edit_strip_with_no_edits_samples_the_reconstruction(model):
    cfg = model.config
    eng = Engine(model)
    x, ys = images(1, cfg.image_size, 13), labels(1, cfg.n_attrs, 13)
    strip = eng.edit_strip(x, samples=2, seed=6, source=ys, sample_target={})
    k = strip.images.shape[0]
    assert strip.captions[-2:] == ["sample 1: no edit", "sample 2: no edit"]
    named = eng.edit_strip(x, samples=1, seed=6, source=ys, sample_target={
        cfg.attributes[0]: True, cfg.attributes[1]: np.float32(0.0)})
    assert named.captions[-1] == f"sample 1: {cfg.attributes[0]}=1,{cfg.attributes[1]}=0"
    for row, seed in ((k - 2, 7), (k - 1, 8)):  # sample j: seed + 1 + j
        want = eng.reconstruct(x, seed=seed)
        assert (strip.images[row:row + 1] - want).abs().max() <= ATOL


def test_outputs_are_ordinary_tensors(model):
    """Results may be changed in place and used with autograd (no inference tensors)."""
    cfg = model.config
    eng = Engine(model)
    x, r = images(2, cfg.image_size, 21), images(2, cfg.image_size, 22)
    outputs = {"classify": eng.classify(x),
               "translate": eng.translate(x, {"Male": 1}, seed=1),
               "reconstruct": eng.reconstruct(x, seed=1),
               "translate_reference": eng.translate_reference(x, r),
               "interpolate": eng.interpolate(x, r, {"Male": 1}, [0.5], seed=1),
               "edit_strip": eng.edit_strip(x[:1], samples=1, seed=1).images,
               "translate_samples": eng.translate_samples(x, {"Male": 1}, 2, seed=1)}
    for name, out in outputs.items():
        assert not out.is_inference() and not out.requires_grad, name
        out.clamp_(-0.5, 0.5)
        out[..., 0] = 2.0
        assert out[..., 0].eq(2.0).all() and out[..., 1:].abs().max() <= 0.5, name
        w = torch.ones((), requires_grad=True)
        (w * out).sum().backward()
        torch.testing.assert_close(w.grad, out.sum(), msg=name)


def test_same_seed_same_images_on_every_cpu_backend(tmp_path):
    torch.manual_seed(1)
    m = randomize(BridgeGAN(small_config(32)), seed=1).eval()
    save_checkpoint(tmp_path / "ck", m)
    x, ys = images(2, 32, 13), labels(2, m.config.n_attrs, 13)
    outs = {}
    # every backend a CPU can run: those of Triton kernels only under its interpreter
    interpreted = {b for b in BACKENDS if REGISTRY[b].triton_kernels}
    on_cpu = [b for b in BACKENDS if not REGISTRY[b].cuda or b in interpreted]
    for backend in on_cpu:
        try:
            exported = {"onnx_dir": tmp_path / "onnx"} if REGISTRY[backend].exported else {}
            eng = Engine.from_checkpoint(tmp_path / "ck", backend=backend, **exported)
        except BackendUnavailable as exc:
            assert backend in interpreted and "TRITON_INTERPRET" in str(exc)
            continue
        outs[backend] = eng.translate(x, {"Male": 1}, source=ys, seed=3)
    assert set(on_cpu) - interpreted <= set(outs)
    if os.environ.get("TRITON_INTERPRET") == "1":
        assert interpreted <= set(outs)
    for name, out in outs.items():
        assert (out - outs["reference"]).abs().max() <= ATOL, name


def test_auto_picks_the_fastest_installed_backend(model, monkeypatch, tmp_path):
    """auto: onnxruntime on a CPU when installed (measured faster than torch there), torch
    when it is not or cannot run the dtype; the outputs are the reference's."""
    from bridgegan.engine import backends

    have_ort = all(backends.installed(p) for p in ("onnx", "onnxruntime"))
    cpu = torch.device("cpu")
    assert backends.check_backend("auto", cpu).name == ("onnxruntime" if have_ort else "torch")
    assert backends.check_backend("auto", cpu, torch.bfloat16).name == "torch"
    on_gpu = backends.check_backend("auto", "cuda", torch.float16).name
    assert on_gpu == ("triton" if backends.installed("triton") else "torch")
    monkeypatch.setattr(backends, "installed", lambda p: p != "onnxruntime")
    assert backends.check_backend("auto", cpu).name == "torch"
    assert Engine(model, backend="auto").backend == "torch"
    monkeypatch.undo()
    if not have_ort:
        pytest.skip("onnxruntime is not installed")
    eng = Engine(model, backend="auto", onnx_dir=tmp_path / "onnx")
    assert eng.backend == "onnxruntime"
    cfg = model.config
    x, r, ys = images(2, cfg.image_size, 50), images(2, cfg.image_size, 51), labels(2, cfg.n_attrs, 50)
    noise = torch.randn(2, cfg.noise_dim, generator=torch.Generator().manual_seed(50))
    with torch.no_grad():
        lab = model.translate(x, ys, 1 - ys, noise=noise)
        ref = model.translate_reference(x, r, ys, 1 - ys)
    assert (eng.translate(x, 1 - ys, noise=noise, source=ys) - lab).abs().max() <= ATOL
    out = eng.translate_reference(x, r, source=ys, reference_labels=1 - ys)
    assert (out - ref).abs().max() <= ATOL


def test_dtype_spellings_are_read_alike():
    """fp16, half, float16 and torch.float16 are one dtype to the backends and the engine
    (bridgegan.numerics reads the spellings); other dtypes are refused by name."""
    from bridgegan.engine import backends
    from bridgegan.engine.placement import resolve_dtype

    cpu = torch.device("cpu")
    for spelling in ("fp16", "float16", "half", torch.float16):
        assert backends.check_backend("reference", cpu, spelling).name == "reference"
        # onnxruntime runs fp16 (installed or not: no dtype complaint)
        assert not isinstance(backends.REGISTRY["onnxruntime"].problem(cpu, spelling), ValueError)
        assert resolve_dtype(spelling, cpu) == torch.float16
    for spelling in ("bf16", "bfloat16", torch.bfloat16):
        with pytest.raises(ValueError, match="backend 'onnxruntime' runs float32 or float16"):
            backends.check_backend("onnxruntime", cpu, spelling)
        assert resolve_dtype(spelling, cpu) == torch.bfloat16
    assert resolve_dtype("fp32", cpu) == torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'fp8'; accepted: auto, float32, fp32, "
                                         "float16, fp16, half, bfloat16, bf16"):
        resolve_dtype("fp8", cpu)
    with pytest.raises(ValueError, match="dtype must be float32, float16 or bfloat16, got "
                                         "torch.float64"):
        resolve_dtype(torch.float64, cpu)


def test_auto_dtype_follows_the_device_and_the_cpus_amx(tmp_path, monkeypatch):
    """dtype "auto": fp16 on CUDA (whatever the CPU), bf16 on a CPU whose /proc/cpuinfo
    flags name amx_bf16, float32 on other CPUs (avx512_bf16 is not AMX) and where
    /proc/cpuinfo cannot be read; an unknown dtype string is refused with the accepted
    spellings. Nothing runs on the CUDA device: a torch.device is enough."""
    from bridgegan.engine import machine
    from bridgegan.engine.machine import cpu_has_amx
    from bridgegan.engine.placement import resolve_dtype

    flags = {"amx": "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8",
             "no_amx": "fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni"}
    for name, line in flags.items():
        (tmp_path / name).write_text(f"processor\t: 0\nvendor_id\t: GenuineIntel\n"
                                     f"flags\t\t: {line}\n\nprocessor\t: 1\nflags\t\t: {line}\n")
    def cpuinfo_from(name):  # cpu_has_amx reads machine.CPUINFO: give it tmp_path/name
        monkeypatch.setattr(machine, "CPUINFO", tmp_path / name)

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    want = {"amx": torch.bfloat16, "no_amx": torch.float32, "missing": torch.float32}
    for name, dtype in want.items():
        cpuinfo_from(name)
        assert cpu_has_amx() is (name == "amx"), name
        assert resolve_dtype("auto", cpu) == dtype, name
        assert resolve_dtype("auto", cuda) == torch.float16, name
        assert resolve_dtype("float32", cpu) == torch.float32  # explicit dtypes are kept
    cpuinfo_from("amx")
    torch.manual_seed(0)
    eng = Engine(BridgeGAN(small_config()).eval(), dtype="auto")  # what callers get
    assert eng.dtype == torch.bfloat16 and eng.channels_last
    for bad in ("float64", "fp8", "AUTO ", "int8"):
        with pytest.raises(ValueError, match=re.escape(
                f"unknown dtype {bad!r}; accepted: auto, float32, fp32, float16, fp16, half, "
                f"bfloat16, bf16")):
            resolve_dtype(bad, cpu)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("size", [32, 64])
def test_reduced_precision_psnr_against_float32(size, dtype):
    """design.md: fp16 / bf16 images >= 40 dB against float32, each image. Weights at their
    initial scale (the perturbed test models amplify rounding far beyond a trained model)."""
    torch.manual_seed(size)
    m = BridgeGAN(small_config(size)).eval()
    x, ys = images(2, size, 14), labels(2, m.config.n_attrs, 14)
    want = Engine(m).translate(x, 1 - ys, source=ys, seed=5)
    got = Engine(m, dtype=dtype, channels_last=True).translate(x, 1 - ys, source=ys, seed=5)
    db = psnr(got, want).min().item()  # the worst image
    assert db >= tolerance(dtype).image_min_psnr_db, db


def test_source_labels_default_to_the_attribute_head(model):
    cfg = model.config
    eng = Engine(model)
    x = images(2, cfg.image_size, 15)
    with torch.no_grad():
        ys = (model.discriminator(x)[1] > 0).float()
    assert torch.equal(eng.classify(x), ys)
    assert torch.equal(eng.translate(x, {"Young": 1}, seed=2),
                       eng.translate(x, {"Young": 1}, seed=2, source=ys))


def test_torchs_head_runs_channels_last_on_a_cpu_to_a_float64_d(model):
    """The torch backends' attribute head keeps its weights channels_last on a CPU (faster
    there), its logits still D's: within float32's op tolerance of D in float64."""
    from bridgegan.numerics import float64_model

    eng = Engine(model, backend="torch")
    weights = [p for p in eng.attribute_logits.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    x = images(8, model.config.image_size, 16)
    with torch.no_grad():
        want = float64_model(model.discriminator).classify(x.double())
        got = eng.attribute_logits(x)
    assert got.dtype == torch.float32
    assert errors(got, want)[1] <= tolerance("float32").op_rel


def test_pil_inputs_modes_and_sizes(model):
    cfg = model.config
    eng = Engine(model)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    grey, rgba = rgb.convert("L"), rgb.convert("RGBA")
    out = eng.translate([rgb, grey, rgba], {"Male": 1}, seed=0)
    assert out.shape == (3, 3, cfg.image_size, cfg.image_size)
    # greyscale becomes RGB with equal channels; opaque RGBA equals RGB
    assert torch.equal(out, eng.translate([rgb, grey.convert("RGB"), rgba], {"Male": 1}, seed=0))
    assert torch.equal(eng.translate(rgba, {"Male": 1}, seed=0), eng.translate(rgb, {"Male": 1}, seed=0))
    # a list of batches is concatenated, never truncated
    t2 = images(2, cfg.image_size, 18)
    assert eng.translate([t2, t2[:1]], {"Male": 1}, seed=0).shape[0] == 3
    t = images(1, cfg.image_size, 16)
    assert torch.equal(eng.translate(t[:, :1], {"Male": 1}, seed=0),
                       eng.translate(t[:, :1].expand(-1, 3, -1, -1), {"Male": 1}, seed=0))


def test_16_bit_greyscale_files_are_rescaled_to_8_bits(model, tmp_path):
    size = model.config.image_size
    eng = Engine(model)
    a = np.random.default_rng(7).integers(0, 65536, (size, size), dtype=np.uint16)
    a[0, :3] = 0, 32768, 65535  # black, mid-grey, white
    Image.fromarray(a).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as f:
        assert f.mode == "I;16"
    big_endian = Image.frombytes("I;16B", (size, size), a.astype(">u2").tobytes())
    want = (torch.from_numpy(np.rint(a / 257)).float() / 127.5 - 1).expand(3, -1, -1)
    for source in (tmp_path / "g16.png", big_endian):
        got = eng.load_images(source)[0]
        assert torch.equal(got, want)
        assert got[0, 0, :3].tolist() == [-1.0, pytest.approx(128 / 127.5 - 1, abs=1e-6), 1.0]


@pytest.mark.parametrize("mode", ["L", "RGB", "P"])
def test_a_transparent_colour_is_composited_on_white(model, tmp_path, mode):
    """PNG's tRNS chunk (one colour or palette entry made transparent, outside an alpha
    channel) reads as white there, as transparent RGBA does; it was read as the colour
    itself. Premultiplied RGBa too."""
    size = model.config.image_size
    eng = Engine(model)
    rng = np.random.default_rng(9)
    a = rng.integers(1, 256, (size, size, 3 if mode == "RGB" else 1), dtype=np.uint8)
    a[: size // 2] = 0  # the transparent value (colour 0 or palette entry 0): the top half
    im = Image.fromarray(a if mode == "RGB" else a[..., 0], "L" if mode == "P" else mode)
    if mode == "P":
        im = im.convert("P")  # indices as they are, Pillow's default palette
    im.save(tmp_path / "t.png", transparency=(0, 0, 0) if mode == "RGB" else 0)
    got = eng.load_images(tmp_path / "t.png")[0]
    assert (got[:, : size // 2] == 1).all()  # white
    opaque = eng.load_images(im.convert("RGB"))[0]
    assert torch.equal(got[:, size // 2:], opaque[:, size // 2:])
    alpha = np.where(a[..., :1] == 0, 0, 255).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([np.asarray(im.convert("RGB")), alpha]), "RGBA")
    assert torch.equal(eng.load_images(rgba.convert("RGBa"))[0], got)


def test_a_palette_with_alpha_and_premultiplied_la_are_composited_on_white(model):
    """A P image whose palette has alpha (``quantize`` of RGBA; no tRNS in ``info``) read
    as its opaque colours; an La image (premultiplied) failed in Pillow's conversion."""
    size = model.config.image_size
    eng = Engine(model)
    rng = np.random.default_rng(15)
    palette = rng.integers(0, 256, (64, 4), dtype=np.uint8)
    palette[:, 3] = 255
    palette[0, 3] = 0  # entry 0 transparent
    index = rng.integers(1, 64, (size, size), dtype=np.uint8)
    index[: size // 2] = 0  # the top half
    im = Image.fromarray(index, "P")
    im.putpalette(palette.tobytes(), rawmode="RGBA")
    assert im.palette.mode == "RGBA" and "transparency" not in im.info
    got = eng.load_images(im)[0]
    assert (got[:, : size // 2] == 1).all()
    opaque = torch.from_numpy(palette[index[size // 2:], :3]).permute(2, 0, 1) / 127.5 - 1
    assert torch.equal(got[:, size // 2:], opaque)
    la = Image.fromarray(np.dstack([index, np.where(index == 0, 0, 255).astype(np.uint8)]), "LA")
    assert torch.equal(eng.load_images(la.convert("La"))[0], eng.load_images(la)[0])


@pytest.mark.parametrize("mode", ["1", "I;16"])
def test_a_transparent_value_in_1_and_16_bit_pngs_is_white(model, tmp_path, mode):
    """tRNS of a 1-bit or 16-bit greyscale PNG (the value compared before 16 bits are
    rescaled to 8): read as its grey, not white, while the other modes' was white."""
    size = model.config.image_size
    a = np.random.default_rng(14).integers(1, 2 if mode == "1" else 65536, (size, size))
    a[: size // 2] = 0
    im = (Image.fromarray(a.astype(bool)) if mode == "1"
          else Image.fromarray(a.astype(np.uint16)))
    im.save(tmp_path / "t.png", transparency=0)
    with Image.open(tmp_path / "t.png") as f:
        assert f.mode == mode and f.info["transparency"] == 0
    got = Engine(model).load_images(tmp_path / "t.png")[0]
    assert (got[:, : size // 2] == 1).all()
    grey = a[size // 2:] * 255 if mode == "1" else np.rint(a[size // 2:] / 257)  # 8 bits
    want = torch.from_numpy(grey).float() / 127.5 - 1
    assert torch.equal(got[:, size // 2:], want.expand(3, -1, -1))


def test_an_aligned_celeba_image_is_cropped_as_celeba_trains(model, tmp_path):
    """A 178x218 aligned CelebA image is read from the spec's 170x170 crop at (top 26,
    left 3), as the CelebA dataset reads it for training: the centre square (178x178 at
    top 20) showed the face 4.5% smaller and 6 px lower than a CelebA-trained model saw
    it. Other sizes: the centred square."""
    size = model.config.image_size
    eng = Engine(model)
    rng = np.random.default_rng(12)
    for (w, h), box in (((178, 218), (3, 26, 173, 196)), ((177, 218), (0, 20, 177, 197))):
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(a).save(tmp_path / "face.png")
        want = np.array(Image.fromarray(a).crop(box).resize((size, size), Image.BICUBIC))
        got = eng.load_images(tmp_path / "face.png")[0]
        assert torch.equal(got, torch.from_numpy(want).permute(2, 0, 1).float() / 127.5 - 1)


def test_exif_orientation_is_applied(model, tmp_path):
    """A phone JPEG stored landscape with orientation 6 (rotate 90 degrees clockwise) is
    read upright: its stored left half becomes the top half."""
    size = model.config.image_size
    eng = Engine(model)
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :40] = 255
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # Orientation
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    got = eng.load_images(tmp_path / "phone.jpg")[0]
    rows = got.mean(dim=(0, 2))  # the mean of each row: white on top, black below
    assert rows[:size // 2 - 1].min() > 0.95 and rows[size // 2 + 1:].max() < -0.95
    with Image.open(tmp_path / "phone.jpg") as f:
        assert torch.equal(eng.load_images(f)[0], got)


def test_bad_input_is_named(model, tmp_path):
    cfg = model.config
    eng = Engine(model)
    x = images(2, cfg.image_size, 17)
    with pytest.raises(ValueError, match="Black_Hair, Blond_Hair"):
        eng.translate(x, {"Blue_Hair": 1})
    with pytest.raises(ValueError, match=f"must be {cfg.image_size}x{cfg.image_size}"):
        eng.translate(images(1, 2 * cfg.image_size), {"Male": 1})
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="cannot read image file .*broken.png"):
        eng.translate([bad], {"Male": 1})
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        eng.translate(nan, {"Male": 1})
    with pytest.raises(ValueError, match="empty batch"):
        eng.translate(x[:0], {"Male": 1})
    with pytest.raises(ValueError, match=r"values must lie in \[-1, 1\]"):
        eng.translate(x * 255, {"Male": 1})
    with pytest.raises(ValueError, match="target labels must have shape"):
        eng.translate(x, torch.ones(2, 3))
    with pytest.raises(ValueError, match="expected 1 \\(grey\\), 3 \\(RGB\\) or 4"):
        eng.translate(x[:, :2], {"Male": 1})
    with pytest.raises(ValueError, match="unknown backend"):
        Engine(model, backend="tensorflow")
    with pytest.raises(BackendUnavailable, match=r"bridgegan\[tensorrt\]|CUDA device"):
        Engine(model, backend="tensorrt")


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_engine_leaves_the_callers_model_alone(model, backend):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Engine(model, backend=backend, dtype="bf16", channels_last=True)
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_checkpoint_of_another_configuration(model, tmp_path):
    save_checkpoint(tmp_path / "ck", model)
    from bridgegan.reference import CheckpointError

    other = model.config.replace(spade_hidden=32)
    with pytest.raises(CheckpointError, match="spade_hidden"):
        Engine.from_checkpoint(tmp_path / "ck", expected_config=other)


def test_edits_without_a_strength_use_the_configs(model, tmp_path):
    """config.edit_strength is the default of every edit, in the engine, the reference and
    a saved checkpoint; it is not architecture (the weights load under either value, and
    share one ONNX export)."""
    cfg = model.config
    x, ys = images(2, cfg.image_size, 12), labels(2, cfg.n_attrs, 12)
    assert cfg.edit_strength == 1.5  # the official test's
    m = BridgeGAN(cfg.replace(edit_strength=1.0)).eval()
    m.load_state_dict(model.state_dict())
    save_checkpoint(tmp_path / "ck", m)
    eng = Engine.from_checkpoint(tmp_path / "ck", expected_config=cfg)
    assert eng.config.edit_strength == 1.0
    default = eng.translate(x, {"Male": 1}, source=ys, seed=3)
    assert torch.equal(default, eng.translate(x, {"Male": 1}, source=ys, seed=3, strength=1.0))
    assert not torch.allclose(default, eng.translate(x, {"Male": 1}, source=ys, seed=3,
                                                     strength=1.5), atol=1e-3)
    noise = torch.randn(2, cfg.noise_dim, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = m.translate(x, ys, {"Male": 1}, noise=noise, strength=1.0)
        assert torch.equal(m.translate(x, ys, {"Male": 1}, noise=noise), want)
    assert (eng.translate(x, {"Male": 1}, source=ys, noise=noise) - want).abs().max() <= ATOL
    r = images(2, cfg.image_size, 13)
    for call in (lambda **k: eng.translate_reference(x, r, source=ys, **k),
                 lambda **k: eng.interpolate(x, r, {"Male": 1}, [0.5], source=ys, seed=3, **k),
                 lambda **k: eng.edit_strip(x[:1], samples=1, source=ys[:1], **k).images):
        assert torch.equal(call(), call(strength=1.0))
    from bridgegan.serve.models import run_requests  # a request without a strength

    y_t = m.target_labels(ys, {"Male": 1})
    served, = run_requests(eng, "translate_label", [
        {"image": x.numpy(), "target": y_t.numpy(), "noise": noise.numpy(), "source": ys.numpy()}])
    at_one = eng.translate(x, y_t, source=ys, noise=noise, strength=1.0).numpy()
    assert np.allclose(served["output"], at_one, atol=1e-6)
    from bridgegan.engine.export import onnx_export  # the graphs do not depend on it

    assert (onnx_export.export_key(m, Rewrites(), onnx_export.OPSET)
            == onnx_export.export_key(model, Rewrites(), onnx_export.OPSET))


def test_threads_get_the_serial_results(model):
    cfg = model.config
    eng = Engine(model)
    xs = [images(2, cfg.image_size, 20 + i) for i in range(6)]
    serial = [eng.translate(x, {"Male": 1}, seed=i) for i, x in enumerate(xs)]
    results: dict[int, torch.Tensor] = {}

    def work(i):
        results[i] = eng.translate(xs[i], {"Male": 1}, seed=i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(6):
        assert torch.equal(results[i], serial[i])


def test_serialised_backends_run_one_call_at_a_time(model, monkeypatch):
    """Backends with shared state (compiled code, CUDA graphs) must never see two calls at
    once; the engine serialises whole calls for those the registry marks. Without timing:
    a first call is held inside a stage until a second call has reached the engine's lock;
    while it is held no other thread can take that lock and the second call has entered
    no stage; let go, both finish with the serial results. Every stage of every call runs
    with the lock held (probed from another thread: a free lock would be taken)."""
    from dataclasses import replace

    from bridgegan.engine import backends
    from bridgegan.engine.backends import torch as torch_backend

    def lock_free(lock) -> bool:
        """Whether a thread other than the caller can take ``lock`` now (it gives it back)."""
        got = []

        def probe():
            got.append(lock.acquire(blocking=False))
            if got[0]:
                lock.release()

        t = threading.Thread(target=probe)
        t.start()
        t.join(60)
        assert not t.is_alive()
        return got[0]

    eng_box, events, unlocked = [], [], []
    inside, release, held_waited = threading.Event(), threading.Event(), []
    real_build = torch_backend.build

    def build(*args, **kw):
        st = real_build(*args, **kw)

        def trunk(x):
            name = threading.current_thread().name
            events.append(("enter", name))
            try:
                if lock_free(eng_box[0]._lock.lock):
                    unlocked.append(name)
                if name == "first":  # held here until the main thread lets go
                    inside.set()
                    held_waited.append(release.wait(60))
                return st.trunk(x)
            finally:
                events.append(("leave", name))

        return replace(st, trunk=trunk)

    class Watched:
        """The engine's lock, noting which threads have tried to take it."""

        def __init__(self, lock):
            self.lock, self.tried = lock, {}

        def __enter__(self):
            self.tried.setdefault(threading.current_thread().name, threading.Event()).set()
            return self.lock.__enter__()

        def __exit__(self, *exc):
            return self.lock.__exit__(*exc)

    monkeypatch.setattr(torch_backend, "build", build)
    monkeypatch.setitem(backends.REGISTRY, "torch", replace(backends.REGISTRY["torch"],
                                                            serialised=True))
    eng = Engine(model)
    assert hasattr(eng._lock, "acquire"), f"a serialised backend's engine has no lock: " \
                                          f"{eng._lock!r}"
    eng._lock = Watched(eng._lock)
    eng_box.append(eng)
    cfg = model.config
    xs = [images(1, cfg.image_size, 40 + i) for i in range(2)]
    serial = [eng.translate(x, {"Male": 1}, seed=i) for i, x in enumerate(xs)]
    assert unlocked == [] and len(events) == 4
    events.clear()
    second_tries = eng._lock.tried.setdefault("second", threading.Event())
    results = {}
    threads = [threading.Thread(name=name, target=lambda i=i: results.__setitem__(
        i, eng.translate(xs[i], {"Male": 1}, seed=i)))
        for i, name in enumerate(("first", "second"))]
    threads[0].start()
    try:
        assert inside.wait(60), "the first call never reached its stage"
        threads[1].start()
        assert second_tries.wait(60), "the second call never reached the engine's lock"
        assert not lock_free(eng._lock.lock)  # the first call holds it: the second must wait
        assert events == [("enter", "first")]  # and has entered no stage
    finally:
        release.set()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert held_waited == [True]
    assert events == [("enter", "first"), ("leave", "first"), ("enter", "second"),
                      ("leave", "second")]
    assert unlocked == []
    assert all(torch.equal(results[i], serial[i]) for i in range(2))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the Triton interpreter (TRITON_INTERPRET=1)")
def test_triton_interpreter_runs_one_launch_at_a_time():
    """The interpreter patches module-wide state during each kernel run: two triton
    engines (two models, so no engine lock is shared) called from two threads at once get
    their serial results."""
    ms = [randomize(BridgeGAN(small_config(32)), seed=s).eval() for s in (0, 1)]
    engs = [Engine(m, backend="triton") for m in ms]
    x, ys = images(1, 32, 50), labels(1, ms[0].config.n_attrs, 50)
    serial = [e.translate(x, {"Male": 1}, source=ys, seed=1) for e in engs]
    results, errors = {}, []

    def work(i):
        try:
            results[i] = [engs[i].translate(x, {"Male": 1}, source=ys, seed=1) for _ in range(4)]
        except Exception as exc:  # the interpreter's errors, reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    assert all(torch.equal(out, serial[i]) for i in range(2) for out in results[i])


def test_bench_variants_name_their_backend():
    """A bench row is one named backend: auto is refused with what to write instead."""

    assert Variant.parse("triton:fp16:cl:graphs") == Variant("triton", "fp16", True, True)
    v = Variant.parse("reference:fp16:heuristics")
    assert v == Variant("reference", "fp16", heuristics=True)
    assert v.name == "reference-fp16-heuristics"
    v = Variant.parse("triton:fp16:cl:graphs:streams")
    assert v.streams and v.cuda_graphs and v.name == "triton-fp16-cl-graphs-streams"
    v = Variant.parse("triton:fp16:cl:-transposed_up:-kernel_bias")
    assert v.without == ("transposed_up", "kernel_bias")
    assert v.name == "triton-fp16-cl-no_transposed_up-no_kernel_bias"
    assert not v.rewrites.transposed_up and not v.rewrites.kernel_bias and v.rewrites.four_phase
    with pytest.raises(ValueError, match=r"expected backend:dtype\[:cl\]\[:graphs\]\[:heuristics\]"):
        Variant.parse("torch:fp16:fast")
    with pytest.raises(ValueError, match="the reference backend runs the unmodified model"):
        Variant.parse("reference:fp16:-transposed_up")
    with pytest.raises(ValueError, match="unknown rewrite 'fast'; rewrites are merge_gamma_beta"):
        Variant.parse("torch:fp16:-fast")
    with pytest.raises(ValueError, match="'auto' is not a variant; name the backend, one "
                                         "of reference, torch"):
        Variant.parse("auto:float32")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        Variant.parse("fast:float32")


def test_demo_throughput_times_the_registrys_backends(monkeypatch):
    """`bridgegan demo --bench`: one line per registry backend that runs here and builds
    quickly (Triton kernels not in the CPU interpreter, compile not: slow_build), timed by
    bridgegan.timing."""
    from bridgegan import demo
    from bridgegan.engine import backends

    keep = ("torch", "triton", "compile", "tensorrt")  # not "reference": the registry's list
    monkeypatch.setattr(demo, "REGISTRY", {k: backends.REGISTRY[k] for k in keep})
    timed = []
    real = demo.time_calls

    def time_calls(fn, device, **kw):
        timed.append((str(device), kw))
        return real(fn, device, **kw)

    monkeypatch.setattr(demo, "time_calls", time_calls)
    m = BridgeGAN(small_config(32)).eval()
    lines = list(demo.throughput(m, "cpu", batch=2, calls=2))
    assert len(lines) == 1 and lines[0].startswith("torch fp32: ") and lines[0].endswith(" images/s")
    assert timed == [("cpu", {"warmup": 1, "reps": 2})]


def test_bench_ratios_compare_rows_of_one_cudnn_choice():
    """A heuristics row is compared with the reference row of the same cuDNN choice."""
    from bridgegan.engine.bench_results import add_ratios

    def row(variant, p50):
        backend, dtype = variant.split("-")[:2]
        return dict(what="translate", batch=8, resolution=128, metric="latency",
                    backend=backend, dtype=dtype, variant=variant, p50=p50)

    rows = [row("reference-fp16", 4.0), row("reference-fp16-heuristics", 6.0),
            row("triton-fp16-cl-graphs", 2.0), row("triton-fp16-cl-graphs-heuristics", 2.0)]
    add_ratios(rows)
    assert [r["vs_reference_same_dtype"] for r in rows] == [1.0, 1.0, 2.0, 3.0]


NEW_TF32_API = hasattr(torch.backends.cudnn, "conv")  # torch >= 2.9: fp32_precision


@pytest.fixture(params=["legacy", "precision"] if NEW_TF32_API else ["legacy"])
def flags_outside(request):
    """TF32 on and cuDNN's search off before the test, set with torch's legacy flags or
    (torch >= 2.9) its per-backend precisions, after which the legacy flags raise when
    read; torch's legacy values (and API) back after it."""
    saved = torch.backends.cudnn.benchmark, tf32_state()
    try:
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        if request.param == "precision":  # per operation, as torch's notes show it
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
            torch.backends.cudnn.rnn.fp32_precision = "ieee"
            assert tf32_state() == ("precision", "tf32", "tf32")
        yield request.param
    finally:  # the legacy setters put the process back in the legacy API
        torch.backends.cudnn.benchmark, (_, matmul, conv) = saved
        torch.backends.cuda.matmul.allow_tf32 = matmul is True or matmul in ("high", "medium")
        if isinstance(matmul, str):  # as set_float32_matmul_precision had set it
            torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = conv


TF32 = {"legacy": (True, True), "precision": ("tf32", "tf32")}
TF32_OFF = {"legacy": (False, False), "precision": ("ieee", "ieee")}


@pytest.mark.parametrize("scope, read, outside, inside", [
    (cudnn_search, lambda: torch.backends.cudnn.benchmark, lambda _: False, lambda _: True),
    (no_tf32, tf32_state, lambda api: (api, *TF32[api]), lambda api: (api, *TF32_OFF[api]))])
@pytest.mark.parametrize("order", ["nested", "overlapping"])
def test_flag_scopes_are_shared_by_concurrent_calls(flags_outside, scope, read, outside,
                                                   inside, order):
    """Process-wide flags are set while any scope runs and back to the caller's values after
    the last one, whichever finishes first. A plain save-and-restore, closed out of order
    ("overlapping": the first to open closes first), turned TF32 back on under the other
    call and then left it off for good. Set with torch's per-backend precisions, the legacy
    flags raised when read."""
    api = flags_outside
    outside, inside = outside(api), inside(api)
    inside_other, go, waited = threading.Event(), threading.Event(), []

    def other():
        with scope():
            inside_other.set()
            waited.append(go.wait(60))

    mine = scope()
    try:
        if order == "overlapping":
            mine.__enter__()
        t = threading.Thread(target=other)
        t.start()
        assert inside_other.wait(60), "the other call never entered its scope"
        if order == "nested":
            mine.__enter__()
        assert read() == inside
    finally:
        mine.__exit__(None, None, None)
    assert read() == inside  # the other call still runs
    go.set()
    t.join(60)
    assert not t.is_alive() and waited == [True]  # it left only after the checks above
    assert read() == outside


def _set_tf32(api: str, matmul: bool, conv: bool) -> None:
    """TF32 of matrix products and of convolutions on or off, set in ``api``."""
    if api == "legacy":
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv
    else:
        torch.backends.cuda.matmul.fp32_precision = "tf32" if matmul else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if conv else "ieee"


def _tf32(api: str, matmul: bool, conv: bool) -> tuple:
    """``tf32_state``'s reading of those settings in ``api``."""
    return (api, matmul, conv) if api == "legacy" else (
        api, *("tf32" if on else "ieee" for on in (matmul, conv)))


@pytest.mark.parametrize("case", ["search off", "tf32 on", "tf32 on, other api"])
def test_a_flag_the_program_sets_inside_a_scope_keeps_its_value(flags_outside, case):
    """A flag the program sets while a scope is open (cuDNN's search turned off; TF32 of
    matrix products turned on, in the API the flags were read in or in the other one) is
    the program's after the scope closes, and the others get the caller's values back, in
    the API the process then uses. Before the search and TF32 cases the flags are set as
    the scope sets them, so the plain restore put back the scope's own value and lost the
    program's; where the program switched APIs, the restore left the convolutions' TF32
    off for good."""
    api = flags_outside
    other = "precision" if api == "legacy" else "legacy"
    if case == "search off":
        torch.backends.cudnn.benchmark = True
        with cudnn_search():
            torch.backends.cudnn.benchmark = False
        assert torch.backends.cudnn.benchmark is False
        return
    if case == "tf32 on, other api" and not NEW_TF32_API:
        pytest.skip("this torch has one TF32 API (fp32_precision came in torch 2.9)")
    outside = case == "tf32 on, other api"  # TF32 on outside: the scope turns it off
    _set_tf32(api, outside, outside)
    with no_tf32():
        _set_tf32(other if outside else api, True, False)
    assert tf32_state() == (_tf32(other, True, True) if outside else _tf32(api, True, False))


@pytest.mark.skipif(not NEW_TF32_API, reason="needs torch >= 2.9 (oneDNN's matmul precision "
                                             "set with the CUDA one)")
@pytest.mark.parametrize("precision", ["high", "medium"])
def test_tf32_off_keeps_torchs_matmul_precision_readable(precision):
    """After ``torch.set_float32_matmul_precision("high")`` (what torch.compile advises),
    turning the CUDA flag alone off left oneDNN's matmul at TF32 and the mix made
    ``torch.get_float32_matmul_precision``, which inductor calls, raise inside the scope
    (a compile engine on CUDA failed); the caller's precision comes back after it, oneDNN's
    with it, also where the program turned TF32 on inside."""
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        with no_tf32():
            assert torch.get_float32_matmul_precision() == "highest"
            assert torch.backends.cuda.matmul.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == precision
        assert tf32_state() == ("legacy", precision, True)
        with no_tf32():  # the program turns TF32 on as the caller had it: the caller's form
            torch.backends.cuda.matmul.allow_tf32 = True
        assert tf32_state() == ("legacy", precision, True)
    finally:  # the legacy flag's form again: oneDNN's matmul following the global setting
        torch.set_float32_matmul_precision(saved)
        torch.backends.mkldnn.matmul.fp32_precision = "none"


def test_engine_calls_run_with_tf32_off_on_cuda_only(flags_outside):
    """float32 on CUDA is float32 (cuDNN's default is TF32 convolutions), the attribute
    head included; a CPU engine leaves the flags alone. cudnn_benchmark only on CUDA."""
    from bridgegan.engine.engine import _serialised

    class Calls:
        _lock, cudnn_benchmark = threading.Lock(), False

        def __init__(self, device):
            self.device = torch.device(device)

        @_serialised
        def flags(self):
            return tf32_state()

    api = flags_outside
    assert Calls("cuda:1").flags() == (api, *TF32_OFF[api])
    assert Calls("cpu").flags() == tf32_state() == (api, *TF32[api])
    if NEW_TF32_API:  # a call wrote back only what it changed: matmul's precision untouched
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    torch.manual_seed(0)
    model = BridgeGAN(small_config()).eval()
    with pytest.raises(ValueError, match="cudnn_benchmark needs device='cuda'"):
        Engine(model, cudnn_benchmark=True)
    assert Engine(model).cudnn_benchmark is False


def test_bench_baseline_is_the_plain_reference_whatever_the_order():
    """A reference variant with a layout or graph tag is measured but is not the baseline."""
    from bridgegan.engine.bench_results import add_ratios

    def row(variant, p50):
        return dict(what="translate", batch=8, resolution=128, metric="latency",
                    backend=variant.split("-")[0], dtype="float16", variant=variant, p50=p50)

    for order in (1, -1):
        rows = [row("reference-fp16", 4.0), row("reference-fp16-cl", 2.0)][::order]
        rows.append(row("triton-fp16-cl", 1.0))
        add_ratios(rows)
        assert {r["variant"]: r["vs_reference_same_dtype"] for r in rows} == {
            "reference-fp16": 1.0, "reference-fp16-cl": 2.0, "triton-fp16-cl": 4.0}


def identity_onnx(path) -> None:
    """A one-node ONNX graph y = x (x: float32 of shape (1,)) at ``path``; skips without
    onnx and onnxruntime."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", io[:1], io[1:])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_onnxruntime_sessions_run_on_torchs_thread_count(tmp_path, monkeypatch):
    """A session's intra-op threads are torch's (what --threads sets) when it is made; no
    CPU memory arena (it kept the largest call's memory for good)."""
    from bridgegan.engine.backends.onnxruntime import OrtGraph

    identity_onnx(tmp_path / "id.onnx")
    for n in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda n=n: n)
        options = OrtGraph(tmp_path / "id.onnx", torch.device("cpu")).session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (n, 1)
        assert options.enable_cpu_mem_arena is False


def test_heap_trimmer_trims_once_resident_memory_grew_past_its_slack():
    """Without the arena, runs at mixed batch sizes left glibc holding ever more freed
    heap (a soak's resident memory kept growing): a trim once the resident size is
    ``slack`` past the last trim's; resident sizes and the trim faked."""
    from bridgegan.engine.backends.onnxruntime import HeapTrimmer

    resident, trims = iter([500, 300, 350, 450, 320, 400]), []
    trimmer = HeapTrimmer(slack=100, trim=trims.append, resident=lambda: next(resident))
    for _ in range(4):
        trimmer()
    assert trims == [0, 0] and trimmer.floor == 320  # at 500 (floor 0) and 450 (floor 300)
    trimmer.trim = None  # no glibc: nothing read (the sizes are used up), nothing called
    trimmer()

    def unreadable():
        raise OSError("no /proc")

    trimmer = HeapTrimmer(slack=100, trim=trims.append, resident=unreadable)
    trimmer()  # the run goes on; no trim from then on
    assert trimmer.trim is None and trims == [0, 0]


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux's /proc")
def test_resident_size_is_the_reading_processs_own_after_a_fork():
    """resident_bytes keeps /proc/self/statm open; "self" is the process that opened it,
    so a forked child must open its own: a child that grows by 64 MB sees it."""
    from bridgegan.engine.backends.onnxruntime import resident_bytes

    resident_bytes()  # the parent's file, open now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its growth, then leave without Python's exit
        try:
            before = resident_bytes()
            grown = bytearray(64 << 20)
            grown[::4096] = b"\1" * len(grown[::4096])  # every page touched
            os.write(write, str(resident_bytes() - before).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        growth = int(f.read())
    assert os.waitpid(pid, 0)[1] == 0
    assert growth >= 60 << 20, growth


def test_onnxruntime_runs_release_freed_memory(tmp_path, monkeypatch):
    """Every run ends with the trimmer's check; on glibc the trim is found."""
    import platform

    pytest.importorskip("onnxruntime")
    from bridgegan.engine.backends import onnxruntime as ort_backend

    identity_onnx(tmp_path / "id.onnx")
    session = ort_backend.OrtGraph(tmp_path / "id.onnx", torch.device("cpu"))
    calls = []
    monkeypatch.setattr(ort_backend, "release_freed_memory", lambda: calls.append(1))
    session(torch.ones(1))
    session(torch.ones(1))
    assert calls == [1, 1]
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        trimmer = ort_backend.HeapTrimmer(slack=0)  # glibc's trim, called for real
        trimmer()
        assert trimmer.trim is not None and trimmer.floor > 0
    monkeypatch.setattr(ort_backend.ctypes, "CDLL", lambda name: object())  # no malloc_trim
    assert ort_backend.HeapTrimmer().trim is None


def test_onnxruntime_cuda_sessions_run_float32_without_tf32(tmp_path, monkeypatch):
    """ORT's CUDA provider runs float32 convolutions in TF32 unless told (use_tf32 0), as
    the engine's torch backends do not; a CUDA provider that failed to load (ORT logs it
    and runs on the CPU) is refused (onnxruntime faked: no CUDA build here)."""
    ort = pytest.importorskip("onnxruntime")
    from bridgegan.engine.backends.onnxruntime import OrtGraph

    made, loaded = [], ["CUDAExecutionProvider", "CPUExecutionProvider"]

    class Session:
        def __init__(self, path, options, providers):
            made.append(providers)

        def get_inputs(self):
            return []

        def get_providers(self):
            return loaded

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", Session)
    OrtGraph(tmp_path / "g.onnx", torch.device("cuda", 1))
    assert made == [[("CUDAExecutionProvider", {"device_id": 1, "use_tf32": 0}),
                     "CPUExecutionProvider"]]
    loaded = ["CPUExecutionProvider"]
    with pytest.raises(BackendUnavailable, match="onnxruntime could not start its "
                                                 "CUDAExecutionProvider .providers in use: "
                                                 "CPUExecutionProvider; see its log."):
        OrtGraph(tmp_path / "g.onnx", torch.device("cuda", 1))
    monkeypatch.setattr(ort, "__version__", "1.17.3")  # a GPU build before the option
    with pytest.raises(BackendUnavailable, match=r"onnxruntime 1\.17\.3 runs float32 "
                                                 r"convolutions on CUDA in TF32 only: pip "
                                                 r"install 'onnxruntime-gpu>=1\.18'"):
        OrtGraph(tmp_path / "g.onnx", torch.device("cuda", 1))


def test_onnxruntime_without_cuda_is_refused_before_the_export(model, tmp_path, monkeypatch):
    """device='cuda' with an onnxruntime that has no CUDA provider (the CPU package) is
    refused before the graphs are exported, not after (a minute at the paper model)."""
    ort = pytest.importorskip("onnxruntime")
    from bridgegan.engine.backends import onnxruntime as ort_backend

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])

    with pytest.raises(BackendUnavailable, match="no CUDAExecutionProvider: pip install "
                                                 "onnxruntime-gpu"):
        ort_backend.build(model, Rewrites(), torch.float32, torch.device("cuda", 0),
                          onnx_dir=tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_an_onnxruntime_failure_while_running_is_a_runtime_error_naming_the_graph(tmp_path):
    """onnxruntime's own exceptions (Fail: out of memory in its arena, InvalidArgument) are
    no RuntimeError: the commands printed a traceback instead of their error line; torch's
    failures of the same kind are RuntimeErrors."""
    from bridgegan.engine.backends.onnxruntime import OrtGraph

    identity_onnx(tmp_path / "id.onnx")
    session = OrtGraph(tmp_path / "id.onnx", torch.device("cpu"))
    assert session(torch.ones(1))[0].tolist() == [1.0]
    with pytest.raises(RuntimeError, match=r"onnxruntime failed to run id\.onnx \(.*\): .*"
                                           r"INVALID_ARGUMENT"):
        session(torch.ones(2, 3))  # a rank the graph does not take


def test_auto_dtype_is_one_the_named_backend_runs(monkeypatch, tmp_path):
    """dtype="auto" on a CPU with AMX is bf16, which onnxruntime does not run: an explicit
    backend="onnxruntime" got "runs float32 or float16, got torch.bfloat16" (and `serve
    --backend onnxruntime --dtype auto` refused to start); it runs float32."""
    from importlib.util import find_spec

    from bridgegan.engine import placement
    from bridgegan.serve.cli import check_engine_options

    cpu = torch.device("cpu")
    monkeypatch.setattr(placement, "cpu_has_amx", lambda: True)
    model = BridgeGAN(small_config()).eval()
    if all(find_spec(p) for p in ("onnx", "onnxruntime")):
        check_engine_options("onnxruntime", "auto", "cpu")
        eng = Engine(model, backend="onnxruntime", dtype="auto", onnx_dir=tmp_path / "onnx")
        assert eng.dtype == torch.float32
    assert Engine(model, backend="torch", dtype="auto").dtype == torch.bfloat16
    assert placement.backend_dtype("onnxruntime", "auto", cpu) == torch.float32
    assert placement.backend_dtype("auto", "auto", cpu) == torch.bfloat16  # auto: torch
    assert placement.backend_dtype("onnxruntime", "fp16", cpu) == torch.float16
    with pytest.raises(ValueError, match="backend 'onnxruntime' runs float32 or float16, "
                                         "got bfloat16$"):  # the dtype's name, no torch repr
        Engine(model, backend="onnxruntime", dtype="bf16")


def test_bench_refuses_heuristics_beside_searched_rows_on_cuda():
    """cuDNN's plan cache (per thread) has no search flag in its key: on CUDA a table
    mixing :heuristics rows with searched ones would time the search's plans twice."""
    from bridgegan.engine.bench import _check_table

    mixed = [Variant.parse("reference:fp16"), Variant.parse("reference:fp16:heuristics")]
    with pytest.raises(ValueError, match="run the :heuristics variants in a bench of their own"):
        _check_table(mixed, torch.device("cuda"))
    _check_table(mixed, torch.device("cpu"))  # no cuDNN: one table is fine
    _check_table(mixed[1:], torch.device("cuda"))


def test_a_backend_parity_case_that_raises_is_a_fail_row(monkeypatch, tmp_path):
    """One case that raises (say a CUDA-graph capture error) is a FAIL row naming the
    error; the other cases still run and the table is still returned; NAME.partial holds
    the rows so far after each row (a stage stopped at its limit keeps them), NAME the
    complete table."""
    from bridgegan.engine import parity

    real = parity.compare
    calls, path = [], tmp_path / "rows.json"
    partial = tmp_path / "rows.json.partial"

    def compare(eng, *args, **kw):
        calls.append((eng.backend, json.loads(partial.read_text()) if partial.exists() else None))
        if eng.backend == "torch":
            raise RuntimeError("capture failed")
        return real(eng, *args, **kw)

    monkeypatch.setattr(parity, "compare", compare)
    rows = parity.check_backends("cpu", small_config(32),
                                 variants=parse_variants("torch:float32,reference:float32"),
                                 verbose=False, written=path)
    assert calls == [("torch", None), ("reference", rows[:1])]
    assert json.loads(path.read_text()) == rows and not partial.exists()
    assert rows[0]["status"] == "FAIL" and rows[0]["reason"] == "RuntimeError: capture failed"
    assert rows[1]["status"] == "PASS"


def test_bench_roofline_peak_is_measured_in_each_dtype_of_the_table_on_any_device():
    """bf16 rows on a CPU with AMX were shared over the float32 matrix peak (shares of 1.5
    and 3.8 in the shipped CSVs): the peak is measured in each dtype of the table (a row's
    share is over its own dtype's) and the fastest is the headline, on the CPU as on CUDA."""
    from bridgegan.engine.bench import roofline_peaks

    speed = {torch.float32: 1.6e11, torch.bfloat16: 1.25e12, torch.float16: 9e10}
    measured = []

    def measure(dev, dtype, quick=False):
        measured.append(dtype)
        return {"matmul_flops": speed[dtype], "matmul_dtype": str(dtype).replace("torch.", ""),
                "copy_bytes_per_s": 2e10}

    table = [Variant.parse(v) for v in ("reference:float32", "torch:bf16:cl", "compile:bf16:cl")]
    for device in ("cpu", "cuda"):
        measured.clear()
        peaks = roofline_peaks(table, torch.device(device), measure=measure)
        assert measured == [torch.float32, torch.bfloat16]
        assert (peaks["matmul_dtype"], peaks["matmul_flops"]) == ("bfloat16", 1.25e12)
        assert peaks["matmul_flops_by_dtype"] == {"float32": 1.6e11, "bfloat16": 1.25e12}
    # a dtype slower than float32 here (bf16 emulated, say) does not lower the peak
    speed[torch.bfloat16] = 4e10
    assert roofline_peaks(table, torch.device("cpu"), measure=measure)["matmul_dtype"] == "float32"


def test_bench_plot_refuses_one_line_through_rows_of_several_runs(tmp_path):
    """gpu_check joins the rows of several bench runs (engine, ablation, compile all time
    triton-fp16-cl-graphs at batch 64): plotted by variant they made one line with three
    points at batch 64. plot_png refuses that; rows named apart plot."""
    from bridgegan.engine.bench_results import plot_png

    def row(variant, batch, per_s):
        return dict(what="translate", resolution=128, variant=variant, batch=batch,
                    metric="latency", images_per_s=per_s)

    rows = [row("triton-fp16-cl-graphs", b, v) for b, v in ((1, 740.0), (64, 5517.0))]
    with pytest.raises(ValueError, match="several rows at one batch"):
        plot_png(rows + [row("triton-fp16-cl-graphs", 64, 5400.0)], "t")
    png = plot_png(rows + [row("ablation: triton-fp16-cl-graphs", 64, 5400.0)], "t")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_bench_refuses_repeats_before_timing(monkeypatch):
    """A variant, batch, resolution or workload given twice would make two rows at one
    point (the plot refuses them): refused before anything is measured."""
    from bridgegan.engine import bench

    monkeypatch.setattr(bench, "roofline_peaks", lambda *a, **k: pytest.fail("measured"))
    for kw, repeated in ((dict(batches=[1, 1]), "batch may be given once; repeated: 1"),
                         (dict(variants=[Variant.parse("torch:float32")] * 2),
                          "variant may be given once; repeated: torch-float32"),
                         (dict(workloads=["translate", "translate"]),
                          "workload may be given once; repeated: translate")):
        args = dict(variants=[Variant.parse("torch:float32")], batches=[1],
                    resolutions=[64], workloads=["translate"])
        args.update(kw)
        with pytest.raises(ValueError, match=f"each {repeated}"):
            bench.run_matrix(**args, progress=False)


def test_a_list_of_seeds_gives_each_image_its_own_noise_whatever_the_batch():
    """An integer seed draws the batch's noise at once (an image's noise depends on the
    batch); a list of seeds gives image i the noise it gets translated alone with seed[i]:
    its result is the same alone, in a batch, and at any position."""
    torch.manual_seed(0)
    m = randomize(BridgeGAN(small_config(32)), seed=2).eval()
    eng = Engine(m)
    x, ys = images(4, 32, 21), labels(4, m.config.n_attrs, 21)
    alone = torch.cat([eng.translate(x[i:i + 1], {"Male": 1}, source=ys[i:i + 1], seed=7)
                       for i in range(4)])
    batch = eng.translate(x, {"Male": 1}, source=ys, seed=[7] * 4)
    assert (batch - alone).abs().max() <= ATOL
    perm = [2, 0, 3, 1]
    moved = eng.translate(x[perm], {"Male": 1}, source=ys[perm], seed=[7] * 4)
    assert (moved - alone[perm]).abs().max() <= ATOL
    # per-image seeds: row i is image i alone with seed i, in every program
    seeds = [3, 2 ** 64 - 1, 0, 3]
    rec = eng.reconstruct(x, seed=seeds)
    for i, s in enumerate(seeds):
        assert (rec[i] - eng.reconstruct(x[i:i + 1], seed=s)[0]).abs().max() <= ATOL
    inter = eng.interpolate(x, x.flip(0), {"Male": 1}, [1.0], source=ys, seed=seeds)[0]
    assert (inter - eng.translate(x, {"Male": 1}, source=ys, seed=seeds)).abs().max() <= ATOL
    # an integer seed is one draw of the whole batch, as documented
    assert (eng.translate(x, {"Male": 1}, source=ys, seed=7)[0] - alone[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"a list of seeds needs one per image \(4\), got 3"):
        eng.translate(x, {"Male": 1}, source=ys, seed=[1, 2, 3])
    for bad in (-3, None, 1.0, "7"):
        with pytest.raises(ValueError, match=re.escape(
                f"seed: each seed of a list must be an integer in [0, 2**64), got {bad!r}")):
            eng.translate(x, {"Male": 1}, source=ys, seed=[1, 2, bad, 4])


def test_large_calls_run_in_chunks_of_max_rows(model, monkeypatch):
    """A call above cudagraphs.MAX_ROWS images runs its program (and the attribute head
    that estimates source labels) in chunks of at most that many: memory, and on CUDA the
    largest graph, stay bounded; the images are those of separate calls."""
    from bridgegan.engine.cudagraphs import MAX_ROWS

    seen = []
    real = programs.translate_label

    def recorded(stages, x, *rest):
        seen.append(x.shape[0])
        return real(stages, x, *rest)

    monkeypatch.setattr(programs, "translate_label", recorded)
    eng = Engine(model)
    heads = []
    head = eng.attribute_logits
    eng.attribute_logits = lambda rows: heads.append(len(rows)) or head(rows)
    n = MAX_ROWS + 3
    x = images(n, model.config.image_size, seed=40)
    seeds = list(range(n))
    got = eng.translate(x, {"Male": 1}, seed=seeds)
    assert seen == [MAX_ROWS, 3] and heads == [MAX_ROWS, 3]
    tail = eng.translate(x[MAX_ROWS:], {"Male": 1}, seed=seeds[MAX_ROWS:])
    assert torch.equal(got[MAX_ROWS:], tail)


def test_chunks_split_k_references_along_the_source_batch(model, monkeypatch):
    """translate_reference's references (K, N, ...) are chunked along N, as are
    interpolate's, MAX_ROWS // K sources at a time (at most MAX_ROWS references encoded
    at once, whatever K): a call of 5 sources with K = 2 at MAX_ROWS 4 runs in chunks of
    2 (2, 2, 1), each giving the images of a separate call of its sources."""
    from bridgegan.engine import engine as engine_module

    seen = []
    for name in ("translate_reference", "interpolate"):
        real = getattr(programs, name)
        monkeypatch.setattr(programs, name, lambda st, x, refs, *a, real=real, **k: (
            seen.append(tuple(refs.shape[:2])), real(st, x, refs, *a, **k))[1])
    monkeypatch.setattr(engine_module, "MAX_ROWS", 4)  # read per call
    cfg = model.config
    eng = Engine(model)
    x, r1, r2 = (images(5, cfg.image_size, seed=s) for s in (50, 51, 52))
    ys, yr = labels(5, cfg.n_attrs, 50), labels(5, cfg.n_attrs, 51)
    got = eng.translate_reference(x, [r1, r2], source=ys, reference_labels=yr)
    mixed = eng.interpolate(x, [r1, r2], {"Male": 1}, [0.5], source=ys, seed=list(range(5)))
    assert seen == [(2, 2), (2, 2), (2, 1)] * 2
    for rows in (slice(2, 4), slice(4, 5)):
        assert torch.equal(got[rows], eng.translate_reference(
            x[rows], [r1[rows], r2[rows]], source=ys[rows], reference_labels=yr[rows]))
        assert torch.equal(mixed[:, rows], eng.interpolate(
            x[rows], [r1[rows], r2[rows]], {"Male": 1}, [0.5], source=ys[rows],
            seed=list(range(5))[rows]))


def test_chunks_of_k_images_per_source_hold_at_most_max_rows_under_cuda_graphs():
    """A chunk of sources with K images each is a graph bucket's size (85 sources at K = 3
    ran padded to 128: 384 rows), so it runs at most MAX_ROWS rows, padding included."""
    from bridgegan.engine import engine as engine_module
    from bridgegan.engine.cudagraphs import MAX_ROWS, bucket

    for k in range(1, 65):
        sources = engine_module._sources_per_chunk(k)
        assert bucket(sources) == sources and sources * k <= MAX_ROWS
        assert bucket(sources + 1) * k > MAX_ROWS  # the next bucket would not fit


def test_repeat_keeps_the_dtype_and_layout_it_is_given():
    """The trunk's output and the source code are repeated as the stage gave them (an
    exported backend's float32 is not rounded to the engine's dtype between its stages)."""
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(3))
    for t in (x, x.contiguous(memory_format=torch.channels_last), x.half(), x[:, :, 0]):
        out = Engine._repeat(t, 3)
        assert out.dtype == t.dtype and torch.equal(out, t.repeat_interleave(3, 0))
        if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
            assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
def test_translate_samples_are_the_translations_of_their_seeds(model, channels_last):
    """Sample k of image i is image i translated alone with seed + k (the trunk and the
    source code computed once, the samples decoded as one batch: rounding apart)."""
    cfg = model.config
    eng = Engine(model, channels_last=channels_last)
    x, ys = images(3, cfg.image_size, 14), labels(3, cfg.n_attrs, 14)
    out = eng.translate_samples(x, 1 - ys, 3, seed=8, source=ys, strength=1.5)
    assert out.shape == (3, 3, 3, cfg.image_size, cfg.image_size)
    for i in range(3):
        for k in range(3):
            one = eng.translate(x[i:i + 1], 1 - ys[i:i + 1], seed=8 + k, source=ys[i:i + 1],
                                strength=1.5)
            assert (out[i, k] - one[0]).abs().max() <= ATOL, (i, k)
    assert out[:, 0].sub(out[:, 1]).abs().max() > 1e-3  # the samples differ


def test_translate_samples_run_in_chunks_of_at_most_max_rows_decoded(model, monkeypatch):
    """With K samples a chunk holds MAX_ROWS // K sources (at least one), so a call decodes
    at most MAX_ROWS rows at once; the result is the whole call's."""
    from bridgegan.engine import engine as engine_module

    eng = Engine(model)
    x = images(5, model.config.image_size, seed=54)
    whole = eng.translate_samples(x, {"Male": 1}, 3, seed=4)
    seen = []
    real = programs.translate_samples
    def recorded(stages, x, d, r, **kw):
        seen.append(tuple(r.shape[:2]))
        return real(stages, x, d, r, **kw)

    monkeypatch.setattr(programs, "translate_samples", recorded)
    for most, chunks in ((7, [(2, 3), (2, 3), (1, 3)]), (2, [(1, 3)] * 5)):
        monkeypatch.setattr(engine_module, "MAX_ROWS", most)  # read per call
        seen.clear()
        parts = Engine(model).translate_samples(x, {"Male": 1}, 3, seed=4)
        assert seen == chunks
        torch.testing.assert_close(parts, whole, atol=ATOL, rtol=0)


def test_edit_strip_rows_run_in_chunks(model, monkeypatch):
    """A strip longer than MAX_ROWS rows (here 3) runs in chunks, the source's trunk once
    per chunk: the rows equal the whole strip's in one call."""
    from bridgegan.engine import engine as engine_module

    eng = Engine(model)
    x = images(1, model.config.image_size, seed=53)
    whole = eng.edit_strip(x, samples=3, seed=4)
    monkeypatch.setattr(engine_module, "MAX_ROWS", 3)  # read per call
    seen = []
    real = programs.edit_strip
    def recorded(stages, x, d, *rest):
        seen.append(len(d))
        return real(stages, x, d, *rest)

    monkeypatch.setattr(programs, "edit_strip", recorded)
    parts = eng.edit_strip(x, samples=3, seed=4)
    k = len(whole.captions)
    assert seen == [3] * (k // 3) + ([k % 3] if k % 3 else [])
    assert parts.captions == whole.captions
    torch.testing.assert_close(parts.images, whole.images, atol=ATOL, rtol=0)


def test_unit_range_images_holding_a_black_pixel_are_warned_about():
    """torchvision's ToTensor gives 0.0 for black: a [0, 1] batch whose minimum is exactly
    0 has no negative value and is warned about like any other."""
    import warnings

    from bridgegan.engine.io import as_batch

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(31))
    x[0, :, :4, :4] = 0.0  # a black corner
    with pytest.warns(UserWarning, match="without a negative value"):
        as_batch(x, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_batch(x * 2 - 1, 16)  # the same images in [-1, 1]: no warning


def test_rgba_tensors_are_composited_on_white_by_their_alpha():
    """alpha in [-1, 1] is opacity (alpha + 1) / 2: half-transparent pixels are half their
    colour, half white."""
    from bridgegan.engine.io import as_batch

    g = torch.Generator().manual_seed(32)
    rgb = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    alpha = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    alpha[0] = 0.0  # exactly half opaque
    got = as_batch(torch.cat([rgb, alpha], 1), 8)
    a = (alpha + 1) / 2
    assert torch.allclose(got, rgb * a + (1 - a), atol=1e-6)
    assert torch.allclose(got[0], (rgb[0] + 1) / 2, atol=1e-6)


def test_latency_row_counts_images_per_second_not_calls():
    """A call of n images taking p50 ms is n / p50 * 1000 images a second, and its roofline
    share is flop per image times that over the peak."""
    from bridgegan.engine.bench import _latency

    ms = list(np.random.default_rng(41).uniform(5.0, 9.0, size=11))
    n, flop, peak = 6, 3.5e9, 2e12
    row = _latency(ms, n, flop, 0.25, "", peak)
    p50 = float(np.median(ms))
    assert row["p50"] == round(p50, 4) and row["samples"] == 11
    assert row["images_per_s"] == pytest.approx(n * 1e3 / p50, abs=0.01)
    assert row["roofline_share"] == pytest.approx(flop * n * 1e3 / p50 / peak, abs=1e-4)
