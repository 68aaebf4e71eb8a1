"""A scope that overlapping callers share, in any thread: process-wide state (torch's
flags, the warning filters) set as the first of them opens and put back as the last
closes, so that one caller's end neither undoes it under another nor leaves it set."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class SharedScope:
    """``with scope():`` runs ``on_first()`` as the first of its open scopes opens and
    ``on_last()`` as the last closes, under one lock."""

    def __init__(self, on_first: Callable[[], None], on_last: Callable[[], None]):
        self._on_first, self._on_last = on_first, on_last
        self._lock = threading.Lock()
        self._open = 0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if not self._open:
                self._on_first()
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                if not self._open:
                    self._on_last()
