"""Warnings this package silences while it works, in a way threads cannot tangle.

``warnings.catch_warnings`` saves the process's filter list and puts that copy back when
it closes: two threads whose scopes overlap put back each other's copies, which can leave
a filter on for good (an ONNX export's "ignore everything" beside an image load in another
thread did) or drop one the program added meanwhile. A ``Silenced`` instead puts its own
narrow filters at the front of the list while any of its scopes is open (a count under a
lock) and takes those entries out when the last one closes; other warnings keep showing
meanwhile, in every thread. Its entries equal only themselves, so that a filter of the
same value the program adds (``filterwarnings`` drops an equal one first) is neither
taken for ours nor taken out with it; and every copy of them goes when the last scope
closes (a ``catch_warnings`` of the caller's, open in another thread meanwhile, puts
back a list that holds one: Python before 3.14 has no per-thread filters). Neither edit
needs the filters' version bumped: a warning an "ignore" filter matches is never cached
in a module's registry.

``one_line_warnings``: while a command runs, the package's own warnings read as one line.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings

from .shared_scope import SharedScope


def _prefix(text: str, flags: int = 0) -> re.Pattern | None:
    """What a filter matches the start of a message or module name with; None: any."""
    return re.compile(re.escape(text), flags) if text else None


class _Entry(tuple):
    """A filter (warnings' 5-tuple) equal only to itself."""

    __hash__ = object.__hash__

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other


class Silenced(SharedScope):
    """Filters ignoring each (category, message prefix, module prefix) given ("": any
    message, any module), while a ``with silenced():`` scope is open in any thread."""

    def __init__(self, *what: tuple[type[Warning], str, str]):
        self._entries = [_Entry(("ignore", _prefix(message, re.I), category, _prefix(module),
                                 0)) for category, message, module in what]
        super().__init__(self._add, self._remove)

    def _add(self) -> None:
        warnings.filters[:0] = self._entries

    def _remove(self) -> None:
        for entry in self._entries:
            while entry in warnings.filters:  # every copy (one at a time: a filter added
                warnings.filters.remove(entry)  # meanwhile stays)


@contextlib.contextmanager
def one_line_warnings(command: str):
    """While ``command`` runs, the package's own warnings read as one line each,
    ``bridgegan CMD: warning: ...``: Python's form names a file of the install and prints
    a line of its code, neither the user's. Others keep Python's form."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep  # this package's folder
    python_form = warnings.formatwarning

    def form(message, category, filename, lineno, line=None):
        if os.path.abspath(filename).startswith(package):
            return f"bridgegan {command}: warning: {message}\n"
        return python_form(message, category, filename, lineno, line)
    warnings.formatwarning = form
    try:
        yield
    finally:
        warnings.formatwarning = python_form
