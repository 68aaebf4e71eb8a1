"""Image loading and conversion shared by the datasets (numpy + Pillow, no torchvision).

Tensors are float32 (3, H, W) in [-1, 1]; arrays are uint8 (H, W, 3).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# CelebA aligned images are 178x218 (W x H); the AttGAN/BridgeGAN crop is 170x170 at
# (top 26, left 3).
CELEBA_IMAGE_SIZE = (178, 218)
CELEBA_CROP_BOX = (3, 26, 3 + 170, 26 + 170)  # (left, top, right, bottom) for PIL


SPLIT_NAMES = ("train", "val", "test", "all")


def check_size_and_split(size: int, split: str) -> None:
    """The arguments every image-file dataset takes: a positive image size and a split."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB copy of a PIL image: greyscale and palette images are converted; images with
    transparency (RGBA, LA, P with a transparency entry) are composited onto white."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB (see ``to_rgb``), with a clear error naming the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read image file {path}: {exc}") from exc


def center_crop_square(im: Image.Image) -> Image.Image:
    """Crop the largest centred square."""
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s))


def resize(im: Image.Image, size: int) -> Image.Image:
    """Bicubic resize to (size, size); no-op when already that size."""
    if im.size == (size, size):
        return im
    return im.resize((size, size), Image.BICUBIC)


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor (3, H, W) in [-1, 1]."""
    arr = np.asarray(im, dtype=np.uint8)
    return uint8_to_tensor(arr)


def uint8_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 array (H, W, 3) -> float32 tensor (3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return t.to(torch.float32).div_(127.5).sub_(1.0)


def tensor_to_uint8(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float image(s) in [-1, 1], (3, H, W) or (N, 3, H, W) -> uint8 (..., H, W, 3).

    Values are clamped to [-1, 1]; NaN or infinite values raise a ValueError.
    """
    if isinstance(img, torch.Tensor):
        arr = img.detach().to("cpu", torch.float32).numpy()
    else:
        arr = np.asarray(img, dtype=np.float32)
    if arr.ndim not in (3, 4) or arr.shape[-3] not in (1, 3):
        raise ValueError(
            f"expected images of shape (3, H, W) or (N, 3, H, W) (1 channel allowed), "
            f"got {tuple(arr.shape)}"
        )
    if not np.isfinite(arr).all():
        raise ValueError("images contain NaN or infinite values")
    if arr.shape[-3] == 1:
        arr = np.repeat(arr, 3, axis=-3)
    arr = np.clip((arr + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.moveaxis(arr, -3, -1)


def load_image(path: str | os.PathLike, size: int, crop: str = "center") -> torch.Tensor:
    """Load any image file as a model input: float32 (3, size, size) in [-1, 1].

    crop="center": the largest centred square, then bicubic resize (any size or mode).
    crop="celeba": the CelebA 170x170 crop at (top 26, left 3) of a 178x218 aligned
    image, then bicubic resize; other image sizes are refused.
    """
    im = open_rgb(path)
    if crop == "celeba":
        if im.size != CELEBA_IMAGE_SIZE:
            raise ValueError(
                f"{os.fspath(path)}: CelebA crop needs a 178x218 aligned image, "
                f"got {im.size[0]}x{im.size[1]}; use crop='center' for other images"
            )
        im = im.crop(CELEBA_CROP_BOX)
    elif crop == "center":
        im = center_crop_square(im)
    else:
        raise ValueError(f"crop must be 'center' or 'celeba', got {crop!r}")
    return pil_to_tensor(resize(im, size))
