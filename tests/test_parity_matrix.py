"""Engine API calls x backend x dtype x layout against the float64 reference programs, for
the cells no other test compares: region edits, K > 1 references, latent-level
interpolation between the endpoints, SPADE-level interpolation, noise samples and edit
strips, on every backend and dtype that runs on a CPU (design.md's image limits: float32
max abs 1e-4, fp16 / bf16 PSNR >= 40 dB).

The reference is ``programs`` over the float64 copy of the model's own networks
(``float64_model(model).stages()``), not the engine's graph: a backend's stages, its
dtype casts, its memory layout and the engine's handling of masks, several references,
blends and the reused trunk of strips and samples are what is checked."""
from __future__ import annotations

import os
from importlib.util import find_spec

import pytest
import torch

from bridgegan.engine import BackendUnavailable, Engine
from bridgegan.engine.arguments import draw_noise
from bridgegan.numerics import errors, float64_model, psnr, tolerance, upcast
from bridgegan.torch_flags import no_tf32
from bridgegan.reference import BridgeGAN, programs
from bridgegan.reference.attributes import apply_edits
from conftest import images, labels, randomize, small_config

STRENGTH = 1.5
HAVE_ORT = find_spec("onnx") is not None and find_spec("onnxruntime") is not None
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="needs onnx and onnxruntime "
                               "(pip install 'bridgegan[onnx]')")


def reference64(model, program, *tensors, **kw) -> torch.Tensor:
    """``program`` over the float64 model's stages, its tensor arguments upcast."""
    with torch.no_grad():
        return program(float64_model(model).stages(), *upcast(tensors), **kw)


def check(out: torch.Tensor, want: torch.Tensor, dtype, what: str) -> None:
    """``out`` meets the image limit of ``dtype`` against ``want`` (NaN never passes)."""
    assert out.shape == want.shape, (what, out.shape, want.shape)
    max_abs, _ = errors(out, want)
    db = psnr(out.double().flatten(0, -4), want.flatten(0, -4)).min().item()  # worst image
    tol = tolerance(dtype)
    assert torch.isfinite(out).all() and tol.image_ok(max_abs, db), (
        f"{what}: max abs {max_abs:.3e}, PSNR {db:.1f} dB, limit {tol.image_limit}")


def half_mask(n: int, s: int) -> torch.Tensor:
    """(N, 1, S, S): image 0 edits its left half, the others a soft band."""
    m = torch.zeros(n, 1, s, s)
    m[0, :, :, : s // 2] = 1
    m[1:, :, s // 4: 3 * s // 4] = 0.6
    return m


def calls(eng: Engine, model: BridgeGAN, n: int = 2, seed: int = 0):
    """(name, engine result, float64 reference) for each API call and option."""
    cfg = model.config
    s, a = cfg.image_size, cfg.n_attrs
    x, r1, r2 = images(n, s, 40 + seed), images(n, s, 41 + seed), images(1, s, 42 + seed)
    ys, yt = labels(n, a, 40 + seed), labels(n, a, 43 + seed)
    d = STRENGTH * (yt - ys)
    zero = torch.zeros_like(d)
    noise = torch.randn(n, cfg.noise_dim, generator=torch.Generator().manual_seed(seed))
    m = half_mask(n, s)
    refs2 = torch.stack([r1, r2.expand(n, -1, -1, -1)])  # K = 2, the second broadcast
    seeds = [7 + seed, 2 ** 64 - 1]
    per_seed = draw_noise(n, cfg.noise_dim, seeds)
    alphas = [0.3, 1.2]  # between the endpoints, and past one
    kw = dict(source=ys, strength=STRENGTH)

    yield ("translate region + seed list",
           eng.translate(x, yt, seed=seeds, region=m, **kw),
           reference64(model, programs.translate_label, x, d, per_seed, m))
    yield ("reconstruct",
           eng.reconstruct(x, noise=noise),
           reference64(model, programs.translate_label, x, zero, noise))
    yield ("translate_reference K=2",
           eng.translate_reference(x, [r1, r2], reference_labels=yt, **kw),
           reference64(model, programs.translate_reference, x, refs2, d))
    yield ("translate_reference K=2 region",
           eng.translate_reference(x, [r1, r2], reference_labels=yt, region=m[:1], **kw),
           reference64(model, programs.translate_reference, x, refs2, d,
                       m[:1].expand(n, -1, -1, -1)))
    yield ("interpolate latent K=2",
           eng.interpolate(x, [r1, r2], yt, alphas, noise=noise, **kw),
           torch.stack(reference64(model, programs.interpolate, x, refs2, d, noise, alphas,
                                   "latent")))
    yield ("interpolate latent region",
           eng.interpolate(x, r1, yt, alphas, noise=noise, region=m, **kw),
           torch.stack(reference64(model, programs.interpolate, x, r1, d, noise, alphas,
                                   "latent", m)))
    yield ("interpolate spade",
           eng.interpolate(x, r1, yt, alphas, noise=noise, level="spade", **kw),
           torch.stack(reference64(model, programs.interpolate, x, r1, d, noise, alphas,
                                   "spade")))
    samples = draw_noise(2, cfg.noise_dim, [9 + seed, 10 + seed])  # sample k from seed + k
    yield ("translate_samples K=2",
           eng.translate_samples(x, yt, 2, seed=9 + seed, **kw),
           reference64(model, programs.translate_samples, x, d,
                       samples[None].expand(n, -1, -1)))
    # edit strip: the reconstruction, every single flip and two samples of the first flip
    y0 = ys[:1]
    flips = [{name: 1 - int(y0[0, i])} for i, name in enumerate(cfg.attributes)]
    targets = torch.cat([y0] + [apply_edits(y0, cfg.attributes, f) for f in flips]
                        + [apply_edits(y0, cfg.attributes, flips[0])] * 2)
    k = targets.shape[0]
    strip_d = STRENGTH * (targets - y0)
    # the reconstruction and flips: the seed's noise; sample j: seed + 1 + j's
    strip_r = torch.cat([draw_noise(1, cfg.noise_dim, 5 + seed).expand(k - 2, -1),
                         draw_noise(2, cfg.noise_dim, [6 + seed, 7 + seed])])
    want = reference64(model, programs.edit_strip, x[:1], strip_d, strip_r, False)
    for cache in (True, False):
        yield (f"edit_strip cache={cache}",
               eng.edit_strip(x[:1], samples=2, seed=5 + seed, source=y0, strength=STRENGTH,
                              cache=cache).images, want)


def run_calls(eng: Engine, model: BridgeGAN, **kw) -> None:
    """Every call of ``calls``; the reference on the CPU, the engine on its device."""
    failures = []
    with no_tf32():
        for what, out, want in calls(eng, model, **kw):
            try:
                check(out.cpu(), want, eng.dtype, f"{eng.backend} {eng.dtype} "
                      f"{'cl' if eng.channels_last else 'nchw'} {what}")
            except AssertionError as exc:
                failures.append(str(exc))
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="module")
def randomized():
    """Perturbed weights: every path carries signal (float32 cells)."""
    torch.manual_seed(9)
    return randomize(BridgeGAN(small_config(32)), seed=9).eval()


def mildly_perturbed(model: BridgeGAN, seed: int) -> BridgeGAN:
    """Weights moved by 0.05 sigma: edits change the image by about 25 dB PSNR (7 dB more
    than at the initial weights, where a wrong soft mask still met 40 dB), while fp16 /
    bf16 keep 64 / 46 dB (the 0.1 of conftest's ``randomize`` amplifies rounding far beyond
    a trained model, as test_engine's PSNR test notes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def initial():
    """The reduced-precision cells' model (``mildly_perturbed``)."""
    torch.manual_seed(32)
    return mildly_perturbed(BridgeGAN(small_config(32)), 32)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_float32_calls_match_float64(randomized, backend, channels_last):
    run_calls(Engine(randomized, backend=backend, channels_last=channels_last), randomized)


@needs_ort
@pytest.mark.parametrize("dtype", ["float32", "fp16"])
def test_onnxruntime_calls_match_float64(randomized, initial, dtype, tmp_path):
    """The stage graphs in onnxruntime sessions, float32 and the fp16 graphs (the registry
    runs onnxruntime in float16 too; no other test builds that engine)."""
    model = randomized if dtype == "float32" else initial
    run_calls(Engine(model, backend="onnxruntime", dtype=dtype, onnx_dir=tmp_path / "onnx"),
              model)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_torch_reduced_precision_calls_match_float64(initial, dtype):
    """bf16 is what dtype="auto" gives on a CPU with AMX; channels_last is its default."""
    eng = Engine(initial, backend="torch", dtype=dtype)
    assert eng.channels_last
    run_calls(eng, initial)


def tiny(seed: int, strong: bool) -> BridgeGAN:
    """16 px (the Triton interpreter is slow); weights ``randomize``d (float32 cells) or
    ``mildly_perturbed`` (reduced-precision cells)."""
    torch.manual_seed(seed)
    m = BridgeGAN(small_config(16, g_downs=2, d_downs=2)).eval()
    return randomize(m, seed=seed) if strong else mildly_perturbed(m, seed)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the triton backend on a CPU needs TRITON_INTERPRET=1 (on CUDA: "
                           "test_cuda_calls_match_float64)")
@pytest.mark.parametrize("dtype,channels_last", [("float32", False), ("fp16", True),
                                                 ("bf16", True)], ids=["fp32-nchw", "fp16-cl",
                                                                       "bf16-cl"])
def test_triton_interpreted_calls_match_float64(dtype, channels_last):
    """The fused SPADE kernels under region masks, blends of codes and of modulations, the
    strip's repeated trunk, in each dtype (about 10 s each)."""
    pytest.importorskip("triton")
    m = tiny(16, dtype == "float32")
    run_calls(Engine(m, backend="triton", dtype=dtype, channels_last=channels_last), m)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("streams", [False, True], ids=["nostreams", "streams"])
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
@pytest.mark.parametrize("dtype", ["float32", "fp16", "bf16"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_calls_match_float64(backend, dtype, graphs, streams):
    """`bridgegan parity --backends` compares translate only; here every call on the GPU
    (CUDA graphs: translate, reconstruct and translate_reference run graphed; streams: the
    region programs' three branches), the float64 reference on the CPU."""
    if backend == "triton":
        pytest.importorskip("triton")
    m = tiny(17, dtype == "float32")
    run_calls(Engine(m, backend=backend, dtype=dtype, device="cuda", cuda_graphs=graphs,
                     streams=streams), m)


def test_compile_float32_calls_match_float64(randomized):
    """The compile backend with inductor as it runs for users (one shape per stage per
    call kind; about 10 s on a CPU): translate with a region and SPADE interpolation
    (its decode of a LatentMix stays eager)."""
    pytest.importorskip("torch._inductor")
    torch._dynamo.reset()
    try:
        eng = Engine(randomized, backend="compile")
        cfg = randomized.config
        n, s = 2, cfg.image_size
        x, r1 = images(n, s, 60), images(n, s, 61)
        ys, yt = labels(n, cfg.n_attrs, 60), labels(n, cfg.n_attrs, 61)
        d = STRENGTH * (yt - ys)
        noise = torch.randn(n, cfg.noise_dim, generator=torch.Generator().manual_seed(6))
        m = half_mask(n, s)
        kw = dict(source=ys, strength=STRENGTH)
        check(eng.translate(x, yt, noise=noise, region=m, **kw),
              reference64(randomized, programs.translate_label, x, d, noise, m),
              torch.float32, "compile translate region")
        check(eng.interpolate(x, r1, yt, [0.3], noise=noise, level="spade", **kw),
              torch.stack(reference64(randomized, programs.interpolate, x, r1, d, noise, [0.3],
                                      "spade")), torch.float32, "compile interpolate spade")
    finally:
        torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not (find_spec("tensorrt") and torch.cuda.is_available()),
                    reason="the tensorrt backend needs tensorrt (TensorRT 10) and a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "fp16", "bf16"])
def test_tensorrt_engine_calls_match_float64(initial, dtype, tmp_path):
    """No other test runs Engine(backend="tensorrt"): every call through its stage plans
    (K = 2, regions, both interpolation levels, strips), the reference on the CPU."""
    try:
        eng = Engine(initial, backend="tensorrt", dtype=dtype, device="cuda",
                     onnx_dir=tmp_path / "onnx")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    run_calls(eng, initial)
