"""Function-preserving widening (after Net2Net, Chen et al. 2016): a trained model's
weights in a model of the same depth with more channels, computing what it computed.

Every weight tensor of the wider model takes the narrower one's in its leading slice;
the entries that read a new channel (dimension 1 of a convolution or linear weight, for
the old output rows) start at zero, so the new channels cannot change the old ones, while
the rest of the new entries (the new channels' own weights, biases and norm parameters)
keep their fresh initialisation and start learning from the old features. This holds for
BridgeGAN because no layer mixes channels except convolutions and linear layers (the norms
are per channel), no concatenation puts two channel groups of varying width side by side,
and the mapping's 4x4 start is channel-major, so a wider ``mapping_channels`` extends its
linear layer's rows in the same leading-slice order.
"""
from __future__ import annotations

import torch

from .config import BridgeGANConfig

# The fields a widening may raise (each at least the source's); every other architecture
# field must be equal (noise_dim too: the noise is concatenated before the labels).
WIDTHS = ("g_width", "e_width", "latent_channels", "spade_hidden", "mapping_channels",
          "d_width")


def check_widening(source: BridgeGANConfig, target: BridgeGANConfig) -> None:
    """A ValueError naming each field where ``target`` is not ``source`` widened."""
    a, b = source.architecture(), target.architecture()
    bad = [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a
           if (b[k] < a[k] if k in WIDTHS else b[k] != a[k])]
    if bad:
        raise ValueError("a widening keeps every field but the widths (" + ", ".join(WIDTHS)
                         + ") and lowers none; these differ: " + "; ".join(bad))


@torch.no_grad()
def widen_into(model: torch.nn.Module, source: torch.nn.Module) -> int:
    """Copy ``source``'s weights into ``model`` (both BridgeGAN; ``model``'s config a
    widening of ``source``'s) so that ``model`` computes what ``source`` does. Returns
    how many tensors grew."""
    check_widening(source.config, model.config)
    old, new = source.state_dict(), model.state_dict()
    if old.keys() != new.keys():  # e.g. a residual block's shortcut appears or goes
        raise ValueError("the wider model has other layers than the source: "
                         + ", ".join(sorted(old.keys() ^ new.keys())))
    grown = 0
    for name, w in new.items():
        src = old[name]
        if w.dim() != src.dim() or any(n < o for n, o in zip(w.shape, src.shape)):
            raise ValueError(f"{name}: shape {tuple(src.shape)} does not fit in {tuple(w.shape)}")
        if w.shape == src.shape:
            w.copy_(src)
            continue
        grown += 1
        if w.dim() >= 2:  # the old output rows read nothing from the new inputs
            w[: src.shape[0], src.shape[1]:] = 0
        w[tuple(slice(0, n) for n in src.shape)] = src
    return grown
