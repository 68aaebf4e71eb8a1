"""The PyTorch reference BridgeGAN: the oracle every optimised path is checked against.

The names below are imported on first use (PEP 562), so that importing a torch-free
submodule (e.g. ``train_cli`` to build the command line) imports no torch."""
from ..lazy import lazy_exports

_EXPORTS = {
    ".attributes": ("CELEBA_ATTRIBUTES", "DEFAULT_ATTRIBUTES", "PRESETS", "apply_edits"),
    ".checkpoint": ("CheckpointError", "load_checkpoint", "save_checkpoint"),
    ".config": ("BridgeGANConfig",),
    ".layers": ("LatentMix",),
    ".model": ("BridgeGAN",),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
