"""torch's process-wide backend flags, set for the length of scopes that may overlap.

A flag such as ``torch.backends.cudnn.benchmark`` is one value for the whole process, and
the engine's calls may run at once on several threads. A ``ScopedFlags`` sets its flags
when the first of its scopes opens and puts the caller's values back when the last one
closes, so overlapping scopes neither unset them under one another nor leave them set
(a plain save-and-restore, closed out of order, restored the other scope's value for
good). Other threads see the flags set while any scope is open.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class ScopedFlags:
    """Flags ``write(inside)`` while any scope is open; ``read()``'s value before the
    first scope written back after the last."""

    def __init__(self, read: Callable[[], tuple], write: Callable[[tuple], None],
                 inside: tuple):
        self._read, self._write, self._inside = read, write, inside
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: tuple = ()

    @contextmanager
    def scope(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._saved = self._read()
                self._write(self._inside)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._write(self._saved)


def _tf32() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_tf32(values: tuple[bool, bool]) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = values


def _set_benchmark(values: tuple[bool]) -> None:
    (torch.backends.cudnn.benchmark,) = values


# float32 matrix products and convolutions in full float32 (TF32, cuDNN's default for
# convolutions, is a 5e-4-class approximation: design.md's tf32 row, not float32's)
no_tf32 = ScopedFlags(_tf32, _set_tf32, (False, False)).scope

# cuDNN's algorithm search: the first convolution of each shape times cuDNN's algorithms
# and keeps the fastest (off, cuDNN picks by heuristics). An engine turns it on for its
# calls, warm-up and CUDA-graph capture included: a graph keeps the algorithms chosen
# while it was captured.
cudnn_search = ScopedFlags(lambda: (torch.backends.cudnn.benchmark,), _set_benchmark,
                           (True,)).scope
