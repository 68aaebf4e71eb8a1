"""The compile backend compiles a bounded number of shapes however batch sizes vary."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from bridgegan.engine import Engine
from bridgegan.numerics import tolerance

from conftest import images


@pytest.fixture
def counted_compile(monkeypatch):
    """torch.compile with a backend that counts each stage's compilations and runs the
    captured graph as it is (no C++ compiler, seconds instead of minutes); dynamo's caches
    emptied before and after, since they live on the stage functions' code objects."""
    real = torch.compile
    compiled = Counter()

    def counting(fn, mode=None, dynamic=None):
        def backend(gm, example_inputs):
            compiled[fn.__name__] += 1
            return gm.forward
        return real(fn, backend=backend, dynamic=dynamic)

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", counting)
    yield compiled
    torch._dynamo.reset()


@pytest.mark.parametrize("channels_last", [False, True])
def test_varying_batch_sizes_compile_one_shape_per_bucket(small_model, counted_compile,
                                                          channels_last):
    """Batches of 5 to 8 rows share bucket 8: each stage is compiled once, not once per
    size (torch stops compiling a stage after 8 shapes, and runs every later shape
    uncompiled), reference-based calls included (their references reach the encoder
    flattened from a 5-D batch: in another layout they were another shape), and the
    padded rows do not reach the results."""
    eng = Engine(small_model, backend="compile", channels_last=channels_last)
    ref = Engine(small_model, backend="torch")
    atol = tolerance("float32").image_max_abs
    for n in (5, 6, 7, 8):
        x = images(n, 32, seed=n)
        got = eng.translate(x, {"Male": 1}, seed=n)
        assert got.shape == (n, 3, 32, 32)
        torch.testing.assert_close(got, ref.translate(x, {"Male": 1}, seed=n), atol=atol, rtol=0)
        refs = x.flip(0)
        torch.testing.assert_close(eng.translate_reference(x, refs),
                                   ref.translate_reference(x, refs), atol=atol, rtol=0)
    assert dict(counted_compile) == {"trunk": 1, "encode": 1, "map": 1, "decode": 1}


def test_batches_above_64_run_in_calls_of_64(small_model, counted_compile):
    """A batch of 150 runs each stage as 64 + 64 + 22 (bucket 32): two shapes, not a
    150-row one; every size above 64 reuses them (no shape per multiple of 64 that would
    pass torch's limit of 8)."""
    eng = Engine(small_model, backend="compile")
    ref = Engine(small_model, backend="torch")
    x = images(150, 32, seed=3)
    torch.testing.assert_close(eng.translate(x, {"Male": 1}, seed=4),
                               ref.translate(x, {"Male": 1}, seed=4),
                               atol=tolerance("float32").image_max_abs, rtol=0)
    assert dict(counted_compile) == {"trunk": 2, "encode": 2, "map": 2, "decode": 2}
    eng.translate(images(192, 32, seed=5), {"Male": 1}, seed=6)
    assert dict(counted_compile) == {"trunk": 2, "encode": 2, "map": 2, "decode": 2}


def test_each_engine_compiles_its_own_shapes(small_model, counted_compile):
    """torch stops compiling a function after 8 shapes, counted per code object: two
    engines of one process, five batch buckets each, have every shape compiled (with the
    stages' code shared, the second engine's last two ran uncompiled: 8 in all, not 10)."""
    for channels_last in (False, True):
        eng = Engine(small_model, backend="compile", channels_last=channels_last)
        for n in (1, 2, 3, 5, 9):  # buckets 1, 2, 4, 8, 16
            eng.translate(images(n, 32, seed=n), {"Male": 1}, seed=n)
    assert dict(counted_compile) == {"trunk": 10, "encode": 10, "map": 10, "decode": 10}


def test_a_build_folder_its_compiler_would_split_is_refused_at_build(tmp_path, monkeypatch):
    """inductor builds C++ under TMPDIR (or TORCHINDUCTOR_CACHE_DIR) and its compiler
    command line split a path with a space: the first call failed with a 12-line
    CppCompileError. The engine is refused at build, naming the folder and the fix."""
    import tempfile

    from bridgegan.engine import BackendUnavailable
    from bridgegan.reference import BridgeGAN

    from conftest import small_config

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "my temp"))
    model = BridgeGAN(small_config()).eval()
    with pytest.raises(BackendUnavailable, match=r"torch.compile builds its C\+\+ in "
                                                 r"'.*/my temp', which holds ' '.*set TMPDIR"):
        Engine(model, backend="compile")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "it's"))
    with pytest.raises(BackendUnavailable, match=r"which holds \"'\""):
        Engine(model, backend="compile")
