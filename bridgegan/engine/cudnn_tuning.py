"""cuDNN's algorithm search (``torch.backends.cudnn.benchmark``), on only while engines run.

With the search on, the first convolution of each shape times cuDNN's algorithms and
keeps the fastest; off, cuDNN picks by heuristics. The flag is process-wide, so an engine
turns it on for the length of its calls (warm-up and CUDA-graph capture included: a graph
keeps the algorithms chosen while it was captured) and the last engine call to finish
puts the caller's value back. Concurrent engine calls share one reference-counted scope;
other threads see the search on while any engine call runs.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_lock = threading.Lock()
_depth = 0
_saved = False


@contextmanager
def cudnn_search() -> Iterator[None]:
    """cudnn.benchmark on inside, the previous value restored when the last scope ends."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = True
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.backends.cudnn.benchmark = _saved
