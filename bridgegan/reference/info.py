"""`bridgegan info`: a configuration (a checkpoint's or a preset's) and its parameter counts."""
from __future__ import annotations

import argparse

from .checkpoint import read_config
from .config import BridgeGANConfig
from .model import BridgeGAN
from .presets import PAPER_RESOLUTION

NETWORKS = ("generator", "encoder", "mapping", "discriminator")


def parameter_counts(model: BridgeGAN) -> dict[str, int]:
    """Parameters of each network, by name."""
    return {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in NETWORKS}


def run(args: argparse.Namespace) -> int:
    """Print the configuration of ``args.checkpoint`` (else the ``args.resolution`` preset)
    and its parameter counts."""
    cfg = (read_config(args.checkpoint) if args.checkpoint
           else BridgeGANConfig.preset(args.resolution or PAPER_RESOLUTION))
    print(cfg.to_json())
    for name, n in parameter_counts(BridgeGAN(cfg)).items():
        print(f"{name:14s} {n:>12,d} parameters")
    return 0
