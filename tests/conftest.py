"""Shared fixtures: small seeded configurations and models."""
from __future__ import annotations

import gc
import importlib.util
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bridgegan.numerics import errors, same_nonfinite, tolerance
from bridgegan.reference import BridgeGAN, BridgeGANConfig

SMALL_ATTRS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young", "Bangs")


def benchmark_script(name: str):
    """benchmarks/NAME.py as a module (the scripts are not part of the package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_config(size: int = 32, **kw) -> BridgeGANConfig:
    """A narrow configuration with the paper's structure, fast on a CPU."""
    base = dict(image_size=size, attributes=SMALL_ATTRS, g_width=8, g_downs=3, e_width=4,
                e_blocks=1, latent_channels=8, spade_hidden=16, mapping_channels=16,
                noise_dim=8, d_width=4, d_downs=3 if size < 64 else 4)
    base.update(kw)
    return BridgeGANConfig(**base)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter (norm scales/shifts start at 1/0) so tests see all paths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="session", autouse=True)
def _temporary_export_cache(tmp_path_factory):
    """ONNX exports (and anything else cached) go to a folder of this test session, never
    to the user's ~/.cache/bridgegan; subprocesses inherit it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRIDGEGAN_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def _warm_up_convolutions():
    """With several threads, oneDNN's first convolution calls in a process can differ from
    later identical calls in the last bits; tests that compare runs bit for bit must not
    see them, so run the model once first."""
    torch.manual_seed(12345)
    m = BridgeGAN(small_config()).eval()
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        m.translate(x, torch.zeros(2, 6), torch.ones(2, 6))


@pytest.fixture
def poisoned_alloc(monkeypatch):
    """torch.empty / empty_like return NaN-filled buffers: a kernel that forgets to write
    an element (an output, or the norm's split-path partial statistics) shows up as NaN."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(real_empty_like(*a, **k)))


@pytest.fixture
def small_model() -> BridgeGAN:
    torch.manual_seed(0)
    return randomize(BridgeGAN(small_config())).eval()


@pytest.fixture
def faces_with_a_corrupt_image(tmp_path) -> Path:
    """A folder dataset (attributes.csv, Black_Hair and Male) of eight seeded 40 px faces
    whose 5.png cannot be decoded."""
    from PIL import Image

    root = tmp_path / "faces"
    root.mkdir()
    rows = ["filename,Black_Hair,Male"]
    gen = torch.Generator().manual_seed(5)
    for i in range(8):
        pixels = torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8, generator=gen)
        Image.fromarray(pixels.numpy()).save(root / f"{i}.png")
        rows.append(f"{i}.png,{i % 2},{(i // 2) % 2}")
    (root / "attributes.csv").write_text("\n".join(rows) + "\n")
    (root / "5.png").write_bytes(b"not a png")
    return root


def stops_without_gc(call) -> tuple[object, bool]:
    """``call()``'s result, and whether every child process it started (data-loader workers)
    has ended when it returns. The garbage collector is off meanwhile: what a reference
    cycle keeps alive stays, as it may until exit. The wait for an ended child is a hang
    guard (one that misses torch's 5 s join is terminated, then reaped here)."""
    before, collecting = set(multiprocessing.active_children()), gc.isenabled()
    gc.disable()
    try:
        result = call()
        deadline = time.monotonic() + 60
        while set(multiprocessing.active_children()) - before:
            if time.monotonic() > deadline:
                return result, False
            time.sleep(0.05)
        return result, True
    finally:
        if collecting:
            gc.enable()


def read_image(path):
    """The image file at ``path`` decoded, its file closed (an ``Image.open`` left open
    holds the file until the image is collected, a ResourceWarning)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
    return im


def assert_close(out, ref, dtype):
    """One op's result against its float64 reference: the same NaN/Inf pattern, finite
    values within the dtype's single-op tolerances (``numerics.TOLERANCES``)."""
    assert same_nonfinite(out, ref), "NaN/Inf pattern differs from the reference"
    max_abs, rel = errors(out, ref)
    tol = tolerance(dtype)
    assert max_abs <= tol.op_max_abs, f"max abs err {max_abs:.3e} > {tol.op_max_abs:.0e} ({dtype})"
    assert rel <= tol.op_rel, f"relative err {rel:.3e} > {tol.op_rel:.0e} ({dtype})"


def dead_pid() -> int:
    """The process id of a process that has exited (and been waited for)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def images(n: int, size: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 2 - 1).to(dtype)


def labels(n: int, a: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randint(0, 2, (n, a), generator=g).float()
