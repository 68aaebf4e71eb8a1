"""pytest-benchmark suites: the fused kernels, the generator, and the translation pipeline.

    python -m pytest benchmarks/test_speed.py --benchmark-only [--benchmark-json out.json]

Runs on CUDA when available (Triton kernels, fp16), else on the CPU (the kernels' torch
ops, impl="torch", float32, smaller shapes). Speed is recorded here, never asserted; correctness lives in
tests/. Each benchmark carries the device in ``extra_info``. Every benchmark makes its first
call (Triton's compilation and autotuning, cuDNN's algorithm search) and WARMUP more before
its ROUNDS timed ones (pytest-benchmark's own warm-up is off on CPython, and its calibration
would otherwise size the rounds by the compiling call); on CUDA the kernel benchmarks
clear the L2 cache before each timed call (outside it, as ``bridgegan.timing`` and
``triton.testing.do_bench`` do), so that a kernel whose inputs fit in L2 (C256x16x16 at
batch 64: 32 MiB with its output) is not timed reading them from the cache.
"""
from __future__ import annotations

import pytest
import torch

from bridgegan.engine import Engine, InferenceGraph
from bridgegan.engine.machine import environment
from bridgegan.kernels import spade_modulate
from bridgegan.reference import BridgeGAN, BridgeGANConfig
from bridgegan.timing import L2_FLUSH_BYTES, synchronize

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.float16 if CUDA else torch.float32
IMPL = "triton" if CUDA else "torch"
BATCH = 64 if CUDA else 2
WARMUP, ROUNDS = 3, (50 if CUDA else 5)


def _sync():
    synchronize(DEVICE)


def _bench(benchmark, fn, flush_l2: bool = False):
    """``fn`` timed ROUNDS times (each call synchronised) after its first call and WARMUP
    more; ``flush_l2``: on CUDA, the L2 cache cleared before each timed call, untimed."""
    fn()
    _sync()
    flush = (torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=DEVICE)
             if flush_l2 and CUDA else None)

    def setup():
        if flush is not None:
            flush.zero_()
            _sync()

    benchmark.extra_info.update(warmup_rounds=WARMUP, l2_flushed=flush is not None)
    benchmark.pedantic(lambda: (fn(), _sync()), setup=setup, rounds=ROUNDS,
                       warmup_rounds=WARMUP, iterations=1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BridgeGAN(BridgeGANConfig.paper()).eval()


@pytest.fixture(autouse=True)
def _device_info(benchmark):
    benchmark.extra_info.update(environment(DEVICE))


@pytest.mark.parametrize("shape", [(256, 16), (128, 32), (64, 64), (32, 128)],
                         ids=lambda s: f"C{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", [IMPL, "eager"])
def test_kernel_spade_modulate(benchmark, shape, impl):
    c, s = shape
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x, gamma, beta = (torch.randn(BATCH, c, s, s, device=DEVICE, generator=g).to(DTYPE)
                      for _ in range(3))
    if impl == "eager":
        fn = lambda: torch.relu(torch.nn.functional.instance_norm(x) * (1 + gamma) + beta)  # noqa: E731
    else:
        fn = lambda: spade_modulate(x, gamma, beta, act="relu", impl=impl)  # noqa: E731
    benchmark.group = f"kernel {c}@{s}x{s}"
    _bench(benchmark, fn, flush_l2=True)


@pytest.mark.parametrize("which", ["reference", "rewritten"])
def test_generator(benchmark, model, which):
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(BATCH, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1)
    s = torch.rand(BATCH, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g)
    x, s = x.to(DEVICE, DTYPE), s.to(DEVICE, DTYPE)
    net = (model.generator if which == "reference" else InferenceGraph(model, impl=IMPL))
    net = net.to(DEVICE, DTYPE).eval()
    benchmark.group = "generator"
    with torch.inference_mode():
        _bench(benchmark, lambda: net(x, s))


@pytest.mark.parametrize("backend", ["reference", "torch"] + (["triton"] if CUDA else []))
def test_pipeline_translate(benchmark, model, backend):
    eng = Engine(model, backend=backend, dtype=DTYPE, device=DEVICE)
    cfg = model.config
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(BATCH, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1).to(DEVICE)
    ys = torch.randint(0, 2, (BATCH, cfg.n_attrs), generator=g).float()
    benchmark.group = "pipeline translate"
    _bench(benchmark, lambda: eng.translate(x, 1 - ys, source=ys, seed=0))
