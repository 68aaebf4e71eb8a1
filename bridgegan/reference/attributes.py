"""CelebA attribute names, presets, and target labels set by name with the conflict rules.

Labels are 0/1 float tensors of shape (N, n_attrs) in the order of the configuration's
attribute list. ``apply_edits`` sets named attributes and then applies the rules of the
spec (section 1): hair colours are exclusive, Bald / Receding_Hairline clear Bangs,
Straight_Hair and Wavy_Hair are exclusive; ``set_rows`` does the same with values that
differ from row to row (attributes taken from references). Torch-free at import (the
functions use their tensors' methods), so that the configuration is too.
"""
from __future__ import annotations

import reprlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..numerics import real_value

if TYPE_CHECKING:
    import torch

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald",
    "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose",
    "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)

PRESETS: dict[str, tuple[str, ...]] = {
    # BridgeGAN's default 14, in the official order.
    "bridgegan": (
        "Young", "Mouth_Slightly_Open", "Smiling", "Black_Hair", "Blond_Hair", "Brown_Hair",
        "Gray_Hair", "Receding_Hairline", "Bangs", "Male", "No_Beard", "Mustache",
        "Goatee", "Sideburns",
    ),
    "stargan": ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"),
    "attgan": (
        "Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Bushy_Eyebrows",
        "Eyeglasses", "Male", "Mouth_Slightly_Open", "Mustache", "No_Beard", "Pale_Skin",
        "Young",
    ),
}
DEFAULT_ATTRIBUTES = PRESETS["bridgegan"]

HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
_CLEARS_BANGS = ("Bald", "Receding_Hairline")
_HAIR_SHAPES = ("Straight_Hair", "Wavy_Hair")


def resolve_attributes(spec: str | Sequence[str]) -> tuple[str, ...]:
    """A preset name, a comma-separated list, or a sequence of CelebA attribute names."""
    if isinstance(spec, str):
        if spec in PRESETS:
            return PRESETS[spec]
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    if (not isinstance(spec, Sequence) or isinstance(spec, (bytes, bytearray))
            or not all(isinstance(n, str) for n in spec)):
        raise ValueError(f"attributes must be a preset name, a comma-separated string or a "
                         f"list of names (strings), got {reprlib.repr(spec)}")
    names = tuple(spec)
    unknown = [n for n in names if n not in CELEBA_ATTRIBUTES]
    if unknown:
        raise ValueError(
            f"unknown attribute name(s) {reprlib.repr(unknown)}; presets are {sorted(PRESETS)}, "
            f"valid names are: {', '.join(CELEBA_ATTRIBUTES)}"
        )
    if len(set(names)) != len(names):
        repeated = [n for n, k in Counter(names).items() if k > 1]
        raise ValueError(f"attribute list has duplicates: {reprlib.repr(repeated)}")
    if not names:
        raise ValueError("attribute list is empty")
    return names


def check_names(names: Sequence[str], attributes: Sequence[str]) -> None:
    """Raise a ValueError listing the valid names when any of ``names`` is unknown."""
    unknown = [n for n in names if n not in attributes]
    if unknown:
        raise ValueError(
            f"unknown attribute name(s) {unknown}; this model's attributes are: "
            f"{', '.join(attributes)}"
        )


def apply_edits(
    labels: torch.Tensor, attributes: Sequence[str], edits: Mapping[str, float | int | bool]
) -> torch.Tensor:
    """Return a copy of ``labels`` (N, A) with ``edits`` (name -> 0/1) set and conflicts resolved.

    Rules, applied for each attribute the edit sets to 1: another hair colour is cleared;
    Bald or Receding_Hairline clears Bangs; Straight_Hair and Wavy_Hair clear each other.
    An attribute the edit names explicitly is never cleared by a rule.
    """
    attributes = list(attributes)
    check_names(list(edits), attributes)
    if labels.dim() != 2 or labels.shape[1] != len(attributes):
        raise ValueError(
            f"labels must have shape (N, {len(attributes)}), got {tuple(labels.shape)}"
        )
    for name, value in edits.items():
        if real_value(value) not in (0.0, 1.0):
            raise ValueError(f"target for {name!r} must be 0 or 1, got {value!r}")
    values = labels.new_tensor([real_value(v) for v in edits.values()])
    return set_rows(labels, attributes, list(edits), values.expand(labels.shape[0], -1))


def _cleared_by(name: str) -> list[str]:
    """The attributes the rules clear when ``name`` is set to 1."""
    cleared = []
    if name in HAIR_COLOURS:
        cleared += [h for h in HAIR_COLOURS if h != name]
    if name in _CLEARS_BANGS:
        cleared.append("Bangs")
    if name in _HAIR_SHAPES:
        cleared += [h for h in _HAIR_SHAPES if h != name]
    return cleared


def set_rows(labels: torch.Tensor, attributes: Sequence[str], names: Sequence[str],
             values: torch.Tensor) -> torch.Tensor:
    """A copy of ``labels`` (N, A) with ``names`` set to ``values`` (N, len(names)) row by
    row, the rules of ``apply_edits`` applied in each row to the names it sets to 1 (so a
    hair colour taken from a reference clears the row's other one). Names and 0/1 values
    are the caller's to check."""
    index = {n: i for i, n in enumerate(attributes)}
    out = labels.clone()
    for j, name in enumerate(names):
        on = values[:, j] == 1
        for other in _cleared_by(name):
            if other in index and other not in names:
                out[on, index[other]] = 0
    out[:, [index[n] for n in names]] = values
    return out
