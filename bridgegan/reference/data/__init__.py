"""Datasets: the embedded procedural faces, CelebA, and a folder of images with a CSV.

Every dataset returns (image float32 (3, S, S) in [-1, 1], labels float32 (A,) of 0/1 in
the order of its ``.attributes``) and exposes ``.attributes`` (tuple of names),
``.labels`` ((len, A) float tensor of all labels) and ``__len__``.

``make_dataset(spec, size, attributes, split)`` builds one from a string:

    synthetic          ProceduralFaces (20,000 train items; 2,000 for val / test)
    synthetic:COUNT    ProceduralFaces with COUNT items
    celeba:PATH        CelebA in its original layout under PATH
    folder:PATH        PATH/attributes.csv plus images (see folder.py)
"""
from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from .celeba import CelebA, CelebAFormatError
from .folder import FolderFormatError, ImageFolderDataset
from .grid import make_grid, save_grid, save_png
from .image import load_image, tensor_to_uint8

# The synthetic module is imported lazily (PEP 562) so that
# `python -m bridgegan.reference.data.synthetic` runs it without a double import.
_SYNTHETIC_NAMES = (
    "PROCEDURAL_ATTRIBUTES", "ProceduralFaces", "attribute_sweep", "procedural_batch",
    "render_face",
)


def __getattr__(name: str):
    if name in _SYNTHETIC_NAMES:
        from . import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SPEC_FORMS = ("synthetic", "synthetic:COUNT", "celeba:PATH", "folder:PATH")
SYNTHETIC_DEFAULT_COUNT = {"train": 20000, "val": 2000, "test": 2000}


def _bad_spec(spec: object, why: str) -> ValueError:
    return ValueError(
        f"bad dataset spec {spec!r}: {why}; accepted forms: {', '.join(SPEC_FORMS)} "
        f"(COUNT a positive integer, PATH a folder)"
    )


def make_dataset(
    spec: str,
    size: int,
    attributes: str | Sequence[str] | None = None,
    split: str = "train",
    **kw,
) -> Dataset:
    """Build a dataset from ``spec`` (see SPEC_FORMS).

    ``attributes``: a preset name, a comma list or a sequence of names; None takes the
    dataset's default (PROCEDURAL_ATTRIBUTES, CelebA's "bridgegan" preset, or every
    column of the folder's CSV). ``split``: "train", "val" or "test" ("all" for CelebA
    and folders). Extra keyword arguments go to the dataset class (e.g. seed for
    synthetic; split_mode, train_count, val_count for CelebA).
    """
    if not isinstance(spec, str):
        raise _bad_spec(spec, "not a string")
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "synthetic":
        if sep:
            arg = arg.strip()
            if not arg.isdigit() or int(arg) < 1:
                raise _bad_spec(spec, f"COUNT {arg!r} is not a positive integer")
            count = int(arg)
        else:
            if split not in SYNTHETIC_DEFAULT_COUNT:
                raise ValueError(
                    f"split must be one of {sorted(SYNTHETIC_DEFAULT_COUNT)} for synthetic "
                    f"data, got {split!r}"
                )
            count = SYNTHETIC_DEFAULT_COUNT[split]
        if "count" in kw:
            count = kw.pop("count")
        from .synthetic import ProceduralFaces

        return ProceduralFaces(size=size, count=count, attributes=attributes, split=split, **kw)
    if kind in ("celeba", "folder"):
        if not sep or not arg.strip():
            raise _bad_spec(spec, f"{kind} needs a folder: {kind}:PATH")
        if kind == "celeba":
            return CelebA(arg.strip(), size=size, attributes=attributes, split=split, **kw)
        return ImageFolderDataset(arg.strip(), size=size, attributes=attributes, split=split, **kw)
    raise _bad_spec(spec, f"unknown kind {kind!r}")


__all__ = [
    "CelebA", "CelebAFormatError", "FolderFormatError", "ImageFolderDataset",
    "PROCEDURAL_ATTRIBUTES", "ProceduralFaces", "SPEC_FORMS", "attribute_sweep",
    "load_image", "make_dataset", "make_grid", "procedural_batch", "render_face",
    "save_grid", "save_png", "tensor_to_uint8",
]
