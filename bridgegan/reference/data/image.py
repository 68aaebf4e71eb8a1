"""Image loading and conversion shared by the datasets (numpy + Pillow, no torchvision).

Tensors are float32 (3, H, W) in [-1, 1]; arrays are uint8 (H, W, 3).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ...warning_filters import Silenced

# CelebA aligned images are 178x218 (W x H); the AttGAN/BridgeGAN crop is 170x170 at
# (top 26, left 3).
CELEBA_IMAGE_SIZE = (178, 218)
CELEBA_CROP_BOX = (3, 26, 3 + 170, 26 + 170)  # (left, top, right, bottom) for PIL


SPLIT_NAMES = ("train", "val", "test", "all")

# Images above this many pixels are refused before decoding (a 140 KB PNG can hold a
# 12000x12000 image): decoding one then takes at most ~200 MB (RGBA bytes), and a 50-megapixel
# camera photo still loads.
MAX_IMAGE_PIXELS = 50_000_000
# PIL's warning past its own cap (above ours), silenced while a file is opened
_PIL_CAP = Silenced((Image.DecompressionBombWarning, "", ""))

# 16-bit greyscale modes, rescaled to 8 bits (65535 -> 255); 32-bit integer ("I") and
# float ("F") pixels have no defined range and are refused.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
UNDEFINED_RANGE_MODES = ("I", "F")


class MissingImageError(FileNotFoundError, ValueError):
    """An image file that does not exist: a FileNotFoundError that callers catching bad
    input (ValueError) catch too."""


class UnreadableImageError(ValueError):
    """An image file that exists but cannot be decoded (truncated, not an image)."""


class EmptySplitError(ValueError):
    """A dataset's split that lists no image (a folder without ``val`` rows): training
    takes its samples from the training split then; any other error is the data's."""


def check_size_and_split(size: int, split: str) -> None:
    """The arguments every image-file dataset takes: a positive image size and a split."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")


def to_rgb(im: Image.Image, what: str = "image") -> Image.Image:
    """Upright RGB copy of a PIL image: the EXIF orientation is applied; greyscale (8- or
    16-bit) and palette images are converted; images with transparency (alpha modes, a
    palette with alpha, and a transparent colour, PNG's tRNS, in the others) are
    composited onto white; 32-bit integer and float images are refused (a ValueError
    naming ``what``)."""
    im = ImageOps.exif_transpose(im)
    if im.mode in UNDEFINED_RANGE_MODES:
        raise ValueError(
            f"{what} has mode {im.mode} (32-bit {'float' if im.mode == 'F' else 'integer'} "
            f"pixels, of no defined range); accepted: 8-bit images (modes 1, L, P, RGB, RGBA, "
            f"LA, PA, CMYK, YCbCr, ...) and 16-bit greyscale ({', '.join(SIXTEEN_BIT_MODES)}; "
            f"Pillow < 10.3 opens 16-bit greyscale PNGs as I: upgrade it)")
    if im.mode in SIXTEEN_BIT_MODES:
        a = np.asarray(im)
        grey = Image.fromarray(np.rint(a / 257).astype(np.uint8))
        key = im.info.get("transparency")  # one 16-bit value, compared before the rescale
        im = grey if not isinstance(key, int) else Image.merge(
            "LA", (grey, Image.fromarray(np.where(a == key, 0, 255).astype(np.uint8))))
    if im.mode == "La":  # premultiplied alpha, which Pillow converts to LA only
        im = im.convert("LA")
    if im.mode in ("RGBA", "RGBa", "LA", "PA") or "transparency" in im.info or (
            im.mode == "P" and im.palette is not None and im.palette.mode.endswith("A")):
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")


def check_image_size(size: tuple[int, int], what: str = "image") -> None:
    """Refuse empty images and images above MAX_IMAGE_PIXELS; ``size`` is (W, H)."""
    w, h = size
    if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"{what} is {w}x{h} pixels; accepted: non-empty images of at most "
                         f"{MAX_IMAGE_PIXELS:,} pixels")


def _image_path(path) -> str:
    """``path`` (str or os.PathLike) as a str naming an existing regular file. Devices,
    pipes and folders are refused without being read (/dev/zero would never end)."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(text, str):
        raise ValueError(f"an image path must be a str or os.PathLike naming a file, "
                         f"got {type(text).__name__} {text!r}")
    if "\0" in text:  # no file has one: it would be "not found"
        raise ValueError(f"an image path cannot hold a NUL character, got {text!r}")
    if not os.path.exists(text):
        raise MissingImageError(f"image file not found: {text}")
    if not os.path.isfile(text):
        raise ValueError(f"{text} is not a regular file (a folder, device or pipe); "
                         f"accepted: image files")
    return text


@contextlib.contextmanager
def _opened(path: str) -> Iterator[Image.Image]:
    """Image file ``path`` opened (its header read, its size checked, nothing decoded);
    every failure, now or while the caller decodes it, a ValueError naming the file."""
    try:
        with _PIL_CAP():  # ours refuses next
            im = Image.open(path)
        with im:
            check_image_size(im.size)
            yield im
    except Image.DecompressionBombError as exc:  # PIL's own cap, above ours: checked in open
        raise ValueError(f"image file {path} is too large ({exc}); accepted: images of at "
                         f"most {MAX_IMAGE_PIXELS:,} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(f"cannot read image file {path}: {exc}") from exc


def check_image_file(path: str | os.PathLike) -> None:
    """Refuse (ValueError) what ``open_rgb`` would refuse from the file's header alone: a
    missing file, not an image, too large. Cheap (nothing is decoded): for checking many
    inputs before work starts; damage past the header shows only when it is decoded."""
    with _opened(_image_path(path)):
        pass


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB (see ``to_rgb``), with a clear error naming the file. The
    size is checked from the header, before the pixels are decoded."""
    with _opened(_image_path(path)) as im:
        im.load()
        return to_rgb(im)


def face_square(im: Image.Image) -> Image.Image:
    """The square a face is read from: an aligned CelebA image (178x218) is cropped where
    the CelebA dataset crops it for training (170x170 at left 3, top 26), so that a model
    trained on CelebA sees its faces at their size and place; any other image, the largest
    centred square."""
    w, h = im.size
    if (w, h) == CELEBA_IMAGE_SIZE:
        return im.crop(CELEBA_CROP_BOX)
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s))


def resize(im: Image.Image, size: int) -> Image.Image:
    """Bicubic resize to (size, size); no-op when already that size."""
    if im.size == (size, size):
        return im
    return im.resize((size, size), Image.BICUBIC)


def pil_to_input(im: Image.Image, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [-1, 1] of an RGB image: ``face_square``, bicubic
    resize."""
    return pil_to_tensor(resize(face_square(im), size))


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

