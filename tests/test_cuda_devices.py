"""Which device's streams the CUDA-only engine code orders and captures on, with
torch.cuda faked (so this runs without a GPU): an engine on cuda:1 called while the
caller's current device is 0."""
from __future__ import annotations

import contextlib
import functools
from types import SimpleNamespace

import pytest
import torch

from bridgegan.engine import Engine, cudagraphs
from bridgegan.engine.streams import Concurrent
from bridgegan.numerics import tolerance
from bridgegan.reference import BridgeGAN, programs
from conftest import images, labels, randomize, small_config

ATOL = tolerance("float32").image_max_abs


class FakeCuda:
    """Per-device current streams and a current device, as torch.cuda keeps them."""

    def __init__(self, monkeypatch, current_device: int = 0):
        self.current_device = current_device
        self.log: list[tuple] = []
        cuda = self

        class Stream:
            def __init__(self, device=None, priority=0):
                d = torch.device(device) if device is not None else None
                self.index = d.index if d is not None and d.index is not None \
                    else cuda.current_device
                self.name = f"side{len(cuda.made)}@{self.index}"
                cuda.made.append(self)

            def wait_stream(self, other):
                cuda.log.append(("wait", self.name, other.name))

            def __repr__(self):
                return self.name

        self.made: list = []
        self.Stream = Stream
        self.current = {i: SimpleNamespace(name=f"main@{i}", index=i,
                                           wait_stream=self._waiter(f"main@{i}"))
                        for i in (0, 1)}

        @contextlib.contextmanager
        def device(d):
            d = torch.device(d) if not isinstance(d, int) else torch.device("cuda", d)
            index = d.index if d.type == "cuda" and d.index is not None else self.current_device
            previous, self.current_device = self.current_device, index
            try:
                yield
            finally:
                self.current_device = previous

        @contextlib.contextmanager
        def stream(s):
            previous = self.current[s.index]
            self.current[s.index] = s
            try:
                yield
            finally:
                self.current[s.index] = previous

        def current_stream(device=None):
            d = None if device is None else torch.device(device)
            index = d.index if d is not None and d.index is not None else self.current_device
            return self.current[index]

        def set_stream(s):
            self.current[s.index] = s

        for name, value in (("Stream", Stream), ("device", device), ("stream", stream),
                            ("current_stream", current_stream), ("set_stream", set_stream),
                            ("current_device", lambda: self.current_device),
                            ("is_current_stream_capturing", lambda: False)):
            monkeypatch.setattr(torch.cuda, name, value)
        monkeypatch.setattr(torch.Tensor, "record_stream",
                            lambda t, s: self.log.append(("record", s.name)))

    def _waiter(self, name):
        return lambda other: self.log.append(("wait", name, other.name))


def test_streams_fork_and_join_the_engine_devices_stream(monkeypatch):
    cuda = FakeCuda(monkeypatch, current_device=0)
    stages = SimpleNamespace(trunk=None, encode=None, map=None, decode=None)
    branched = Concurrent(stages, torch.device("cuda", 1))
    ran_on = []

    def thunk():
        ran_on.append(torch.cuda.current_stream(torch.device("cuda", 1)).name)
        return torch.zeros(1)

    branched.concurrent([thunk, thunk, thunk])
    sides = [s.name for s in branched.streams]
    assert sides == ["side0@1", "side1@1"]
    # each side stream waits for cuda:1's current stream, which then waits for both
    assert cuda.log[:4] == [("wait", "side0@1", "main@1"), ("wait", "side1@1", "main@1"),
                            ("wait", "main@1", "side0@1"), ("wait", "main@1", "side1@1")]
    assert ran_on == ["side0@1", "side1@1", "main@1"]
    assert cuda.log[4:] == [("record", "main@1")] * 2
    assert cuda.current_device == 0  # the caller's device is left as it was


def test_streams_are_joined_when_a_branch_raises(monkeypatch):
    """A branch that raises (an out-of-memory error) still has the current stream wait for
    the side streams already forked: their kernels may read inputs whose memory the
    current stream frees next."""
    cuda = FakeCuda(monkeypatch, current_device=0)
    stages = SimpleNamespace(trunk=None, encode=None, map=None, decode=None)
    branched = Concurrent(stages, torch.device("cuda", 1))

    def failing():
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        branched.concurrent([lambda: torch.zeros(1), lambda: torch.zeros(1), failing])
    assert cuda.log == [("wait", "side0@1", "main@1"), ("wait", "side1@1", "main@1"),
                        ("wait", "main@1", "side0@1"), ("wait", "main@1", "side1@1")]


def test_capture_streams_are_per_device(monkeypatch):
    FakeCuda(monkeypatch, current_device=0)
    monkeypatch.setattr(cudagraphs, "_CAPTURE_STREAMS", {})
    one = cudagraphs.capture_stream(torch.device("cuda", 1))
    zero = cudagraphs.capture_stream(torch.device("cuda", 0))
    assert (one.index, zero.index) == (1, 0)
    assert cudagraphs.capture_stream(torch.device("cuda", 1)) is one
    assert cudagraphs.capture_stream(torch.device("cuda")) is zero  # the current device


class ReplayedGraphs:
    """torch.cuda.graph and CUDAGraph stand-ins on the CPU: a capture records the call of
    ``wrap(fn)`` made inside it, and a replay makes that call again into the captured
    output (what a real replay computes), with FakeCuda's streams and no-op events."""

    def __init__(self, monkeypatch, cuda: FakeCuda):
        self.capturing, self.streams, self.pools = None, [], []

        class Graph:
            def replay(self):
                self.call()

        @contextlib.contextmanager
        def graph(g, pool=None, stream=None, capture_error_mode="global"):
            self.streams.append(stream)
            self.pools.append(pool)
            self.capturing = g
            try:
                yield
            finally:
                self.capturing = None

        self.Graph = Graph
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "graph_pool_handle", object)
        monkeypatch.setattr(torch.cuda, "Event", lambda *a, **k: SimpleNamespace(
            record=lambda stream=None: None))
        for s in cuda.current.values():
            s.wait_event = lambda event: None
        cuda.Stream.wait_event = lambda self, event: None
        monkeypatch.setattr(cudagraphs, "_CAPTURE_STREAMS", {})

    def wrap(self, fn):
        def call(*args):
            out = fn(*args)
            if self.capturing is not None:
                self.capturing.call = lambda: out.copy_(fn(*args))
            return out
        return call


def test_cuda_graphed_serves_a_bucket_of_batch_sizes(monkeypatch):
    """Batches of 3 and 4 run the engine's programs (with the engine's batch dimensions;
    three noise samples per source in translate_samples) through one graph captured at 4
    on the capture stream of the engine's GPU (cuda:1, the caller's current device being
    0), and give what the programs give eagerly: the padded row is dropped, and a later
    call of 3 does not see an earlier call's 4th row."""
    cuda = FakeCuda(monkeypatch, current_device=0)
    fake = ReplayedGraphs(monkeypatch, cuda)
    cfg = small_config(32)
    eng = Engine(randomize(BridgeGAN(cfg), seed=30).eval())
    label = functools.partial(programs.translate_label, eng.stages)
    reference = functools.partial(programs.translate_reference, eng.stages)
    gpu = torch.device("cuda", 1)
    graphed_label = cudagraphs.CudaGraphed(fake.wrap(label), programs.LABEL_BATCH_DIMS, gpu)
    graphed_reference = cudagraphs.CudaGraphed(fake.wrap(reference),
                                               programs.REFERENCE_BATCH_DIMS, gpu)
    samples = functools.partial(programs.translate_samples, eng.stages, repeat=eng._repeat)
    graphed_samples = cudagraphs.CudaGraphed(fake.wrap(samples), programs.SAMPLES_BATCH_DIMS,
                                             gpu)
    x, refs = images(5, cfg.image_size, 31), images(10, cfg.image_size, 32)
    refs = refs.reshape(2, 5, *refs.shape[1:])  # two references per source
    d = 1 - 2 * labels(5, cfg.n_attrs, 33)
    r = torch.randn(5, cfg.noise_dim, generator=torch.Generator().manual_seed(34))
    r3 = torch.randn(5, 3, cfg.noise_dim, generator=torch.Generator().manual_seed(36))
    m = torch.rand(5, 1, cfg.image_size, cfg.image_size,
                   generator=torch.Generator().manual_seed(35))
    with torch.no_grad():
        for rows in (slice(0, 4), slice(1, 4), slice(0, 3), slice(2, 5)):
            assert (graphed_label(x[rows], d[rows], r[rows])
                    - label(x[rows], d[rows], r[rows])).abs().max() <= ATOL
            args = (x[rows], refs[:, rows], d[rows], m[rows])
            assert (graphed_reference(*args) - reference(*args)).abs().max() <= ATOL
            args = (x[rows], d[rows], r3[rows])
            assert (graphed_samples(*args) - samples(*args)).abs().max() <= ATOL
    assert len(graphed_label.graphs) == len(graphed_reference.graphs) == 1
    assert len(graphed_samples.graphs) == 1
    assert [s.index for s in fake.streams] == [1, 1, 1] and cuda.current_device == 0
    sizes = (1, 2, 3, 4, 5, 8, 9, 33, 64, 65, 128, 129, 256)
    assert [cudagraphs.bucket(b) for b in sizes] == [1, 2, 4, 4, 8, 8, 16, 64, 64, 128,
                                                     128, 192, 256]


def test_a_failed_capture_restores_the_callers_stream_and_is_not_retried(monkeypatch):
    """A capture that fails (a cuDNN plan search inside it) ends with torch.cuda.graph's
    capture stream still current; the caller's stream is put back and the error names the
    remedy. Later calls of that signature fail at once, with no warm-up or capture again;
    other signatures still capture. Running out of memory, in a warm-up or in the
    capture, raises as it is and is tried again by the next call."""
    cuda = FakeCuda(monkeypatch, current_device=0)
    fake = ReplayedGraphs(monkeypatch, cuda)
    fail_at = {4: RuntimeError("CUDA error: operation not permitted when stream is capturing")}

    @contextlib.contextmanager
    def graph(g, pool=None, stream=None, capture_error_mode="global"):
        cuda.current[stream.index] = stream  # what torch.cuda.graph's stream context does
        fake.capturing = g
        yield
        fake.capturing = None
        if rows[-1] in fail_at:  # capture_end raised: the stream context is not left
            raise fail_at.pop(rows[-1])
        cuda.current[stream.index] = main

    monkeypatch.setattr(torch.cuda, "graph", graph)
    rows, warmup_oom = [], []

    def double(x):
        rows.append(len(x))
        if warmup_oom:
            raise warmup_oom.pop()
        return x * 2

    gpu = torch.device("cuda", 1)
    main = cuda.current[1]
    graphed = cudagraphs.CudaGraphed(fake.wrap(double), (0,), gpu)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(40))
    for _ in range(2):
        with pytest.raises(RuntimeError, match=r"capturing the CUDA graph for these calls \(a "
                                               r"batch of 4 rows with these shapes and dtypes\)"
                                               r" failed \(RuntimeError: CUDA error: .*\); "
                                               r"such calls .*cuda_graphs=False"):
            graphed(x[:3])
        assert cuda.current[1] is main and cuda.current_device == 0
    assert rows == [4, 4, 4]  # two warm-ups and one capture, once
    assert torch.equal(graphed(x[:2]), x[:2] * 2) and len(graphed.graphs) == 1
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory")
    warmup_oom.append(oom)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # in a warm-up: as it is
        graphed(x[:1])
    y = torch.randn(6, 3, generator=torch.Generator().manual_seed(42))
    fail_at[8] = oom
    with pytest.raises(torch.cuda.OutOfMemoryError):  # in the capture: as it is
        graphed(y)
    assert cuda.current[1] is main and len(graphed.failed) == 1  # the first failure only
    assert torch.equal(graphed(x[:1]), x[:1] * 2)  # tried again, and captured
    assert torch.equal(graphed(y), y * 2) and len(graphed.graphs) == 3


def test_functions_given_one_graph_memory_share_its_pool_and_replays(monkeypatch):
    """An Engine's programs share one GraphMemory: their graphs are captured into one pool
    (intermediates of about the largest graph's size, not one pool per program) and their
    replays are serialised by one lock and one event; calls alternating between them each
    give what their function gives eagerly, their results copied out before the other's
    replay overwrites the shared memory."""
    cuda = FakeCuda(monkeypatch, current_device=0)
    fake = ReplayedGraphs(monkeypatch, cuda)
    gpu = torch.device("cuda", 1)
    memory = cudagraphs.GraphMemory()

    def scribbled(fn):  # a replay's intermediates land on every graph's buffers (one pool)
        def run(x):
            for g in graphed:
                for _, _, out in g.graphs.values():
                    out.fill_(float("nan"))
            return fn(x)
        return run

    graphed = [cudagraphs.CudaGraphed(fake.wrap(scribbled(f)), (0,), gpu, memory=memory)
               for f in (lambda x: x * 2, lambda x: x * x)]
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(41))
    for rows in (slice(0, 3), slice(1, 5), slice(2, 4)) * 2:
        doubled = graphed[0](x[rows])
        squared = graphed[1](x[rows])  # its replay scribbles on the first one's buffers
        assert torch.equal(doubled, x[rows] * 2) and torch.equal(squared, x[rows] ** 2)
    assert len(fake.pools) == 4 and all(p is fake.pools[0] is memory.pool for p in fake.pools)
    assert graphed[0].memory is graphed[1].memory


def test_cuda_graphed_copies_its_output_out_as_the_dtype_asked(monkeypatch):
    """A bfloat16 program's rows come out as float32 (the engine's results) in the one
    copy that frees them from the static buffer, equal to the eager cast."""
    cuda = FakeCuda(monkeypatch, current_device=0)
    fake = ReplayedGraphs(monkeypatch, cuda)
    def half(x):
        return (x * 1.5).to(torch.bfloat16)
    graphed = cudagraphs.CudaGraphed(fake.wrap(half), (0,), torch.device("cuda", 0),
                                     out_dtype=torch.float32)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(36))
    out = graphed(x)
    assert out.dtype == torch.float32 and torch.equal(out, half(x).float())
    assert graphed.graphs[next(iter(graphed.graphs))][2].dtype == torch.bfloat16


def test_chunked_cuda_graphs_run_a_large_call_as_several(monkeypatch):
    """In chunks (as the Engine runs its graphs), a call of more rows than ``most`` runs as
    calls of at most that many (10 rows at 4: 4, 4, 2), each through its bucket's graph,
    with the eager result; the graphs hold at most ``most`` rows (a huge batch would
    otherwise capture a huge graph)."""
    cuda = FakeCuda(monkeypatch, current_device=0)
    fake = ReplayedGraphs(monkeypatch, cuda)
    def scaled(x, r):
        return x * 2 + r.sum(-1)[:, None]
    graphed = cudagraphs.CudaGraphed(fake.wrap(scaled), (0, 0), torch.device("cuda", 0))
    g = torch.Generator().manual_seed(37)
    x, r = torch.randn(10, 5, generator=g), torch.randn(10, 3, generator=g)
    assert torch.equal(cudagraphs.in_chunks(graphed, (x, r), 4, (0, 0)), scaled(x, r))
    assert sorted(key[0][0][0] for key in graphed.graphs) == [2, 4]


def test_cuda_graphs_of_every_bucket_with_and_without_region_stay_captured(monkeypatch):
    """A server's mix (every batch size up to MAX_ROWS, with a region and without) captures
    each bucket of each kind once and replays it after (with 8 graphs kept, most calls of
    such a mix captured anew); every capture shares one memory pool."""
    cuda = FakeCuda(monkeypatch, current_device=0)
    fake = ReplayedGraphs(monkeypatch, cuda)
    def scaled(x, region=None):
        return x * 2 if region is None else x * region
    graphed = cudagraphs.CudaGraphed(fake.wrap(scaled), (0, 0), torch.device("cuda", 0))
    x = torch.randn(cudagraphs.MAX_ROWS, 3, generator=torch.Generator().manual_seed(38))
    sizes = [*range(1, 9), 64, 65, 200, cudagraphs.MAX_ROWS]
    for _ in range(2):
        for n in sizes:
            assert torch.equal(graphed(x[:n]), x[:n] * 2)
            assert torch.equal(graphed(x[:n], x[:n]), x[:n] ** 2)
    kinds = 2 * len({cudagraphs.bucket(n) for n in sizes})
    assert len(fake.pools) == len(graphed.graphs) == kinds  # no capture in the second round
    assert fake.pools[0] is not None and all(p is fake.pools[0] for p in fake.pools)
