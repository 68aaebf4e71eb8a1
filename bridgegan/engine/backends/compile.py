"""``compile``: torch.compile of the rewritten inference graph, one compiled function per
stage (fixed shapes). Compiled code is shared state: the registry has the engine run
calls one at a time.

Each stage runs at its batch's bucket (``cudagraphs.bucket``: the next power of two up to
64, then the next multiple of 64), the padded rows' outputs dropped, as CUDA graphs run:
compiled with fixed shapes, every distinct batch size would otherwise be compiled anew
(tens of seconds on a CPU, minutes of autotuning on a GPU), and torch stops compiling a
function after ``torch._dynamo.config.recompile_limit`` (8) shapes, running every later
shape uncompiled for good. torch counts them per code object, so each engine's stages
get code objects of their own (``_own_code``): shared, two engines' shapes counted
together and the second engine's later batch sizes ran uncompiled. A stage runs a batch
above 64 rows as several of at most 64: every batch size takes at most seven shapes per
engine. The price
is what a larger batch would have gained (on the H100, 2026-11-26, the triton backend did
7-13% more images/s at batch 256 than at 64; compile itself not measured there), against
an uncompiled path for good."""
from __future__ import annotations

import os
import tempfile
import types

import torch

from ...path_checks import shell_unsafe
from ...reference.layers import LatentMix
from ...reference.programs import Stages
from ..cudagraphs import POW2_UP_TO, bucket, in_chunks, pad_rows
from .base import BackendUnavailable
from .torch import rewritten


def padded(fn, fmt: torch.memory_format):
    """``fn`` of batch-first tensors called at the batch's bucket (each argument's rows,
    then its last row repeated), returning the first rows of its batch-first output; a
    batch above ``POW2_UP_TO`` rows in calls of at most that many; 4-D
    arguments in the engine's memory format ``fmt`` (the references' images arrive
    flattened from a 5-D batch, NCHW: another layout would be another compiled shape)."""
    def call(*args):
        args = [a.contiguous(memory_format=fmt) if a.dim() == 4 else a for a in args]
        n = args[0].shape[0]
        if n > POW2_UP_TO:
            return in_chunks(call, args, POW2_UP_TO)
        rows = bucket(n)
        if n == 0 or rows == n:
            return fn(*args)
        return fn(*(pad_rows(a, 0, rows) for a in args))[:n]
    return call


def _own_code(method):
    """``method`` (bound) as a function with a copy of its code object: dynamo keeps its
    compiled entries, and counts them against the recompile limit, per code object."""
    f = method.__func__
    fn = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__,
                            f.__closure__)
    fn.__kwdefaults__ = f.__kwdefaults__
    return types.MethodType(fn, method.__self__)


def _check_build_folder() -> None:
    """Refuse (BackendUnavailable) an inductor build folder whose path its C++ compiler
    call would split (a space or quote in TMPDIR): the first call failed with a 12-line
    CppCompileError."""
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or tempfile.gettempdir()
    bad = shell_unsafe(folder)
    if bad:
        raise BackendUnavailable(
            f"torch.compile builds its C++ in {folder!r}, which holds {bad!r}: its compiler "
            f"command line splits such a path; set TMPDIR (or TORCHINDUCTOR_CACHE_DIR) to a "
            f"path without spaces, quotes or shell characters")


def build(model, rewrites, dtype, device, channels_last, onnx_dir=None) -> Stages:
    _check_build_folder()
    graph = rewritten(model, rewrites, dtype, device, channels_last)
    # CUDA graphs come from the engine's own capture (CudaGraphed), which graphs the whole
    # program; inductor's cudagraph trees would graph each stage and recycle its outputs.
    mode = "max-autotune-no-cudagraphs" if torch.device(device).type == "cuda" else None

    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def compiled(fn):
        return padded(torch.compile(_own_code(fn), mode=mode, dynamic=False), fmt)

    decode_c = compiled(graph.decode)

    def decode(h, s):  # LatentMix (SPADE-level interpolation) stays eager
        return graph.decode(h, s) if isinstance(s, LatentMix) else decode_c(h, s)

    return Stages(compiled(graph.trunk), compiled(graph.encode), compiled(graph.map), decode)
