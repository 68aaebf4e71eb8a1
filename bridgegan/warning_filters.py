"""Warnings this package silences while it works, in a way threads cannot tangle.

``warnings.catch_warnings`` saves the process's filter list and puts that copy back when
it closes: two threads whose scopes overlap put back each other's copies, which can leave
a filter on for good (an ONNX export's "ignore everything" beside an image load in another
thread did) or drop one the program added meanwhile. A ``Silenced`` instead puts its own
narrow filters at the front of the list while any of its scopes is open (a count under a
lock) and takes those entries out by value when the last one closes; other warnings keep
showing meanwhile, in every thread. Neither edit needs the filters' version bumped: a
warning an "ignore" filter matches is never cached in a module's registry.

(A ``catch_warnings`` of the caller's own, in another thread, may still copy our entries
while it is open and put them back when it closes: Python before 3.14 has no per-thread
filters.)
"""
from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections.abc import Iterator


class Silenced:
    """Filters ignoring each (category, message prefix) given ("" for any message), while
    a ``with silenced():`` scope is open in any thread."""

    def __init__(self, *what: tuple[type[Warning], str]):
        self._entries = [("ignore", re.compile(re.escape(prefix), re.I) if prefix else None,
                          category, None, 0) for category, prefix in what]
        self._lock = threading.Lock()
        self._open = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if not self._open:
                warnings.filters[:0] = self._entries
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                if not self._open:
                    for entry in self._entries:
                        with contextlib.suppress(ValueError):  # a caller reset the filters
                            warnings.filters.remove(entry)
