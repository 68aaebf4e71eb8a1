"""The PyTorch reference BridgeGAN: the oracle every optimised path is checked against."""
from .attributes import CELEBA_ATTRIBUTES, DEFAULT_ATTRIBUTES, PRESETS, apply_edits
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import BridgeGANConfig
from .layers import LatentMix
from .model import BridgeGAN

__all__ = [
    "BridgeGAN", "BridgeGANConfig", "LatentMix", "CELEBA_ATTRIBUTES", "DEFAULT_ATTRIBUTES",
    "PRESETS", "apply_edits", "save_checkpoint", "load_checkpoint", "CheckpointError",
]
