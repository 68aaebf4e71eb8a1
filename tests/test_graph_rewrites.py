"""The inference graph's up convolution as one transposed convolution (``transposed_up``),
E's label channels folded into a per-sample bias (``fold_labels``) and the SPADE hidden
convolution + bias + ReLU as one library call (``fused_relu``): each alone and all
rewrites together against the float64 reference model, in float32 (NCHW and
channels_last) and float64, and through the ONNX export run by onnxruntime."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from bridgegan.engine import InferenceGraph, Rewrites
from bridgegan.engine.graph import Conv, transposed_up_weight
from bridgegan.numerics import errors, float64_model, tolerance
from bridgegan.reference import BridgeGAN, programs
from bridgegan.reference.layers import LatentMix
from bridgegan.reference.programs import Stages
from conftest import images, randomize, small_config

FP32 = tolerance("float32")
REWRITES = {"transposed_up": Rewrites.only("transposed_up"),
            "fold_labels": Rewrites.only("fold_labels"), "fused_relu": Rewrites.only("fused_relu"),
            "all": Rewrites()}
FORMATS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}


@pytest.fixture(scope="module", params=[32, 64], ids=["s32", "s64"])
def model(request):
    torch.manual_seed(100 + request.param)
    return randomize(BridgeGAN(small_config(request.param)), seed=100 + request.param).eval()


def inputs(cfg, n: int, seed: int):
    """Images, real-valued label differences (not just +-1) and noise."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, cfg.n_attrs, generator=g)
    return images(n, cfg.image_size, seed), d, torch.randn(n, cfg.noise_dim, generator=g)


def translate(stages, x, d, r) -> torch.Tensor:
    with torch.no_grad():
        return programs.translate_label(stages, x, d, r)


def graph_stages(g: InferenceGraph) -> Stages:
    return Stages(g.trunk, g.encode, g.map, g.decode)


@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (3, 5, 5, 5), (1, 5, 1, 2)])
@pytest.mark.parametrize("fmt", FORMATS)
def test_transposed_up_equals_conv_after_upsample(shape, fmt):
    g = torch.Generator().manual_seed(sum(shape))
    conv = torch.nn.Conv2d(5, 4, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(4, generator=g))
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        want = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        assert transposed_up_weight(conv.weight).shape == (5, 4, 4, 4)
        for dtype, limit in ((torch.float64, 1e-13), (torch.float32, FP32.op_rel)):
            up = Conv(conv, transposed=True).to(dtype=dtype, memory_format=FORMATS[fmt])
            got = up(x.to(dtype).contiguous(memory_format=FORMATS[fmt]))
            assert got.shape == want.shape
            assert errors(got, want)[1] <= limit


def test_transposed_up_replaces_four_phase():
    assert Rewrites().up_conv == "transposed"
    assert Rewrites.only("transposed_up").up_conv == "transposed"
    assert Rewrites.only("four_phase").up_conv == "four_phase"
    assert Rewrites.none().up_conv is None
    torch.manual_seed(0)
    g = InferenceGraph(BridgeGAN(small_config()).eval())
    convs = [c for c in g.modules() if isinstance(c, Conv)]
    # the up blocks of G and M and the SPADE hidden convolution at the image size
    assert sum(c.transposed for c in convs) == len(g.up) + len(g.m_blocks) + 1
    assert not any(c.four_phase for c in convs)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rewrite", REWRITES)
def test_rewrites_match_the_float64_reference(model, rewrite, fmt):
    cfg = model.config
    x, d, r = inputs(cfg, 3, cfg.image_size + len(rewrite))
    ref64 = float64_model(model)
    want = translate(ref64.stages(), x.double(), d.double(), r.double())
    with torch.no_grad():
        want_code = ref64.encoder(x.double(), d.double())
    memory_format = FORMATS[fmt]
    # float64 from the float64 model (weights derived in float64): exact but for rounding
    for m, dtype, image_limit, op_limit in (
            (ref64, torch.float64, 1e-12, 1e-12),
            (model, torch.float32, FP32.image_max_abs, FP32.op_rel)):
        g = InferenceGraph(m, REWRITES[rewrite]).to(memory_format=memory_format)
        xd = x.to(dtype).contiguous(memory_format=memory_format)
        out = translate(graph_stages(g.eval()), xd, d.to(dtype), r.to(dtype))
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert errors(out, want)[0] <= image_limit, (dtype, errors(out, want))
        with torch.no_grad():  # E alone: the stem's label fold, border pixels included
            assert errors(g.encode(xd, d.to(dtype)), want_code)[1] <= op_limit


@pytest.mark.parametrize("rewrite", ["transposed_up", "fold_labels", "fused_relu"])
def test_onnx_export_with_the_rewrite(small_model, rewrite, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from bridgegan.engine.export.onnx_export import export_model

    model = small_model
    out = export_model(model, tmp_path / "onnx", ("translate_label",), ("fp32",),
                       REWRITES[rewrite])
    path = out / "translate_label.onnx"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("ConvTranspose" in ops) == (rewrite == "transposed_up")
    cfg = model.config
    x, d, r = inputs(cfg, 3, 7)
    want = translate(float64_model(model).stages(), x.double(), d.double(), r.double())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"image": x.numpy(), "d": d.numpy(),
                                           "noise": r.numpy()})[0])
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert errors(got, want)[0] <= FP32.image_max_abs


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the Triton kernels on the CPU need TRITON_INTERPRET=1")
@pytest.mark.parametrize("merged", [True, False], ids=["merged", "separate"])
def test_kernel_bias_matches_the_float64_reference(model, merged):
    """impl="triton": the gamma/beta convolutions lose their bias, the SPADE kernel adds
    it; SPADE-level mixes (weights not summing to one, per-sample too) add it first."""
    cfg = model.config
    x, d, r = inputs(cfg, 2, 11)
    rw = Rewrites(merge_gamma_beta=merged)
    g = InferenceGraph(model, rw, impl="triton").eval()
    convs = [c for grp in g.groups for c in (grp.gb if merged else [*grp.gamma, *grp.beta])]
    assert convs and all(c.bias is None for c in convs)
    torch_groups = InferenceGraph(model, rw).groups  # the torch path keeps the conv bias
    assert all(c.bias is not None for grp in torch_groups
               for c in (grp.gb if merged else [*grp.gamma, *grp.beta]))
    ref = float64_model(model).stages()
    with torch.no_grad():
        s1, s2 = ref.encode(x.double(), d.double()), ref.map(r.double(), d.double())
        h = ref.trunk(x.double())
        for weights in ((0.7, 0.6), (torch.tensor([0.2, 1.1]), torch.tensor([0.9, -0.3]))):
            mix = LatentMix((s1, s2), weights)
            want = ref.decode(h, mix)
            got = g.decode(g.trunk(x), LatentMix((s1.float(), s2.float()),
                                                 tuple(w if isinstance(w, float) else w.float()
                                                       for w in weights)))
            assert errors(got, want)[0] <= FP32.image_max_abs
        out = translate(graph_stages(g), x, d, r)
    want = translate(ref, x.double(), d.double(), r.double())
    assert errors(out, want)[0] <= FP32.image_max_abs


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the Triton kernels on the CPU need TRITON_INTERPRET=1")
@pytest.mark.parametrize("low_res", [True, False], ids=["broadcast", "full_res_shortcut"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_tail_matches_the_float64_reference(small_model, fmt, low_res, monkeypatch):
    """impl="triton": the last block's sum, ReLU, to_rgb and tanh run as one rgb_tail
    kernel (its up shortcut at half size, or at full size without ``low_res_shortcut``);
    the torch path, which ONNX export traces, keeps the plain ops. (32 px: the
    interpreter takes a minute per 64 px channels_last translation.)"""
    model = small_model
    cfg = model.config
    x, d, r = inputs(cfg, 2, 13)
    rw = Rewrites(low_res_shortcut=low_res)
    g = InferenceGraph(model, rw, impl="triton").eval().to(memory_format=FORMATS[fmt])
    assert g.fused_tail and g.up[-1].shortcut is not None
    assert not InferenceGraph(model, rw).fused_tail
    assert not InferenceGraph(model, Rewrites(fused_tail=False), impl="triton").fused_tail
    from bridgegan.engine import graph as graph_module

    shortcuts = []  # the shortcut rgb_tail gets: half size (a broadcast) with low_res

    def rgb_tail(h, weight, bias, sc, **kw):
        shortcuts.append(sc.shape[-1] * 2 == h.shape[-1])
        return real_tail(h, weight, bias, sc, **kw)

    real_tail = graph_module.rgb_tail
    monkeypatch.setattr(graph_module, "rgb_tail", rgb_tail)
    out = translate(graph_stages(g), x.contiguous(memory_format=FORMATS[fmt]), d, r)
    assert shortcuts == [low_res]
    want = translate(float64_model(model).stages(), x.double(), d.double(), r.double())
    assert out.is_contiguous(memory_format=FORMATS[fmt])
    assert errors(out, want)[0] <= FP32.image_max_abs


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_fused_residual_leaves_each_sum_to_the_next_norm(small_model, layout):
    """impl="triton": every block followed by a normed block hands its branches on, and
    that block's first norm kernel adds them (a broadcast for an up block's half-size
    shortcut): one add kernel fewer per hand-over, the same Triton launches otherwise."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from bridgegan.engine.targets import engine_launches

    class Adds(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Adds.count += func is torch.ops.aten.add.Tensor
            return func(*args, **(kwargs or {}))

    model = small_model
    g = InferenceGraph(model, impl="triton")
    handovers = len(g.down) + len(g.up) + len(g.e_blocks) - 1 + len(g.m_blocks) - 1
    runs = {}
    for on in (True, False):
        Adds.count = 0
        with Adds():
            launches = engine_launches(model, torch.float16, layout, 2,
                                       Rewrites(fused_residual=on))
        runs[on] = (Adds.count, [launch for _, launch in launches])
    fused = [l for l in runs[True][1] if l.kwargs.get("HAS_RES")]
    assert len(fused) == handovers > 0
    assert {l.kwargs["UP"] for l in fused} == {1, 2}  # up blocks' shortcuts: broadcast
    assert runs[False][0] - runs[True][0] == handovers
    assert len(runs[True][1]) == len(runs[False][1])
    assert not any(l.kwargs.get("HAS_RES") for l in runs[False][1])
    assert not InferenceGraph(model).fused_residual  # the torch path (ONNX) keeps its adds


def test_a_block_without_norm_sums_a_pending_pair_itself():
    """A block handed its predecessor's branches but with no norm kernel to add them adds
    them first: the same output as for the summed input."""
    from bridgegan.engine.graph import Block
    from bridgegan.reference.layers import ResBlk

    torch.manual_seed(7)
    blk = Block(ResBlk(4, 4, "none", "lrelu"), Rewrites()).eval()
    h, sc = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)
    up = sc.repeat_interleave(2, 2).repeat_interleave(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(blk((h, sc)), blk(h + up), rtol=0, atol=0)



@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_fold_labels_keeps_the_encoders_image_part_in_a_narrow_dtype(dtype):
    """The shipped model's label bias at strength 3 is tens to hundreds of times a stem
    channel's spread: added to the activations in bf16 it rounded their image part away
    (9 of 32 images of a three-reference translation below 40 dB). Carried in float32 to
    E's head, every image meets the limit."""
    from bridgegan.engine import Engine
    from bridgegan.numerics import psnr
    from bridgegan.reference.checkpoint import SHIPPED, load_checkpoint
    from bridgegan.reference.data import procedural_batch

    m = load_checkpoint(SHIPPED).eval()
    size = m.config.image_size
    x, ys = procedural_batch(32, size, seed=100)
    refs = [procedural_batch(32, size, seed=200 + k)[0] for k in range(3)]
    with torch.no_grad():
        want = float64_model(m).translate_reference(x.double(), [r.double() for r in refs],
                                                    ys.double(), 1 - ys.double(), strength=3.0)
    got = Engine(m, dtype=dtype).translate_reference(x, refs, source=ys,
                                                     reference_labels=1 - ys, strength=3.0)
    assert psnr(got.double(), want).min() >= tolerance(dtype).image_min_psnr_db
