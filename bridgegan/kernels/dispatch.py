"""How every op of this package picks its path: the lazy import of its Triton kernels, the
choice between them and the plain torch ops (``impl``), the one fallback warning, the
launches of its kernels, and the check for a tracer (ONNX export, TorchScript,
torch.compile), under which ops take their plain torch path so that the exported or
compiled graph holds standard ops."""
from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import NoReturn

import torch

from ..numerics import dtype_name
from .registry import KERNELS

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TORCH_DTYPES = TRITON_DTYPES + (torch.float64,)  # the torch paths also take float64
INT32_MAX = 2**31 - 1  # the kernels index one sample with int32 offsets


def fail(op: str, msg: str) -> NoReturn:
    """An op's refusal of its arguments: a ValueError naming the op."""
    raise ValueError(f"{op}: {msg}")


def check_impl(op: str, impl) -> None:
    """``impl`` one of the values op's row in ``KERNELS`` takes."""
    impls = KERNELS[op].impls
    if impl not in impls:
        fail(op, f"unknown impl {impl!r}; accepted: {', '.join(repr(i) for i in impls)}")


def check_like(op: str, name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str,
               dtype: bool = True) -> None:
    """Tensor ``name`` on ``ref``'s device and (where ``dtype``) of its dtype."""
    if dtype and t.dtype != ref.dtype:
        fail(op, f"{name} has dtype {dtype_name(t.dtype)} but {ref_name} is "
                 f"{dtype_name(ref.dtype)}; they must match")
    if t.device != ref.device:
        fail(op, f"{name} is on {t.device} but {ref_name} is on {ref.device}; they must match")


class KernelFallbackWarning(RuntimeWarning):
    """impl="auto" could not run a fused path and used the plain torch path instead."""


def tracing() -> bool:
    """Whether a tracer, TorchScript or torch.compile is recording the current call, in
    this thread. Only per-thread state is read: torch.compiler.is_compiling() and
    torch.onnx.is_in_onnx_export() are process-wide flags, True in every thread while
    any thread compiles (tens of seconds) or exports, which would send other threads'
    engine calls down the plain path (other rounding; on a GPU no kernels, and CUDA
    graphs captured then keep the plain ops). TorchScript's tracer (what
    torch.onnx.export(dynamo=False) runs) and scripting are per thread; TorchDynamo
    folds ``is_dynamo_compiling()`` to True in the code it traces (False when run
    eagerly); a fake-tensor trace (non-strict torch.export) holds a TracingContext,
    per thread."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    if torch.compiler.is_dynamo_compiling():
        return True
    return torch._guards.TracingContext.try_get() is not None


_MODULES: dict[str, tuple] = {}  # Triton module name -> (module or None, reason or None)


def triton_module(op: str):
    """(op's Triton module, None): ``bridgegan.kernels._triton_<name>`` as op's row in
    ``KERNELS`` names it, or (None, why it cannot be used). Imported lazily, once:
    importing this package never imports triton."""
    name = KERNELS[op].triton
    if name not in _MODULES:
        try:
            _MODULES[name] = (importlib.import_module(f"._triton_{name}", __package__), None)
        except Exception as exc:  # ImportError, or a broken triton install
            _MODULES[name] = (None, f"triton does not import ({type(exc).__name__}: {exc})")
    return _MODULES[name]


def triton_available() -> bool:
    """Whether triton and the kernels import (the first op's module stands for all; says
    nothing about a GPU)."""
    return triton_module(next(iter(KERNELS)))[0] is not None


@functools.cache
def _interpreted(module) -> bool:
    """Whether a kernel module's kernels were defined under TRITON_INTERPRET=1 (the CPU
    interpreter: triton.jit reads the variable when it decorates them)."""
    return any(type(v).__name__ == "InterpretedFunction" for v in vars(module).values())


def triton_interpreted() -> bool:
    """Whether the kernels run in the CPU interpreter (TRITON_INTERPRET=1 at import: the
    same for every op's, so the first op's tell)."""
    tn = triton_module(next(iter(KERNELS)))[0]
    return tn is not None and _interpreted(tn)


_FALLBACK_WARNED = False
_FALLBACK_LOCK = threading.Lock()


def caller_stacklevel() -> int:
    """The ``stacklevel`` of a warning raised by the calling function that attributes it
    to the op's caller: the first frame outside this package, however many of its frames
    (op, _run, choose_impl, ...) lie between."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(__package__):
        level, frame = level + 1, frame.f_back
    return level


def warn_fallback(op: str, reason: str) -> None:
    """One KernelFallbackWarning per process, whichever op falls back first (in any
    thread)."""
    global _FALLBACK_WARNED
    with _FALLBACK_LOCK:
        if _FALLBACK_WARNED:
            return
        _FALLBACK_WARNED = True
    warnings.warn(
        f"bridgegan.kernels.{op}(impl='auto') is using the torch path: {reason}. "
        "Results are correct but not fused. (Shown once per process.)",
        KernelFallbackWarning,
        stacklevel=caller_stacklevel(),
    )


def reset_fallback_warning() -> None:
    """Forget that the fallback warning was shown (for tests)."""
    global _FALLBACK_WARNED
    _FALLBACK_WARNED = False


def sample_span(t: torch.Tensor | None) -> int:
    """The elements one sample of a 4-D tensor (N, C, H, W) spans in memory: its largest
    offset from the sample's first element, plus one (a view of a wider tensor spans more
    than its own elements: gamma and beta as halves of one (N, 2C, H, W) tensor). Written
    out, not looped: it runs at every kernel call."""
    if t is None or t.numel() == 0:
        return 0
    _, c, h, w = t.shape
    _, sc, sh, sw = t.stride()
    return 1 + (c - 1) * abs(sc) + (h - 1) * abs(sh) + (w - 1) * abs(sw)


def choose_impl(op: str, x: torch.Tensor, impl: str, others=(), dense: int = 0) -> str:
    """"triton" or "torch" for a call of ``op`` on x (its kernels: ``triton_module(op)``):
    impl="triton" raises when they cannot run, impl="auto" falls back with the warning.
    Under a tracer every impl takes the torch path, silently: an exported or compiled graph
    holds the reference ops, never a kernel launch (which a tracer cannot record). The
    kernels index a sample of x and of the 4-D tensors ``others`` with int32, and of the
    dense tensors they allocate (outputs, dense copies): ``dense`` elements per sample (an
    expanded x spans little memory, but its output is dense)."""
    if impl == "torch" or tracing():
        return "torch"
    per_sample = max(dense, *map(sample_span, (x, *others)))
    if impl == "triton":
        tn, why = triton_module(op)
        if tn is None:
            raise RuntimeError(f"{op}(impl='triton'): {why}; install triton or use impl='torch'")
        if x.dtype not in TRITON_DTYPES:
            fail(op, f"impl='triton' accepts float16, bfloat16, float32; x is "
                     f"{dtype_name(x.dtype)} (use impl='torch' for float64)")
        recorded_meta = x.is_meta and recording_launches()
        interpreted_cpu = _interpreted(tn) and x.device.type == "cpu"  # no other device
        if not x.is_cuda and not interpreted_cpu and not recorded_meta:
            raise RuntimeError(
                f"{op}(impl='triton'): x is on {x.device}; the Triton path needs a CUDA tensor, "
                "or TRITON_INTERPRET=1 set in the environment before bridgegan.kernels is "
                "imported (CPU interpreter, slow; for tests)")
        if per_sample > INT32_MAX:
            fail(op, f"impl='triton' indexes one sample with int32 offsets, at most "
                     f"{INT32_MAX}; a sample spans {per_sample} elements")
        return "triton"
    tn, why = triton_module(op)
    if not x.is_cuda:
        reason = f"x is on {x.device}, the Triton kernels need a CUDA tensor"
    elif tn is None:
        reason = why
    elif x.dtype not in TRITON_DTYPES:
        reason = f"{dtype_name(x.dtype)} has no Triton kernel (float16/bfloat16/float32 do)"
    elif per_sample > INT32_MAX:
        reason = f"{per_sample} elements per sample exceed the kernels' int32 indexing"
    else:
        return "triton"
    warn_fallback(op, reason)
    return "torch"


# FMA contraction in the kernels, as every measurement and tolerance of them was made
# with: Triton's default up to 3.9, which warns that 3.10 turns it off unless asked
FP_FUSION = True


@dataclass(frozen=True)
class Launch:
    """One Triton kernel launch: ``kernel[grid](*args, **kwargs)``, with FP_FUSION."""

    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict = field(default_factory=dict)

    def __call__(self) -> None:
        self.kernel[self.grid](*self.args, enable_fp_fusion=FP_FUSION, **self.kwargs)

    def warmup(self):
        """Compile without running (``JITFunction.warmup``): the compiled kernel."""
        return self.kernel.warmup(*self.args, grid=self.grid, enable_fp_fusion=FP_FUSION,
                                  **self.kwargs)


_LOCAL = threading.local()  # .recorded: this thread's launches collected by recording()
# Triton's interpreter patches module-wide state while a kernel runs: one launch at a time
_INTERPRETER_LOCK = threading.Lock()


def _recorded() -> list[Launch] | None:
    return getattr(_LOCAL, "recorded", None)


@contextlib.contextmanager
def recording():
    """Inside, on this thread, the ops accept ``meta`` tensors on their Triton path and
    collect their launches into the list this yields instead of running them: how
    :mod:`bridgegan.engine.targets` enumerates what a forward pass launches, to compile it
    for a GPU that is absent."""
    previous, _LOCAL.recorded = _recorded(), []
    try:
        yield _LOCAL.recorded
    finally:
        _LOCAL.recorded = previous


def recording_launches() -> bool:
    """Whether a ``recording()`` block is collecting this thread's launches."""
    return _recorded() is not None


def run_launches(launches: list[Launch], device: torch.device) -> None:
    """Launch in order, on ``device`` (the current CUDA device is not assumed); inside
    ``recording()``, collect them instead. In the interpreter, one thread's at a time."""
    recorded = _recorded()
    if recorded is not None:
        recorded.extend(launches)
        return
    guard = torch.cuda.device(device) if device.type == "cuda" else (
        _INTERPRETER_LOCK if triton_interpreted() else contextlib.nullcontext())
    with guard:
        for launch in launches:
            launch()
