"""Turning what callers pass (tensors, PIL images, files) into checked image batches.

Policy, documented in the README:
- PIL images and files of any size are centre-cropped to a square and resized (bicubic)
  to the model's size; greyscale and palette images become RGB, RGBA is composited on
  white.
- Tensors are taken as they are: (N, C, S, S) or (C, S, S) in [-1, 1] at the model's size
  S; another size is refused (resizing a caller's tensor silently would hide bugs); one
  channel is replicated to RGB and four channels (RGBA, alpha in [-1, 1]) are composited
  on white.
- Empty batches and NaN / Inf values are refused, and so are empty images and images
  above ``image.MAX_IMAGE_PIXELS`` (files: from the header, before decoding). Paths are
  str or os.PathLike naming regular files (not bytes, folders, devices or pipes).
- A list may mix tensors, PIL images and paths; each item is checked on its own.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Union

import torch
from PIL import Image

from ..reference.data import image

ImageLike = Union[torch.Tensor, Image.Image, str, os.PathLike]
Images = Union[ImageLike, Sequence[ImageLike]]


def pil_to_input(im: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [-1, 1]: RGB conversion, centre crop, bicubic resize."""
    return image.pil_to_tensor(image.resize(image.center_crop_square(image.to_rgb(im)), size))


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """(3, S, S) in [-1, 1] -> RGB PIL image."""
    return Image.fromarray(image.tensor_to_uint8(x))


def value_range(x: torch.Tensor) -> tuple[float, float]:
    """(min, max) of ``x`` with one reduction and one host sync (the input checks of a call
    on device tensors would otherwise wait for the device three times); NaN anywhere makes
    both NaN."""
    lo, hi = torch.stack(torch.aminmax(x)).tolist()
    return lo, hi


def _fix_channels(x: torch.Tensor, what: str) -> torch.Tensor:
    c = x.shape[1]
    if c == 3:
        return x
    if c == 1:
        return x.expand(-1, 3, -1, -1)
    if c == 4:
        alpha = (x[:, 3:4] + 1) / 2
        return x[:, :3] * alpha + (1 - alpha)
    raise ValueError(f"{what}: expected 1 (grey), 3 (RGB) or 4 (RGBA) channels, got {c}")


def _items(images: Images, what: str) -> list:
    """The images a caller passed as a list: one image, or a sequence of them."""
    if isinstance(images, (Image.Image, str, os.PathLike)):
        return [images]
    if isinstance(images, Sequence) and not isinstance(images, (bytes, bytearray)):
        return list(images)
    raise ValueError(f"{what}: expected a tensor, a PIL image, a file path (str or "
                     f"os.PathLike) or a list of them, got {type(images).__name__}")


def _tensor(x: torch.Tensor, size: int, what: str) -> torch.Tensor:
    """A caller's tensor (N, C, S, S) or (C, S, S) as float32 (N, 3, S, S), shape checked."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{what}: expected a tensor (N, C, H, W) or (C, H, W), "
                         f"got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{what}: expected a floating-point tensor in [-1, 1], got {x.dtype}")
    if x.shape[-2:] != (size, size):
        raise ValueError(
            f"{what}: tensors must be {size}x{size} (the model's size), got "
            f"{x.shape[-2]}x{x.shape[-1]}; pass PIL images or files to have them centre-cropped "
            f"and resized, or resize the tensors yourself")
    return _fix_channels(x.float(), what)


def _item(item, size: int, what: str) -> torch.Tensor:
    """One list item (a tensor, a PIL image or a file path) as a float32 (K, 3, S, S)."""
    if isinstance(item, torch.Tensor):
        return _tensor(item, size, what)
    if isinstance(item, (str, os.PathLike)):
        item = image.open_rgb(item)
    elif isinstance(item, Image.Image):
        image.check_image_size(item.size, what)
    else:
        raise ValueError(f"{what}: expected a tensor, a PIL image or a file path (str or "
                         f"os.PathLike), got {type(item).__name__}")
    return pil_to_input(item, size)[None]


def as_batch(images: Images, size: int, what: str = "images") -> torch.Tensor:
    """A float32 (N, 3, size, size) CPU-or-device tensor in [-1, 1], checked."""
    if isinstance(images, torch.Tensor):
        x = _tensor(images, size, what)
    else:
        parts = [_item(item, size, f"{what}[{k}]") for k, item in enumerate(_items(images, what))]
        x = torch.cat(parts) if parts else torch.empty(0, 3, size, size)
    if x.shape[0] == 0:
        raise ValueError(f"{what}: empty batch; at least one image is needed")
    lo, hi = value_range(x)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{what}: contain NaN or Inf values")
    if lo < -1.001 or hi > 1.001:
        raise ValueError(f"{what}: values must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}] "
                         f"(map 0..255 images with x / 127.5 - 1)")
    return x.contiguous()
