"""CUDA graph capture and replay for functions of fixed-shape tensors."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import torch

from ..kernels.layout import memory_format, next_pow2

_CAPTURE_STREAMS: dict[int, torch.cuda.Stream] = {}  # device index -> its capture stream
_ONE_CAPTURE = threading.Lock()  # torch: one capture at a time per process (any engine)
POW2_UP_TO = 64  # batches up to this run at the next power of two, larger ones at its multiple
MAX_ROWS = 256  # the most rows one engine program call runs; larger ones run in chunks


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """One capture stream per device (taken under ``_ONE_CAPTURE``). ``torch.cuda.graph``'s
    default is one stream per process, made on whichever device was current at the first
    capture: a capture for another GPU would switch to that device and capture nothing of
    this one's work."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPTURE_STREAMS:
        _CAPTURE_STREAMS[index] = torch.cuda.Stream(torch.device("cuda", index))
    return _CAPTURE_STREAMS[index]


class GraphMemory:
    """What CUDA graphs sharing one memory pool share: the pool (made at the first
    capture), the lock that serialises their replays on the host, and the event each
    replay waits for on the device (recorded after the last call's output copy, which may
    be queued on another stream, another thread's): their replays never overlap, so one
    graph's intermediates may land on another's buffers. An Engine's programs share one."""

    def __init__(self):
        self.lock = threading.Lock()
        self.done = torch.cuda.Event()
        self.pool = None


class CudaGraphed:
    """Calls ``fn(*tensors)`` through a CUDA graph captured once per input signature.

    A call's batch is padded to its bucket (``bucket``: the next power of two up to 64, the
    next multiple of 64 above): one graph serves every batch size of its bucket, so callers
    whose batches vary (a server's dynamic batcher forms any size up to its maximum) do not
    capture a graph per size, each capture costing two warm-up runs and a capture. The
    padded rows repeat the call's last row, or hold an earlier call's rows of the same
    bucket, and their outputs are dropped: ``fn`` must treat its samples independently (the
    engine's programs do: every norm is per sample). ``batch_dims`` names each argument's
    batch dimension (``fn``'s output has it first); ``device`` is the GPU the arguments are
    on. Callers bound the batch (the Engine: ``in_chunks`` of at most ``MAX_ROWS`` rows; a
    batch of 10,000 would capture a graph of 10,048 rows and keep its activations).

    Inputs are copied into static buffers and the static output's rows are copied out (as
    ``out_dtype``, default fn's: one copy where a clone then a cast would be two), so
    callers never see buffers a later replay overwrites. At most ``max_graphs`` signatures
    are kept, least recently used first out; the default keeps every bucket up to
    ``MAX_ROWS`` of two kinds of call (with a region and without: a server mixing them
    would otherwise capture anew on most calls). The graphs share one memory pool
    (``memory``, a ``GraphMemory``: given, with other CudaGraphed functions too), so their
    intermediates take about what the largest graph's need, not the sum (each keeps its
    own static inputs and output: the sum of its buckets' rows of those): one graph's
    intermediates may land on another's static output, which is safe because replays never
    overlap and each call's rows are copied out before the next replay. Callers that also
    run other CUDA work concurrently must serialise around captures themselves (the Engine
    does). A capture that fails (a cuDNN plan search inside it) raises a RuntimeError
    naming ``cuda_graphs=False``, with the caller's stream put back, and its signature is
    not captured again (later calls raise at once); running out of memory, in a warm-up or
    the capture, raises as it is and is not recorded (a later call may have the memory).
    """

    def __init__(self, fn: Callable[..., torch.Tensor], batch_dims: tuple[int, ...],
                 device: torch.device, warmup: int = 2, max_graphs: int | None = None,
                 out_dtype: torch.dtype | None = None, memory: GraphMemory | None = None):
        self.fn, self.batch_dims, self.device, self.out_dtype = fn, batch_dims, device, out_dtype
        self.warmup = warmup
        self.max_graphs = max_graphs or 2 * len({bucket(n) for n in range(1, MAX_ROWS + 1)})
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self.memory = memory or GraphMemory()
        self.failed: dict[tuple, str] = {}  # signatures whose capture failed: why

    def _capture(self, key: tuple, args: tuple[torch.Tensor, ...], rows: int):
        """Warm up on a side stream (errors, an out-of-memory one included, propagate as
        they are), then capture. A failed capture puts the caller's stream back
        (torch.cuda.graph leaves its capture stream current when ending the capture
        fails) and, unless memory ran out, records ``key`` as failed for good: such a
        capture may leave CUDA state behind, and every retry would warm up again."""
        static = [pad_rows(a, dim, rows) for a, dim in zip(args, self.batch_dims)]
        caller = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(caller)
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*static)
        caller.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self.memory.pool is None:
            self.memory.pool = torch.cuda.graph_pool_handle()
        try:
            with _ONE_CAPTURE, torch.cuda.graph(graph, pool=self.memory.pool,
                                                stream=capture_stream(self.device),
                                                capture_error_mode="thread_local"):
                out = self.fn(*static)
        except BaseException as exc:
            torch.cuda.set_stream(caller)
            if not isinstance(exc, Exception) or isinstance(exc, torch.cuda.OutOfMemoryError):
                raise
            self.failed[key] = (
                f"capturing the CUDA graph for these calls (a batch of {rows} rows with these "
                f"shapes and dtypes) failed ({type(exc).__name__}: {exc}); such calls cannot "
                f"run under CUDA graphs here: make the engine with cuda_graphs=False")
            raise RuntimeError(self.failed[key]) from exc
        return graph, static, out

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        n = args[0].shape[self.batch_dims[0]]
        rows = bucket(n)
        key = tuple((_shape(a, dim, rows), a.dtype, _format(a))
                    for a, dim in zip(args, self.batch_dims))
        with self.memory.lock, torch.cuda.device(self.device):
            stream = torch.cuda.current_stream()
            stream.wait_event(self.memory.done)  # a no-op until first recorded
            if key in self.failed:  # not tried again (``_capture``)
                raise RuntimeError(self.failed[key])
            if key not in self.graphs:
                self.graphs[key] = self._capture(key, args, rows)
                while len(self.graphs) > self.max_graphs:
                    self.graphs.popitem(last=False)
            self.graphs.move_to_end(key)
            graph, static, out = self.graphs[key]
            for s, a, dim in zip(static, args, self.batch_dims):
                s.narrow(dim, 0, n).copy_(a)
            graph.replay()
            result = out[:n].to(self.out_dtype or out.dtype, copy=True)
            self.memory.done.record(stream)
            return result


def bucket_floor(n: int) -> int:
    """The largest batch size ``bucket`` keeps (no padded rows) not above ``n`` >= 1."""
    return 1 << (n.bit_length() - 1) if n < POW2_UP_TO else n // POW2_UP_TO * POW2_UP_TO


def bucket(n: int) -> int:
    """The batch size a call of ``n`` rows runs at under CUDA graphs: the next power of two
    up to ``POW2_UP_TO``, above it the next multiple of it (at most 63 padded rows, where
    a power of two would nearly double a large batch's work and memory)."""
    return next_pow2(n) if n <= POW2_UP_TO else -(-n // POW2_UP_TO) * POW2_UP_TO


def in_chunks(fn: Callable, args, most: int, batch_dims: tuple[int, ...] | None = None):
    """``fn(*args)`` over chunks of at most ``most`` rows along each argument's batch
    dimension (``batch_dims``; default: every argument's first), the chunks' outputs (a
    tensor or a list of tensors, batch first) copied into one buffer each as they come:
    peak memory is the result and one chunk's output, not twice the result."""
    dims = batch_dims or (0,) * len(args)
    n = args[0].shape[dims[0]]
    if n <= most:
        return fn(*args)
    outs = None
    for i in range(0, n, most):
        got = fn(*(a.narrow(d, i, min(most, n - i)) for a, d in zip(args, dims)))
        parts = [got] if isinstance(got, torch.Tensor) else got
        if outs is None:
            outs = [torch.empty((n, *p.shape[1:]), dtype=p.dtype, device=p.device,
                                memory_format=_format(p)) for p in parts]
        for out, p in zip(outs, parts):
            out[i:i + len(p)].copy_(p)
    return outs[0] if isinstance(got, torch.Tensor) else outs


def _shape(a: torch.Tensor, dim: int, rows: int) -> tuple[int, ...]:
    return (*a.shape[:dim], rows, *a.shape[dim + 1:])


def _format(a: torch.Tensor) -> torch.memory_format:
    return memory_format(a) if a.dim() == 4 else torch.contiguous_format


def pad_rows(a: torch.Tensor, dim: int, rows: int) -> torch.Tensor:
    """A buffer of ``rows`` along ``dim`` in a's layout: a's rows, then its last repeated."""
    s = torch.empty(_shape(a, dim, rows), dtype=a.dtype, device=a.device,
                    memory_format=_format(a))
    n = a.shape[dim]
    s.narrow(dim, 0, n).copy_(a)
    s.narrow(dim, n, rows - n).copy_(a.narrow(dim, n - 1, 1))
    return s
