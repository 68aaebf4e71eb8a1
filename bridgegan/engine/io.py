"""Turning what callers pass (tensors, PIL images, files) into checked image batches.

Policy, documented in the README:
- PIL images and files of any size are turned upright (EXIF orientation), cropped to a
  square (``image.face_square``: centred, or CelebA's face crop of an aligned 178x218
  image) and resized (bicubic) to the model's size; greyscale (8- or 16-bit) and palette
  images become RGB, transparency (alpha, or a PNG's transparent colour) is composited on
  white; 32-bit integer and float images are refused (see ``image.to_rgb``).
- Tensors are taken as they are: (N, C, S, S) or (C, S, S) in [-1, 1] at the model's size
  S; another size is refused (resizing a caller's tensor silently would hide bugs); one
  channel is replicated to RGB and four channels (RGBA, alpha in [-1, 1]) are composited
  on white. The range is checked on every channel, alpha included, before compositing;
  a batch without a negative value is warned about (images in [0, 1]).
- Empty batches and NaN / Inf values are refused, and so are empty images and images
  above ``image.MAX_IMAGE_PIXELS`` (files: from the header, before decoding). Paths are
  str or os.PathLike naming regular files (not bytes, folders, devices or pipes).
- A list may mix tensors, PIL images and paths; each item is checked on its own.
"""
from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from PIL import Image

from ..numerics import dtype_name
from ..reference.data import image

# Largest |value| a tensor image may hold: [-1, 1] with slack for rounding.
RANGE_LIMIT = 1.001
# The dtypes of tensor images (read as float32)
IMAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Pillow fills a PIL image in on first use, into the caller's object: a lazily opened one
# decodes, and its EXIF is parsed when first read (marked read before it is parsed). Two
# threads must not do that at once (a shared image gave "broken PNG" errors, wrong pixels,
# no EXIF rotation): an image's load and EXIF read take turns, after which ``to_rgb``
# reads what is filled in. Paths are each call's own.
_PIL_FILL = threading.Lock()

NUMPY_HINT = ("; for a numpy image (H, W, C) of uint8 pass PIL.Image.fromarray(a) (RGB "
              "order: OpenCV's BGR is a[..., ::-1]) or torch.from_numpy(a).permute(2, 0, 1) "
              "/ 127.5 - 1")

ImageLike = Union[torch.Tensor, Image.Image, str, os.PathLike]
Images = Union[ImageLike, Sequence[ImageLike]]


def value_range(x: torch.Tensor) -> tuple[float, float]:
    """(min, max) of ``x`` with one reduction and one host sync (the input checks of a call
    on device tensors would otherwise wait for the device three times); NaN anywhere makes
    both NaN."""
    lo, hi = torch.stack(torch.aminmax(x)).tolist()
    return lo, hi


def _check_values(x: torch.Tensor, what: str, warn: bool) -> None:
    """Refuse NaN / Inf and values outside [-1, 1] (a little rounding slack) in any
    channel, an RGBA alpha included; ``warn`` when none is negative: images in [0, 1]
    (torchvision's ``ToTensor``) lie inside [-1, 1] and would be read as washed out."""
    lo, hi = value_range(x)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{what}: contain NaN or Inf values")
    if lo < -RANGE_LIMIT or hi > RANGE_LIMIT:
        raise ValueError(f"{what}: values must lie in [-1, 1] in every channel (RGBA alpha "
                         f"included), got [{lo:.3g}, {hi:.3g}] (map 0..255 images with "
                         f"x / 127.5 - 1)")
    if warn and lo >= 0:  # one message for every call: the default filter shows it once
        warnings.warn("image tensors without a negative value: the engine reads [-1, 1] "
                      "(-1 black, 0 mid-grey); map images in [0, 1] with x * 2 - 1")


def _fix_channels(x: torch.Tensor) -> torch.Tensor:
    """A checked batch (N, C, S, S), C 1, 3 or 4, as RGB: grey replicated, RGBA
    composited on white."""
    c = x.shape[1]
    if c == 1:
        return x.expand(-1, 3, -1, -1)
    if c == 4:
        alpha = (x[:, 3:4] + 1) / 2
        return x[:, :3] * alpha + (1 - alpha)
    return x


def _items(images: Images, what: str) -> list:
    """The images a caller passed as a list: one image, or a sequence of them."""
    if isinstance(images, (Image.Image, str, os.PathLike)):
        return [images]
    if isinstance(images, Sequence) and not isinstance(images, (bytes, bytearray)):
        return list(images)
    raise ValueError(f"{what}: expected a tensor, a PIL image, a file path (str or "
                     f"os.PathLike) or a list of them, got {type(images).__name__}"
                     + (NUMPY_HINT if isinstance(images, np.ndarray) else ""))


def check_dense(x: torch.Tensor, what: str) -> None:
    """Refuse a tensor that holds no plain values (meta, sparse, nested), naming ``what``:
    torch's own errors for them (NotImplementedError...) come from deep inside a call."""
    kind, hint = (("meta", "it holds no data") if x.device.type == "meta" else
                  ("nested", "torch.stack its parts") if x.is_nested else
                  (None, None) if x.layout == torch.strided else
                  (str(x.layout), "make it dense with .to_dense()"))
    if kind is not None:
        raise ValueError(f"{what}: expected a dense tensor holding values, got a {kind} "
                         f"tensor ({hint})")


def _tensor(x: torch.Tensor, size: int, what: str, warn: bool) -> torch.Tensor:
    """A caller's tensor (N, C, S, S) or (C, S, S) as float32 (N, 3, S, S), shape and
    values checked (``warn``: see ``_check_values``)."""
    check_dense(x, what)
    one = x.dim() == 3
    if one:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{what}: expected a tensor (N, C, H, W) or (C, H, W), "
                         f"got shape {tuple(x.shape)}")
    if x.dtype not in IMAGE_DTYPES:  # float8's too: torch has no min / max of them
        raise ValueError(f"{what}: expected a floating-point tensor in [-1, 1] ("
                         f"{', '.join(dtype_name(d) for d in IMAGE_DTYPES)}), got {x.dtype}"
                         + ("; for 0..255 pixels: x.float() / 127.5 - 1"
                            if x.dtype == torch.uint8 else ""))
    if x.shape[1:3] == (size, size) and x.shape[3] in (1, 3, 4):
        order = "2, 0, 1" if one else "0, 3, 1, 2"
        raise ValueError(f"{what}: shape {tuple(x.shape[int(one):])} is channels-last (H, W, "
                         f"C); expected (C, H, W) images: use .permute({order})")
    if x.shape[-2:] != (size, size):
        raise ValueError(
            f"{what}: tensors must be {size}x{size} (the model's size), got "
            f"{x.shape[-2]}x{x.shape[-1]}; pass PIL images or files to have them centre-cropped "
            f"and resized, or resize the tensors yourself")
    if x.shape[1] not in (1, 3, 4):
        raise ValueError(f"{what}: expected 1 (grey), 3 (RGB) or 4 (RGBA) channels, got "
                         f"{x.shape[1]}" + (" (a 3-D tensor is one image, (C, H, W); a batch of "
                                           "grey images is (N, 1, H, W))" if one else ""))
    if x.numel():  # an empty batch is refused as a whole, by as_batch
        _check_values(x, what, warn)  # before the cast: float64 beyond float32's range is no Inf
    return _fix_channels(x.float())


def _item(item, size: int, what: str, warn: bool) -> torch.Tensor:
    """One list item (a tensor, a PIL image or a file path) as a float32 (K, 3, S, S)."""
    if isinstance(item, torch.Tensor):
        return _tensor(item, size, what, warn)
    if isinstance(item, (str, os.PathLike)):
        item = image.open_rgb(item)
    elif isinstance(item, Image.Image):
        image.check_image_size(item.size, what)
        with _PIL_FILL:
            try:  # a lazily opened image decodes here: a truncated or closed file fails now
                item.load()
            except (OSError, SyntaxError, ValueError, AssertionError, AttributeError) as exc:
                # a file closed before the read: Pillow >= 12.1 raises a bare AssertionError,
                # older Pillow an AttributeError (the image's fp is None)
                closed = isinstance(exc, AttributeError) or not str(exc)
                why = "its file is closed" if closed else str(exc)
                raise ValueError(f"{what}: the PIL image's pixels cannot be read ({why}); "
                                 f"accepted: images that decode (a complete file, read before "
                                 f"it is closed: pass the path, or call .load() inside `with "
                                 f"Image.open(...)`)") from exc
            item.getexif()
        item = image.to_rgb(item, what)
    else:
        raise ValueError(f"{what}: expected a tensor, a PIL image or a file path (str or "
                         f"os.PathLike), got {type(item).__name__}"
                         + (NUMPY_HINT if isinstance(item, np.ndarray) else ""))
    return image.pil_to_input(item, size)[None]


def as_batch(images: Images, size: int, what: str = "images", warn: bool = True
             ) -> torch.Tensor:
    """A float32 (N, 3, size, size) CPU-or-device tensor in [-1, 1], checked; errors name
    the list item (``images[k]``) when ``images`` is a list. ``warn``: about tensors that
    look like [0, 1] images (a hint for Python callers, not for a server's clients)."""
    if isinstance(images, torch.Tensor):
        x = _tensor(images, size, what, warn)
    else:
        parts = [_item(item, size, f"{what}[{k}]", warn)
                 for k, item in enumerate(_items(images, what))]
        x = torch.cat(parts) if parts else torch.empty(0, 3, size, size)
    if x.shape[0] == 0:
        raise ValueError(f"{what}: empty batch; at least one image is needed")
    return x.contiguous()
