"""Errors of torch DataLoader workers, as the main process should report them."""
from __future__ import annotations

import traceback


def worker_error(exc: Exception) -> Exception:
    """Clears the local variables of ``exc``'s traceback, caught from a DataLoader's
    iteration, and returns the error to raise for it.

    The frames are cleared because a worker's error is raised from a frame that holds it, a
    cycle that kept the loader alive until exit, whose handlers then killed its workers
    (each left a /tmp/pymp-* folder); cleared, the loader goes when dropped and its
    workers stop. A worker's error reaches the main process as the same type with the
    worker's whole traceback as its message ("Caught ValueError in DataLoader worker
    process 0. Original Traceback ..."): the error returned is of that type with the
    original one-line message (e.g. "cannot read image file PATH: ..."), as with no
    workers. Any other error is returned as it is.
    """
    traceback.clear_frames(exc.__traceback__)
    text = str(exc)
    if not (text.startswith("Caught ") and "DataLoader worker process" in text
            and "Original Traceback" in text):
        return exc
    last = text.rstrip().splitlines()[-1]
    kind = type(exc)  # the traceback names builtins bare, other types with their module
    message = last
    for prefix in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__name__}: "):
        if last.startswith(prefix):
            message = last[len(prefix):]
            break
    try:
        return type(exc)(message)
    except Exception:  # noqa: BLE001 - a type that takes other arguments
        return RuntimeError(message)
