"""A folder of images with a CSV of 0/1 attribute labels.

    PATH/attributes.csv     header: filename,<attribute names>...  one row per image
    PATH/<filename>         the images; ``filename`` is a path relative to PATH (so
                            "images/0001.png" works), and a bare name not found there
                            is looked up in PATH/images/

Attribute columns must carry CelebA names (bridgegan.reference.attributes); the requested
attributes must all be columns (other columns are ignored). Values are 0 or 1; each image
is listed once (a second row of one name, a.png or ./a.png, is refused). An optional
column "split" (train / val / test) assigns rows to splits; without it every split (and
split="all") holds all rows, and the dataset's ``unsplit`` is True.

Images of any size and mode are converted to RGB (transparency composited onto white),
cropped to a square (``image.face_square``: centred, or CelebA's face crop of an aligned
178x218 image) and resized (bicubic) to ``size``, scaled to [-1, 1].
"""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..attributes import CELEBA_ATTRIBUTES, resolve_attributes
from .image import EmptySplitError, check_size_and_split, open_rgb, pil_to_input

CSV_NAME = "attributes.csv"
SPLIT_COLUMN = "split"


class FolderFormatError(ValueError):
    """attributes.csv does not have the expected format."""


def _csv_path(root: str) -> str:
    """PATH/attributes.csv, once the folder and the file are found (errors say what the
    file should hold)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    csv_path = os.path.join(root, CSV_NAME)
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(
            f"attribute file not found: {csv_path} (expected a CSV with header "
            f"'filename,<CelebA attribute names>...' and one 0/1 row per image)"
        )
    return csv_path


def _read_csv(csv_path: str) -> tuple[list[str], list[list[str]]]:
    """The CSV's header, stripped and checked ('filename' first, no column twice), and its
    data rows as read."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or not any(c.strip() for c in rows[0]):
        raise FolderFormatError(f"{csv_path}, line 1: missing header 'filename,<attributes>...'")
    header = [c.strip() for c in rows[0]]
    if header[0].lower() != "filename":
        raise FolderFormatError(
            f"{csv_path}, line 1: the first column must be 'filename', got {header[0]!r}"
        )
    if len(set(header)) != len(header):
        raise FolderFormatError(f"{csv_path}, line 1: duplicate column names in {header}")
    return header, rows[1:]


def _requested_attributes(
    csv_path: str, header: list[str], attributes: str | Sequence[str] | None
) -> tuple[str, ...]:
    """The attributes to label with, each a column of the CSV; by default every attribute
    column, which must then all be CelebA names."""
    attr_columns = [c for c in header[1:] if c != SPLIT_COLUMN]
    if attributes is None:
        unknown = [c for c in attr_columns if c not in CELEBA_ATTRIBUTES]
        if unknown:
            raise FolderFormatError(
                f"{csv_path}, line 1: column(s) {unknown} are not CelebA attribute names; "
                f"valid names: {', '.join(CELEBA_ATTRIBUTES)}"
            )
        attributes = attr_columns
    names = resolve_attributes(attributes)
    absent = [n for n in names if n not in attr_columns]
    if absent:
        raise ValueError(
            f"{csv_path}: requested attribute(s) {absent} are not columns of the CSV; "
            f"its attribute columns are: {', '.join(attr_columns) or '(none)'}"
        )
    return names


def _checked_cells(
    csv_path: str, lineno: int, header: list[str], row: list[str], split_idx: int | None
) -> list[str]:
    """A data row's stripped cells, once it has a field per column, a file name, and a
    known split and 0/1 values."""
    if len(row) != len(header):
        raise FolderFormatError(
            f"{csv_path}, line {lineno}: expected {len(header)} fields "
            f"({', '.join(header)}), got {len(row)}"
        )
    cells = [c.strip() for c in row]
    if not cells[0]:
        raise FolderFormatError(f"{csv_path}, line {lineno}: empty filename")
    for j, c in enumerate(cells[1:], start=1):
        if j == split_idx:
            if c not in ("train", "val", "test"):
                raise FolderFormatError(
                    f"{csv_path}, line {lineno}: split {c!r} is not train, val or test"
                )
        elif c not in ("0", "1"):
            raise FolderFormatError(
                f"{csv_path}, line {lineno}: value {c!r} for {header[j]} is not 0 or 1"
            )
    return cells


def _split_rows(
    csv_path: str, header: list[str], rows: list[list[str]], attributes: Sequence[str],
    split: str,
) -> tuple[list[str], list[list[float]]]:
    """File names and labels (in the order of ``attributes``) of the rows in ``split``;
    every row is checked, whichever split is read, and an empty split is refused."""
    col_idx = [header.index(n) for n in attributes]
    split_idx = header.index(SPLIT_COLUMN) if SPLIT_COLUMN in header else None
    files: list[str] = []
    labels: list[list[float]] = []
    first_line: dict[str, int] = {}  # normalised file name -> line of its row
    for lineno, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        cells = _checked_cells(csv_path, lineno, header, row, split_idx)
        # one row per image: a second row would give it two label sets, or put it in
        # two splits (checked over every row, whichever split is read)
        key = os.path.normpath(cells[0])
        if key in first_line:
            raise FolderFormatError(
                f"{csv_path}, line {lineno}: duplicate filename {cells[0]!r} (already on "
                f"line {first_line[key]}); list each image once"
            )
        first_line[key] = lineno
        if split != "all" and split_idx is not None and cells[split_idx] != split:
            continue
        files.append(cells[0])
        labels.append([float(cells[j]) for j in col_idx])
    if not files:
        raise EmptySplitError(f"{csv_path}: no images for split {split!r} (its "
                              f"\"split\" column holds train / val / test)")
    return files, labels


class ImageFolderDataset(Dataset):
    """Images listed in PATH/attributes.csv with their 0/1 labels (see the module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike,
        size: int = 128,
        attributes: str | Sequence[str] | None = None,
        split: str = "all",
    ) -> None:
        root = os.fspath(root)
        check_size_and_split(size, split)
        csv_path = _csv_path(root)
        self.root, self.size, self.split = root, size, split
        header, rows = _read_csv(csv_path)
        self.attributes = _requested_attributes(csv_path, header, attributes)
        self.unsplit = SPLIT_COLUMN not in header
        files, labels = _split_rows(csv_path, header, rows, self.attributes, split)
        self.files = files
        self.labels = torch.from_numpy(np.array(labels, dtype=np.float32)).reshape(
            len(files), len(self.attributes))
        self._paths = [self._resolve(f, csv_path) for f in files]

    def _resolve(self, name: str, csv_path: str) -> str:
        """The path of listed image ``name``: under PATH, else under PATH/images/."""
        p = os.path.join(self.root, name)
        if os.path.exists(p):
            return p
        alt = os.path.join(self.root, "images", name)
        if os.path.exists(alt):
            return alt
        raise FileNotFoundError(f"image missing: {p} (listed in {csv_path}; also looked for {alt})")

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> str:
        return self._paths[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return pil_to_input(open_rgb(self._paths[index]), self.size), self.labels[index]


def unsplit_note(data: str, ds, split: str) -> str | None:
    """A warning when ``ds`` (a folder without a split column) holds all its rows as
    ``split``, so that a val or test figure on it is measured on training images."""
    if split == "all" or not getattr(ds, "unsplit", False):
        return None
    return (f"note: {data} has no split column, so its {split} split is all its rows, the "
            f"training images included")
