"""Inference engine: the rewritten generator on several backends, behind a batched API.

The names below are imported on first use (PEP 562), so that the command line reads
``options`` and ``export.names`` without importing torch."""
from ..lazy import lazy_exports

_EXPORTS = {
    ".backends": ("BACKENDS", "BackendUnavailable"),
    ".engine": ("EditStrip", "Engine"),
    ".finite": ("NonFiniteOutputError",),
    ".graph": ("InferenceGraph", "Rewrites"),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
