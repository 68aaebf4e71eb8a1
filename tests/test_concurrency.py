"""One process, several threads: another thread's torch.compile or ONNX export must not
change an engine call's path, and exports from two threads must not break each other.
No test here depends on timing: threads are ordered with events."""
from __future__ import annotations

import threading

import pytest
import torch

from bridgegan.engine import Engine
from bridgegan.engine.export import onnx_export
from bridgegan.engine.graph import InferenceGraph
from bridgegan.kernels import dispatch

from conftest import images


def _onnx_globals():
    try:
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:  # older torch
        from torch.onnx._globals import GLOBALS
    return GLOBALS


def test_another_threads_compile_or_export_leaves_engine_calls_alone(monkeypatch, small_model):
    """torch.compile and the TorchScript ONNX exporter set process-wide flags for their
    whole length (torch.compiler.is_compiling(), torch.onnx.is_in_onnx_export()); a
    thread that is neither compiling nor exporting must not read them as its own: its
    ops keep their fused paths and its results stay those of a quiet process."""
    eng = Engine(small_model, backend="torch")
    x = images(2, 32, seed=3)
    eng.translate(x, {"Male": 1}, seed=0)  # oneDNN's first calls may differ in the last bits
    quiet = eng.translate(x, {"Male": 1}, seed=0)
    # what another thread's compile / export holds set while this thread calls the engine
    monkeypatch.setattr(torch.compiler, "_is_compiling_flag", True)
    monkeypatch.setattr(_onnx_globals(), "in_onnx_export", True)
    seen = []

    def call():
        seen.append((dispatch.tracing(), eng.translate(x, {"Male": 1}, seed=0)))

    t = threading.Thread(target=call)
    t.start()
    t.join()
    (traced, busy), = seen
    assert not traced
    assert torch.equal(busy, quiet)


def test_tracing_still_sees_torch_compile():
    """Under TorchDynamo the ops take their plain torch path (is_dynamo_compiling)."""
    fn = torch.compile(lambda t: t + 1 if dispatch.tracing() else t - 1, backend="eager",
                       fullgraph=True)
    assert torch.equal(fn(torch.zeros(2)), torch.ones(2))
    assert not dispatch.tracing()


def test_exports_from_two_threads(monkeypatch, small_model):
    """Two threads exporting at once (two onnxruntime engines of two models being built):
    the TorchScript exporter's process-wide state (GLOBALS.in_onnx_export, which it
    asserts, the symbolic registry) and warnings.catch_warnings must see one export at a
    time. Thread A is held inside its trace until thread B has either finished its export
    (no lock: B ran inside A's export) or is waiting for A's (the lock)."""
    pytest.importorskip("onnx")
    graph = InferenceGraph(small_model).eval()
    expected = onnx_export.export_graph(graph, "map").SerializeToString()

    lock = onnx_export._EXPORT_LOCK
    waiting = threading.Event()  # B blocks on the export lock

    class Probe:
        """The export lock, saying when a second export has to wait for it."""

        def __enter__(self):
            if not lock.acquire(blocking=False):
                waiting.set()
                lock.acquire()

        def __exit__(self, *exc):
            lock.release()

    monkeypatch.setattr(onnx_export, "_EXPORT_LOCK", Probe())
    a_inside, b_done = threading.Event(), threading.Event()
    forward = onnx_export._Traced.forward

    def held_forward(self, *inputs):
        if threading.current_thread().name == "A" and not a_inside.is_set():
            a_inside.set()
            while not (waiting.wait(0.01) or b_done.is_set()):
                pass
        return forward(self, *inputs)

    monkeypatch.setattr(onnx_export._Traced, "forward", held_forward)
    results, errors = {}, {}

    def export(name):
        try:
            results[name] = onnx_export.export_graph(graph, "map").SerializeToString()
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors[name] = exc
        finally:
            if name == "B":
                b_done.set()

    a = threading.Thread(target=export, args=("A",), name="A")
    a.start()
    a_inside.wait()
    b = threading.Thread(target=export, args=("B",), name="B")
    b.start()
    a.join()
    b.join()
    assert not errors, errors
    assert results == {"A": expected, "B": expected}
