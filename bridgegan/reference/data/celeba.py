"""CelebA in its original layout.

    ROOT/img_align_celeba/000001.jpg ...   aligned 178x218 JPEGs
    ROOT/list_attr_celeba.txt              line 1: image count; line 2: the 40 attribute
                                           names; then "file v1 ... v40", v in {-1, 1}
    ROOT/list_eval_partition.txt           optional: "file split", split 0/1/2

Splits: split_mode="index" (AttGAN / STGAN / BridgeGAN): train the first ``train_count``
(182,000) lines of the attribute file, val the next ``val_count`` (637), test the rest;
split_mode="official": the partition file's 0 / 1 / 2. split="all" takes every image.

Preprocessing: crop 170x170 at (top 26, left 3), bicubic resize (PIL) to ``size``, scale
to [-1, 1]; no flips. Labels map v -> (v + 1) / 2, in the order of ``attributes``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..attributes import CELEBA_ATTRIBUTES, resolve_attributes
from .image import (CELEBA_IMAGE_SIZE, EmptySplitError, check_size_and_split, open_rgb,
                    pil_to_input)
from .split_modes import INDEX_TRAIN, INDEX_VAL, SPLIT_MODES

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
_PARTITION_CODES = {"train": 0, "val": 1, "test": 2}  # list_eval_partition.txt's split codes


class CelebAFormatError(ValueError):
    """A CelebA metadata file does not have the expected format."""


def _attr_lines(path: str) -> list[str]:
    """The lines of the attribute file, trailing blank lines dropped; at least the count and
    header lines."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CelebA attribute file not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    # tolerate trailing blank lines only
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) < 2:
        raise CelebAFormatError(
            f"{path}: expected a count line and a header line of attribute names, "
            f"file has {len(lines)} line(s)"
        )
    return lines


def _declared_count(path: str, line: str) -> int:
    """The image count of line 1 (one ASCII integer)."""
    first = line.split()
    if len(first) != 1 or not (first[0].isascii() and first[0].isdigit()):  # not "²"
        raise CelebAFormatError(
            f"{path}, line 1: expected the number of images (one integer), got {line!r}"
        )
    return int(first[0])


def _attr_header(path: str, line: str) -> tuple[str, ...]:
    """The attribute names of line 2: the 40 CelebA names, in any order."""
    header = tuple(line.split())
    if len(header) != len(CELEBA_ATTRIBUTES) or set(header) != set(CELEBA_ATTRIBUTES):
        missing = [n for n in CELEBA_ATTRIBUTES if n not in header]
        extra = [n for n in header if n not in CELEBA_ATTRIBUTES]
        raise CelebAFormatError(
            f"{path}, line 2: expected the {len(CELEBA_ATTRIBUTES)} CelebA attribute names, "
            f"got {len(header)} name(s); missing {missing}, unexpected {extra}"
        )
    return header


def _attr_rows(
    path: str, header: tuple[str, ...], lines: list[str]
) -> tuple[list[str], np.ndarray]:
    """File names and int8 values (N, len(header)) of the data lines (from line 3), each
    checked: a name and one -1 or 1 per attribute."""
    n_attr = len(header)
    names: list[str] = []
    rows: list[str] = []
    ok = {"1", "-1"}
    for lineno, line in enumerate(lines, start=3):
        parts = line.split()
        if not parts:
            raise CelebAFormatError(f"{path}, line {lineno}: empty line")
        if len(parts) != n_attr + 1:
            raise CelebAFormatError(
                f"{path}, line {lineno}: expected a file name and {n_attr} values, got "
                f"{len(parts) - 1} value(s)"
            )
        vals = parts[1:]
        if not ok.issuperset(vals):
            j = next(k for k, v in enumerate(vals) if v not in ok)
            raise CelebAFormatError(
                f"{path}, line {lineno}: value {vals[j]!r} for {header[j]} is not -1 or 1"
            )
        names.append(parts[0])
        rows.append(" ".join(vals))
    # every token was checked above, so the fast text parser cannot misread any
    if rows:
        values = np.fromstring(" ".join(rows), dtype=np.int8, sep=" ")
    else:
        values = np.zeros(0, dtype=np.int8)
    return names, values.reshape(len(names), n_attr)


def _check_unique(path: str, names: list[str]) -> None:
    """Refuse a file name listed twice, naming the line of its second entry."""
    if len(set(names)) != len(names):
        seen: set[str] = set()
        for lineno, n in enumerate(names, start=3):
            if n in seen:
                raise CelebAFormatError(f"{path}, line {lineno}: duplicate file name {n!r}")
            seen.add(n)


def read_attr_file(path: str) -> tuple[list[str], tuple[str, ...], np.ndarray]:
    """Parse list_attr_celeba.txt: (file names, header names, values int8 (N, 40) in {-1, 1}).

    Errors name the file and the 1-based line number.
    """
    lines = _attr_lines(path)
    declared = _declared_count(path, lines[0])
    header = _attr_header(path, lines[1])
    names, values = _attr_rows(path, header, lines[2:])
    if len(names) != declared:
        raise CelebAFormatError(
            f"{path}, line 1: declares {declared} images but the file lists {len(names)}"
        )
    _check_unique(path, names)
    return names, header, values


def read_partition_file(path: str) -> dict[str, int]:
    """Parse list_eval_partition.txt into {file name: 0 | 1 | 2}; errors name file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CelebA partition file not found: {path} (needed by split_mode='official'; "
            f"use split_mode='index' to slice by position instead)"
        )
    out: dict[str, int] = {}
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise CelebAFormatError(
                    f"{path}, line {lineno}: expected 'file split' with split 0, 1 or 2, "
                    f"got {line.strip()!r}"
                )
            if parts[0] in out:  # a second entry would move the image to another split
                raise CelebAFormatError(
                    f"{path}, line {lineno}: duplicate file name {parts[0]!r} (already on "
                    f"line {first_line[parts[0]]})"
                )
            out[parts[0]] = int(parts[1])
            first_line[parts[0]] = lineno
    return out


def _check_split_options(split_mode: str, train_count: int, val_count: int) -> None:
    """Refuse an unknown split mode or a negative index-mode count."""
    if split_mode not in SPLIT_MODES:
        raise ValueError(f"split_mode must be one of {SPLIT_MODES}, got {split_mode!r}")
    if train_count < 0 or val_count < 0:
        raise ValueError("train_count and val_count must be >= 0")


class CelebA(Dataset):
    """CelebA aligned faces with binary attribute labels (see the module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike,
        size: int = 128,
        attributes: str | Sequence[str] | None = "bridgegan",
        split: str = "train",
        split_mode: str = "index",
        train_count: int = INDEX_TRAIN,
        val_count: int = INDEX_VAL,
    ) -> None:
        root = os.fspath(root)
        check_size_and_split(size, split)
        _check_split_options(split_mode, train_count, val_count)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"CelebA root folder not found: {root}")
        self.root = root
        self.size = size
        self.split = split
        self.split_mode = split_mode
        self.attributes = resolve_attributes(attributes if attributes is not None else "bridgegan")
        self.image_dir = os.path.join(root, IMAGE_DIR)
        if not os.path.isdir(self.image_dir):
            raise FileNotFoundError(
                f"CelebA image folder not found: {self.image_dir} (expected the aligned "
                f"JPEGs of img_align_celeba.zip there)"
            )
        attr_path = os.path.join(root, ATTR_FILE)
        names, header, values = read_attr_file(attr_path)
        cols = [header.index(n) for n in self.attributes]
        idx = self._split_indices(names, attr_path, train_count, val_count)
        self.files = [names[i] for i in idx]
        self.labels = torch.from_numpy(
            (values[idx][:, cols].astype(np.float32) + 1.0) / 2.0
        ).reshape(len(idx), len(cols))
        self._check_images(attr_path)

    def _split_indices(
        self, names: list[str], attr_path: str, train_count: int, val_count: int
    ) -> np.ndarray:
        """Rows of the attribute file in this split under this split mode; an empty split is
        refused, with the reason."""
        n = len(names)
        if self.split == "all":
            idx = np.arange(n)
        elif self.split_mode == "index":
            bounds = {
                "train": (0, train_count),
                "val": (train_count, train_count + val_count),
                "test": (train_count + val_count, n),
            }[self.split]
            idx = np.arange(min(bounds[0], n), min(bounds[1], n))
        else:
            idx = self._official_indices(names, attr_path)
        if len(idx) == 0:
            if n == 0 or self.split == "all":
                why = "no image to split"
            elif self.split_mode == "index":
                why = f"train_count={train_count}, val_count={val_count}"
            else:
                why = f"none has code {_PARTITION_CODES[self.split]} in {PARTITION_FILE}"
            raise EmptySplitError(f"CelebA split {self.split!r} (split_mode={self.split_mode!r}) "
                                  f"is empty: {attr_path} lists {n} images, {why}")
        return idx

    def _official_indices(self, names: list[str], attr_path: str) -> np.ndarray:
        """Rows whose partition-file code is this split's; every image needs an entry."""
        part_path = os.path.join(self.root, PARTITION_FILE)
        part = read_partition_file(part_path)
        missing = [f for f in names if f not in part]
        if missing:
            raise CelebAFormatError(
                f"{part_path}: {len(missing)} image(s) of {attr_path} have no partition "
                f"entry, first {missing[0]!r}"
            )
        code = _PARTITION_CODES[self.split]
        return np.array([i for i, f in enumerate(names) if part[f] == code], dtype=np.int64)

    def _check_images(self, attr_path: str) -> None:
        """Refuse a listed image of this split that is not in the image folder."""
        for f in self.files:
            p = os.path.join(self.image_dir, f)
            if not os.path.exists(p):
                raise FileNotFoundError(
                    f"CelebA image missing: {p} (listed in {attr_path}; "
                    f"split={self.split!r}, split_mode={self.split_mode!r})"
                )

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> str:
        return os.path.join(self.image_dir, self.files[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.path(index)
        im = open_rgb(path)
        if im.size != CELEBA_IMAGE_SIZE:
            raise ValueError(
                f"{path}: CelebA aligned images are 178x218, got {im.size[0]}x{im.size[1]}"
            )
        return pil_to_input(im, self.size), self.labels[index]


__all__ = ["CelebA", "CelebAFormatError", "read_attr_file", "read_partition_file"]
