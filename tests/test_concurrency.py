"""One process, several threads: another thread's torch.compile or ONNX export must not
change an engine call's path, exports from two threads must not break each other, and
the process's warning filters, a PIL image the threads share and the kernels' first-call
decisions must come out as one thread at a time would leave them. No test here depends
on timing: threads are ordered with events."""
from __future__ import annotations

import threading
import warnings

import pytest
import torch

from bridgegan.engine import Engine
from bridgegan.engine.export import onnx_export
from bridgegan.engine.graph import InferenceGraph
from bridgegan.kernels import dispatch

from conftest import images, read_image


def _onnx_globals():
    try:
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:  # older torch
        from torch.onnx._globals import GLOBALS
    return GLOBALS


class _Probe:
    """One of the package's locks, saying when a second thread has to wait for it."""

    def __init__(self, lock):
        self.lock, self.waiting = lock, threading.Event()

    def __enter__(self):
        if not self.lock.acquire(blocking=False):
            self.waiting.set()
            self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()


def _hold_until(*events: threading.Event) -> None:
    """Wait until one of ``events`` is set (a minute at most: a hang guard, not a timing)."""
    for _ in range(6000):
        if any(e.wait(0.01) for e in events):
            return
    raise AssertionError("the other thread never came")


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

    probe = _Probe(onnx_export._EXPORT_LOCK)  # B blocks on the export lock
    monkeypatch.setattr(onnx_export, "_EXPORT_LOCK", probe)
    a_inside, b_done = threading.Event(), threading.Event()
    forward = onnx_export._Traced.forward

    def held_forward(self, *inputs):
        if threading.current_thread().name == "A" and not a_inside.is_set():
            a_inside.set()
            _hold_until(probe.waiting, b_done)
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


def test_an_export_and_an_image_load_overlapping_in_two_threads_leave_the_warning_filters(
        tmp_path):
    """Thread A's ONNX export silences the exporter's chatter and the main thread's image
    load PIL's size warning; A finishes while the load is open. The filters the program
    set stay as they were, and while either runs, no filter silences other warnings
    (warnings.catch_warnings in both left the export's "ignore everything" on for good)."""
    from PIL import Image

    from bridgegan.engine.export.names import OPSET
    from bridgegan.reference.data import image

    png = tmp_path / "face.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(png)

    def broad() -> list:  # filters added that would silence a warning of any other kind
        return [f for f in warnings.filters if f not in before and f[0] == "ignore"
                and f[1] is None and f[2] in (Warning, UserWarning, DeprecationWarning)]

    with warnings.catch_warnings():  # the test's own (one thread here): put back at the end
        warnings.simplefilter("default")
        warnings.filterwarnings("error", message="the program's own")
        before = list(warnings.filters)
        inside, may_leave, seen = threading.Event(), threading.Event(), []

        def export():
            with onnx_export._exporting(OPSET):
                seen.append(broad())
                inside.set()
                may_leave.wait()

        a = threading.Thread(target=export)
        a.start()
        inside.wait()
        with image._opened(str(png)):
            seen.append(broad())
            may_leave.set()
            a.join()
            seen.append(broad())
        assert seen == [[], [], []]
        assert warnings.filters == before


def test_a_lazily_opened_image_shared_by_threads_is_decoded_by_one_at_a_time(
        tmp_path, monkeypatch, small_model):
    """Pillow decodes a lazily opened image into the object itself, which two threads must
    not do at once (one shared by a service's workers gave "broken PNG" errors and wrong
    pixels): the engine's decodes take turns. The first decode is held until the other
    thread either waits for its turn or decodes too; both results are the image's."""
    from PIL import Image, PngImagePlugin

    from bridgegan.engine import io

    path = tmp_path / "ref.png"
    gen = torch.Generator().manual_seed(4)
    Image.fromarray(torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8,
                                  generator=gen).numpy()).save(path)
    eng = Engine(small_model, backend="torch")
    want = eng.load_images(read_image(path))
    shared = Image.open(path)
    probe, overlap, decodes, results = _Probe(io._PIL_FILL), threading.Event(), [], []
    monkeypatch.setattr(io, "_PIL_FILL", probe)
    load = PngImagePlugin.PngImageFile.load

    def watched(self):
        if self is shared and self.fp is not None:  # a decode (after it, no file is read)
            decodes.append(threading.current_thread().name)
            if len(decodes) == 1:
                _hold_until(probe.waiting, overlap)
            else:
                overlap.set()
        return load(self)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", watched)
    threads = [threading.Thread(target=lambda: results.append(eng.load_images(shared)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.close()
    assert len(decodes) == 1 and probe.waiting.is_set()
    assert len(results) == 2 and all(torch.equal(r, want) for r in results)


def test_a_shared_images_exif_is_read_by_one_thread_at_a_time(tmp_path, monkeypatch,
                                                              small_model):
    """Pillow parses an image's EXIF into the object when it is first read, marking it read
    before it is parsed: a second thread reading it meanwhile got none, and its image
    unrotated. The first parse is held until the other thread either waits for its turn or
    has its result; both results are the rotated image."""
    from PIL import Image

    from bridgegan.engine import io

    path = tmp_path / "turned.png"
    gen = torch.Generator().manual_seed(8)
    pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=gen).numpy()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated 90 degrees
    Image.fromarray(pixels).save(path, exif=exif)
    eng = Engine(small_model, backend="torch")
    want = eng.load_images(read_image(path))  # an image of its own
    assert not torch.equal(want, eng.load_images(Image.fromarray(pixels)))
    shared = Image.open(path)
    shared.load()
    probe, done, parses, results = _Probe(io._PIL_FILL), threading.Event(), [], []
    monkeypatch.setattr(io, "_PIL_FILL", probe)
    parse = Image.Exif.load

    def held(self, data):
        parses.append(threading.current_thread().name)
        if len(parses) == 1:
            _hold_until(probe.waiting, done)
        return parse(self, data)

    def call():
        results.append(eng.load_images(shared))
        done.set()

    monkeypatch.setattr(Image.Exif, "load", held)
    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shared.close()
    assert len(results) == 2 and all(torch.equal(r, want) for r in results)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                    reason="this torch build has no oneDNN (mkldnn): no fused CPU form to decide on")
def test_threads_meeting_a_new_convolution_decide_its_path_once(monkeypatch):
    """conv2d_relu decides per key whether its fused form is used (its first call there; on
    CUDA a timing of both forms): two threads whose first calls meet one key at once decide
    it once (on CUDA each would time under the other's load, and the later decision win).
    The first decision is held until the other thread either waits for it or decides too."""
    import torch.nn.functional as F

    from bridgegan.kernels import conv_act

    monkeypatch.setattr(conv_act, "_USE_FUSED", {})
    probe, overlap = _Probe(conv_act._DECIDING), threading.Event()
    monkeypatch.setattr(conv_act, "_DECIDING", probe)
    real, entered = conv_act._first_call, []

    def first_call(fused, plain):
        entered.append(threading.current_thread().name)
        if len(entered) == 1:
            _hold_until(probe.waiting, overlap)
        else:
            overlap.set()
        return real(fused, plain)

    monkeypatch.setattr(conv_act, "_first_call", first_call)
    gen = torch.Generator().manual_seed(6)
    x, w, b = (torch.randn(shape, generator=gen) for shape in ((2, 8, 12, 12), (16, 8, 3, 3),
                                                                (16,)))
    outs = []
    threads = [threading.Thread(target=lambda: outs.append(conv_act.conv2d_relu(x, w, b, 1, 1)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(entered) == 1 and probe.waiting.is_set() and len(conv_act._USE_FUSED) == 1
    want = F.relu(F.conv2d(x.double(), w.double(), b.double(), 1, 1)).float()
    assert len(outs) == 2 and all(torch.allclose(o, want, rtol=1e-4, atol=1e-5) for o in outs)
