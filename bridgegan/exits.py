"""How a process that does not end through Python's own exit still ends cleanly: its exit
handlers run and its output is flushed first, with the interpreter whole (a distributed
run's ``os._exit``, the ``bridgegan`` command's end by SIGINT). Torch-free."""
from __future__ import annotations

import atexit
import contextlib
import sys


def finish() -> None:
    """Run the exit handlers (logging, multiprocessing, tempfile...) and flush stdout and
    stderr: what Python's exit does before the process goes some other way."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, a stream closed
            stream.flush()
