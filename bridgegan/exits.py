"""How a process that does not end through Python's own exit still ends cleanly: its exit
handlers run and its output is flushed first, with the interpreter whole (a distributed
run's ``os._exit``, the ``bridgegan`` command's end by SIGINT); and SIGTERM unwinds what is
under way, as Ctrl-C does; a long run stops at the end of a step on either, its data
loader's workers living through them (``stop_on_signals``, ``worker_ignores_stops``).
Torch-free."""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import NoReturn


class Terminated(BaseException):
    """SIGTERM (a scheduler's stop, `kill`), raised where the main thread is, as Ctrl-C's
    KeyboardInterrupt is: what is under way unwinds, its ``finally`` and ``except
    BaseException`` cleanups run (temporary files and locks removed), where Python's
    default ends the process at once."""


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM that come inside are noted, then raised again as it ends (an
    error inside too), for the handlers outside to act on: torch's import swallows the
    KeyboardInterrupt of a Ctrl-C that comes while it runs (about a second), and the
    command ran to its end. A second signal acts at once (an import that hangs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old: dict[int, object] = {}

    def restore() -> None:
        while old:
            signal.signal(*old.popitem())

    def note(signum, frame) -> None:
        caught.append(signum)
        if len(caught) > 1:
            restore()
            signal.raise_signal(signum)

    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, note)
        yield
    finally:
        pending = bool(old and caught)  # noted, not yet acted on
        restore()
        if pending:
            signal.raise_signal(caught[0])


@contextlib.contextmanager
def terminated_raises() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` inside (in the main thread; elsewhere no handler can
    be set); the earlier handler is back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def signal_status(signum: int) -> int:
    """The exit status of a command the signal ``signum`` stopped, as a shell reports it."""
    return 128 + signum


def stopped_status(prog: str, run: Callable[[], int]) -> int:
    """``run()``'s status, SIGTERM raising ``Terminated`` inside; a Ctrl-C or SIGTERM that
    stops it is one line on stderr ("PROG: interrupted", "PROG: terminated (SIGTERM)"),
    not a traceback, and status 128 + the signal (``end`` ends the process by it)."""
    try:
        with terminated_raises():
            return run()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return signal_status(signal.SIGINT)
    except Terminated:
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return signal_status(signal.SIGTERM)


def end(status: int) -> NoReturn:
    """End the process with ``status``, except that a command a signal stopped (status 128
    + SIGINT or SIGTERM: an interruption, or a run that stopped on the signal) ends by the
    signal itself, its exit handlers run first: a shell stops a loop or script only for a
    child that SIGINT ended, and a service manager (systemd) takes an end by SIGTERM, not
    status 143, for a clean stop."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if status == signal_status(sig):
            finish()
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
    sys.exit(status)


@contextlib.contextmanager
def stop_on_signals(request: Callable[[int], None]) -> Iterator[None]:
    """SIGTERM (a scheduler's stop, `kill`) and SIGINT (Ctrl-C) inside call ``request``
    with the signal: a long run stops at the end of the step under way, with a checkpoint
    (in the main thread; elsewhere no handler can be set). The first puts back the handlers
    from before, so a second one of either stops at once through them: under the
    `bridgegan` command and the module entries (``stopped_status``) it raises
    KeyboardInterrupt / ``Terminated``, what is under way unwinds, and the command prints
    one line and ends by the signal (status 130 / 143, ``end``)."""
    signums = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in signums}

    def handler(signum, frame):
        for s in signums:
            signal.signal(s, old[s])
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              f"(send it again to stop at once)", file=sys.stderr)
        request(signum)

    for s in signums:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s in signums:
            signal.signal(s, old[s])


def worker_ignores_stops(_worker_id: int) -> None:
    """A data loader's ``worker_init_fn`` for a run under ``stop_on_signals``: workers
    ignore Ctrl-C's SIGINT and others' SIGTERM, which reach the whole process group (a
    terminal; a scheduler's `kill -TERM -PGID`): the main process stops at the end of its
    step and still needs the batches of that step (a worker that died of it failed the
    step, and the run ended without its checkpoint). The main process's own SIGTERM
    (torch's last resort for a worker that does not end when the loader shuts down, one
    hung in ``__getitem__``) still ends it: SIGTERM is blocked and a thread tells the
    senders apart (``_end_on_loaders_sigterm``; where the system cannot, macOS, Windows,
    every SIGTERM is ignored). The loader's process is multiprocessing's parent process, not
    the operating system's (a forkserver's child, Python 3.14's default on Linux). A worker
    whose main process is gone exits (torch's loader watches it)."""
    import multiprocessing

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    loader = multiprocessing.parent_process()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started after too
    threading.Thread(target=_end_on_loaders_sigterm, daemon=True, name="sigterm",
                     args=(os.getppid() if loader is None else loader.pid,)).start()


def _end_on_loaders_sigterm(loader: int) -> None:
    """Wait for SIGTERM (blocked); end the process at once when process ``loader`` sent it,
    as torch's own worker handler does (status 0), and go on waiting otherwise. (The
    thread needs the GIL once the signal came: a worker hung in C code holding it stays.)"""
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != loader:
        pass
    os._exit(0)


def finish() -> None:
    """Run the exit handlers (logging, multiprocessing, tempfile...) and flush stdout and
    stderr: what Python's exit does before the process goes some other way."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, a stream closed
            stream.flush()
