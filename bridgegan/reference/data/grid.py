"""Write a PNG grid of [-1, 1] images (numpy + Pillow), atomically, with or without captions."""
from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ...files import write_file_atomic
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
    """Write a uint8 (H, W, 3) array as PNG, atomically (``files.write_file_atomic``);
    parent folders are created. At zlib's default level: PIL's ``optimize`` made the demo
    grid 4% smaller in 9-10x the time (1.6-1.8 s against 0.17 s on a 2-core CPU)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_file_atomic(path, buf.getvalue())


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


def captioned_grid(rows: Sequence[torch.Tensor], captions: Sequence[Sequence[str]],
                   title: str = "", scale: int = 1, font_size: int = 11,
                   lines: int = 3) -> np.ndarray:
    """Rows of images (K_i, 3, H, W) in [-1, 1], each cell with its own caption drawn under
    it (wrapped to the cell width, at most ``lines`` lines), an optional title line on top.
    Cells are enlarged ``scale`` times (nearest neighbour). Returns uint8 (H', W', 3)."""
    if len(rows) != len(captions) or any(len(r) != len(c) for r, c in zip(rows, captions)):
        raise ValueError("captioned_grid: one caption per image in every row")
    font = ImageFont.load_default(size=font_size)
    pad, line_h = 4, font_size + 2
    cells = [[np.kron(tensor_to_uint8(im), np.ones((scale, scale, 1), np.uint8)) for im in r]
             for r in rows]
    h, w = cells[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    top = line_h + 2 * pad if title else pad
    row_h = h + lines * line_h + pad
    canvas = Image.new("RGB", (pad + ncol * (w + pad), top + len(rows) * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill="black", font=font)
    for r, (row, caps) in enumerate(zip(cells, captions)):
        y = top + r * row_h
        for c, (cell, cap) in enumerate(zip(row, caps)):
            x = pad + c * (w + pad)
            canvas.paste(Image.fromarray(cell), (x, y))
            for k, text in enumerate(_wrap(cap, font, w)[:lines]):
                draw.text((x, y + h + k * line_h), text, fill="black", font=font)
    return np.asarray(canvas)


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels (a word longer than a line is cut)."""
    lines: list[str] = []
    for word in text.split():
        while font.getlength(word) > width and len(word) > 1:
            cut = next(k for k in range(len(word), 0, -1) if font.getlength(word[:k]) <= width)
            lines.append(word[:max(cut, 1)])
            word = word[max(cut, 1):]
        if lines and font.getlength(lines[-1] + " " + word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines
