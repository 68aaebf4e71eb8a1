"""What every op of this package shares when it picks its fast path: the warning for a
fallback and the check for a tracer (ONNX export, TorchScript, torch.compile), under which
ops take their plain torch path so that the exported or compiled graph holds standard ops."""
from __future__ import annotations

import torch


class KernelFallbackWarning(RuntimeWarning):
    """impl="auto" could not run a fused path and used the plain torch path instead."""


def tracing() -> bool:
    """Whether a tracer, TorchScript or torch.compile is recording the current call."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    try:
        if torch.onnx.is_in_onnx_export():
            return True
    except Exception:  # pragma: no cover - older/newer onnx module layouts
        pass
    compiler = getattr(torch, "compiler", None)
    is_compiling = getattr(compiler, "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False
