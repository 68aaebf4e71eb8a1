"""torch's process-wide backend flags, set for the length of scopes that may overlap.

A flag such as ``torch.backends.cudnn.benchmark`` is one value for the whole process, and
the engine's calls may run at once on several threads. A ``ScopedFlags`` sets its flags
when the first of its scopes opens and puts the caller's values back when the last one
closes, so overlapping scopes neither unset them under one another nor leave them set
(a plain save-and-restore, closed out of order, restored the other scope's value for
good). Other threads see the flags set while any scope is open. A flag the program sets
while a scope is open keeps its new value when the last scope closes (one set to the
value the scope gave it cannot be told apart, and gets the caller's back).
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress

import torch

from .shared_scope import SharedScope


def _kept(saved: tuple, now: tuple, ours: tuple) -> tuple:
    """The flags to leave after the last scope: each the program changed while the scope
    was open (``now`` is not ``ours``) as it is, the others the caller's (``saved``)."""
    return tuple(s if n == o else n for s, n, o in zip(saved, now, ours))


class ScopedFlags(SharedScope):
    """Flags ``write(inside(saved))`` while any scope is open, where ``saved`` is ``read()``'s
    value before the first scope, and ``write(kept(saved, read(), inside(saved)))`` after
    the last: the caller's values, but for the flags the program changed meanwhile."""

    def __init__(self, read: Callable[[], tuple], write: Callable[[tuple], None],
                 inside: Callable[[tuple], tuple], kept: Callable[..., tuple] = _kept):
        self._read, self._write, self._inside, self._kept = read, write, inside, kept
        self._saved: tuple = ()
        super().__init__(self._set, self._restore)

    def _set(self) -> None:
        self._saved = self._read()
        self._write(self._inside(self._saved))

    def _restore(self) -> None:
        self._write(self._kept(self._saved, self._read(), self._inside(self._saved)))


# oneDNN's matmul precision as ``torch.set_float32_matmul_precision(key)`` leaves it
_ONEDNN_AFTER = {"highest": "ieee", "high": "tf32", "medium": "bf16"}


def tf32_state() -> tuple:
    """TF32's settings for float32 matrix products and cuDNN convolutions, as the API the
    process set them with reads them: ("legacy", matmul, cuDNN's allow_tf32), or, once a
    program set torch's newer per-backend ``fp32_precision`` (torch >= 2.9; the legacy
    reads then raise), ("precision", each one's precision). The legacy matmul setting is
    the CUDA flag (allow_tf32), or, where ``torch.set_float32_matmul_precision`` set it
    and oneDNN's with it (torch >= 2.9), that precision ("highest", "high", "medium"),
    written back the same way: the CUDA flag alone, turned off after
    ``set_float32_matmul_precision("high")``, left oneDNN's at TF32, a mix that made
    ``torch.get_float32_matmul_precision`` (inductor calls it) raise inside the scope."""
    backends = torch.backends
    try:
        matmul, conv = backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32
    except RuntimeError:  # "a mix of the legacy and new APIs": the new one is in use
        return ("precision", backends.cuda.matmul.fp32_precision,
                backends.cudnn.conv.fp32_precision)
    onednn = getattr(backends.mkldnn, "matmul", None)
    if onednn is not None and onednn.fp32_precision != "none":
        with suppress(RuntimeError):  # raises in a mix the program made: the CUDA flag
            precision = torch.get_float32_matmul_precision()
            if _ONEDNN_AFTER.get(precision) == onednn.fp32_precision:
                matmul = precision
    return "legacy", matmul, conv


def tf32_key() -> object:
    """cuDNN's TF32 setting for convolutions, read cheaply in either API (a per-call cache
    key): the per-backend precision where torch has one (the legacy flag writes it too),
    else the legacy flag. ``tf32_state``'s legacy read raises (and is caught) whenever the
    newer API is in use: 40x slower."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    return conv.fp32_precision if conv is not None else torch.backends.cudnn.allow_tf32


def _set_tf32(state: tuple) -> None:
    """Write ``state`` (``tf32_state``'s form) in its API, only the flags that change (a
    legacy write also rewrites torch's per-backend precisions: matmul's "none" became
    "ieee" for good, hiding a later global TF32 setting); a matmul precision string goes
    back through ``set_float32_matmul_precision``, which set it."""
    api, matmul, conv = state
    backends = torch.backends
    if api == "legacy":
        if isinstance(matmul, str):  # as set_float32_matmul_precision set it
            if tf32_state()[1] != matmul:
                torch.set_float32_matmul_precision(matmul)
        elif backends.cuda.matmul.allow_tf32 != matmul:
            backends.cuda.matmul.allow_tf32 = matmul
        if backends.cudnn.allow_tf32 != conv:
            backends.cudnn.allow_tf32 = conv
        return
    for owner, value in ((backends.cuda.matmul, matmul), (backends.cudnn.conv, conv)):
        if owner.fp32_precision != value:
            owner.fp32_precision = value


def _off(state: tuple) -> tuple:
    """TF32 off, in the API ``state`` was read with (the other would raise, or switch the
    process's later readers over)."""
    if state[0] == "legacy":
        return "legacy", "highest" if isinstance(state[1], str) else False, False
    return state[0], "ieee", "ieee"


def _tf32_kept(saved: tuple, now: tuple, ours: tuple) -> tuple:
    """``_kept`` for TF32 states (``tf32_state``'s form), by whether TF32 is on: a setting
    the program turned on while the scope had it off stays as it is, unless the caller had
    it on too; the others get the caller's values (a legacy matmul setting reads as a flag
    or as a precision, by how it was set: off is off either way), in the API the process
    uses now (where the program switched APIs, the old one's flags raise there, or would
    switch it back)."""
    def on(value) -> bool:
        return value is True or value in ("tf32", "high", "medium")

    def in_now(value):
        if now[0] == saved[0]:  # the API the scope read and wrote (``_off`` keeps it)
            return value
        return on(value) if now[0] == "legacy" else ("tf32" if on(value) else "ieee")

    return (now[0], *(n if on(n) not in (on(o), on(s)) else in_now(s)
                      for s, n, o in zip(saved[1:], now[1:], ours[1:])))


def _set_benchmark(values: tuple[bool]) -> None:
    (torch.backends.cudnn.benchmark,) = values


# float32 matrix products and convolutions in full float32 (TF32, cuDNN's default for
# convolutions, is a 5e-4-class approximation: design.md's tf32 row, not float32's)
no_tf32 = ScopedFlags(tf32_state, _set_tf32, _off, _tf32_kept)

# cuDNN's algorithm search: the first convolution of each shape times cuDNN's algorithms
# and keeps the fastest (off, cuDNN picks by heuristics). An engine turns it on for its
# calls, warm-up and CUDA-graph capture included: a graph keeps the algorithms chosen
# while it was captured.
cudnn_search = ScopedFlags(lambda: (torch.backends.cudnn.benchmark,), _set_benchmark,
                           lambda _: (True,))
