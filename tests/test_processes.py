"""Several processes: workers forked from a process that has run an engine (gunicorn
--preload, a fork Pool), and engines pickled or copied for another process."""
from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from bridgegan.engine import Engine
from bridgegan.engine.backends import BackendUnavailable
from conftest import images

# The parent runs an engine on two threads, then a forked child calls it: before the
# fork guard, the child hung at its first parallel op (GNU OpenMP after a fork), so the
# child has an alarm and the result says how it ended.
FORKED_CALL = textwrap.dedent("""
    import os, signal, sys, torch
    from bridgegan.engine import Engine
    from bridgegan.numerics import errors, psnr, tolerance
    from bridgegan.reference.checkpoint import SHIPPED

    torch.set_num_threads(2)
    backend, batch = sys.argv[1], int(sys.argv[2])
    eng = Engine.from_checkpoint(SHIPPED, backend=backend)
    x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    want = eng.translate(x, {"Smiling": 1}, seed=0)
    pid = os.fork()
    if pid == 0:
        try:
            signal.alarm(60)
            out = eng.translate(x, {"Smiling": 1}, seed=0)
            max_abs, _ = errors(out, want)
            ok = tolerance(torch.float32).image_ok(max_abs, psnr(out, want).min().item())
            os._exit(0 if ok and torch.get_num_threads() == 1 else 3)
        finally:
            os._exit(4)
    print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
""")


@pytest.mark.parametrize("backend, batch", [("torch", 4), ("onnxruntime", 16)])
def test_a_worker_forked_after_engine_calls_runs_them_on_one_thread(backend, batch):
    """A child forked from a process whose torch ran threads completes its engine calls
    (one thread, the parent's results) and is told why it runs one thread."""
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime")
    run = subprocess.run([sys.executable, "-c", FORKED_CALL, backend, str(batch)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["child", "0"], (run.stdout, run.stderr)  # -14: it hung
    assert "torch runs one thread here" in run.stderr


def test_engines_pickle_where_they_can_and_say_why_where_they_cannot(small_model):
    """torch: pickled and copied with the same results; an engine holding sessions (or
    compiled code, captured graphs) refuses with what to do instead, not an error about
    some object inside it."""
    x = images(2, small_model.config.image_size, seed=3)
    eng = Engine(small_model, backend="torch")
    want = eng.translate(x, {"Male": 1}, seed=0)
    for twin in (pickle.loads(pickle.dumps(eng)), copy.deepcopy(eng)):
        assert torch.equal(twin.translate(x, {"Male": 1}, seed=0), want)
    try:
        held = Engine(small_model, backend="onnxruntime")
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    for copier in (pickle.dumps, copy.deepcopy):
        with pytest.raises(TypeError, match="onnxruntime backend cannot be pickled or copied; "
                                            "build one in each process"):
            copier(held)
    eng.streams = True  # as on CUDA with streams=True: it holds CUDA streams
    with pytest.raises(TypeError, match="torch backend with side streams cannot be pickled"):
        pickle.dumps(eng)
