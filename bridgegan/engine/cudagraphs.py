"""CUDA graph capture and replay for functions of fixed-shape tensors."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import torch


class CudaGraphed:
    """Calls ``fn(*tensors)`` through a CUDA graph captured once per input signature.

    Inputs are copied into static buffers and the static output is cloned, so callers
    never see buffers a later replay overwrites. At most ``max_graphs`` signatures are
    kept (least recently used first out), each holding its own memory pool. The lock
    serialises replays of the shared buffers on the host, and on the device each call waits
    for the previous one, which may be queued on another stream (another thread's); callers
    that also run other CUDA work concurrently must serialise around captures themselves
    (the Engine does).
    """

    def __init__(self, fn: Callable[..., torch.Tensor], warmup: int = 2, max_graphs: int = 8):
        self.fn, self.warmup, self.max_graphs = fn, warmup, max_graphs
        self.graphs: OrderedDict[tuple, tuple] = OrderedDict()
        self.lock = threading.Lock()
        self.done = torch.cuda.Event()  # recorded after the last call's output copy

    def _capture(self, args: tuple[torch.Tensor, ...]):
        static = [a.clone() for a in args]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self.fn(*static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = self.fn(*static)
        return graph, static, out

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        key = tuple((a.shape, a.dtype, a.stride(), a.device) for a in args)
        with self.lock, torch.cuda.device(args[0].device):
            stream = torch.cuda.current_stream()
            stream.wait_event(self.done)  # a no-op until first recorded
            if key not in self.graphs:
                self.graphs[key] = self._capture(args)
                while len(self.graphs) > self.max_graphs:
                    self.graphs.popitem(last=False)
            self.graphs.move_to_end(key)
            graph, static, out = self.graphs[key]
            for s, a in zip(static, args):
                s.copy_(a)
            graph.replay()
            result = out.clone()
            self.done.record(stream)
            return result
