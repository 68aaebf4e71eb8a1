"""Write a PNG grid of [-1, 1] images (numpy + Pillow), atomically."""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .image import tensor_to_uint8


def make_grid(
    images: torch.Tensor | np.ndarray | Sequence[torch.Tensor],
    nrow: int = 8,
    padding: int = 2,
    pad_value: int = 255,
) -> np.ndarray:
    """Arrange N images (N, 3, H, W) in [-1, 1] into one uint8 (H', W', 3) array.

    ``nrow`` is the number of images per row (as in torchvision). ``padding`` pixels of
    ``pad_value`` (0..255) separate the tiles and surround the grid.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("save_grid: no images given")
        images = torch.stack([torch.as_tensor(im) for im in images])
    arr = tensor_to_uint8(images)
    if arr.ndim == 3:
        arr = arr[None]
    n, h, w, _ = arr.shape
    if n == 0:
        raise ValueError("save_grid: no images given")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    ncol = min(nrow, n)
    rows = math.ceil(n / ncol)
    gh = rows * h + (rows + 1) * padding
    gw = ncol * w + (ncol + 1) * padding
    grid = np.full((gh, gw, 3), pad_value, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, ncol)
        y = padding + r * (h + padding)
        x = padding + c * (w + padding)
        grid[y:y + h, x:x + w] = arr[k]
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 (H, W, 3) array as PNG via a temporary file and os.replace."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(array).save(f, format="PNG", optimize=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_grid(
    images: torch.Tensor | np.ndarray | Sequence[torch.Tensor],
    path: str | os.PathLike,
    nrow: int = 8,
    padding: int = 2,
    pad_value: int = 255,
) -> tuple[int, int]:
    """Save images (N, 3, H, W) in [-1, 1] as a PNG grid with ``nrow`` images per row.

    The file is written atomically (temporary file in the same folder, then os.replace);
    parent folders are created. Returns the (width, height) of the written image.
    NaN or infinite values raise a ValueError.
    """
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    save_png(grid, path)
    return grid.shape[1], grid.shape[0]
