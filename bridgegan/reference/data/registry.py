"""The dataset registry: each kind of dataset spec (``--data``), the class it builds and
the options that class takes. Torch-free (a class is imported when a dataset is built),
so the commands' ``--data`` option (``add_option``) is written from here too. A new
dataset is one class plus one entry in DATASETS."""
from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.utils.data import Dataset


@dataclass(frozen=True)
class DatasetKind:
    """``target``: "module:Class" in this package; ``about``: what the data is (help
    texts); ``options``: keyword options of the class besides size, attributes and split;
    ``counts``: items per split when the spec gives no ``:COUNT``, or None when the kind
    takes ``:PATH`` (a folder, required) instead."""

    target: str
    about: str
    options: tuple[str, ...]
    counts: Mapping[str, int] | None = None

    def forms(self, name: str) -> tuple[str, ...]:
        return (name, f"{name}:COUNT") if self.counts is not None else (f"{name}:PATH",)


DATASETS: dict[str, DatasetKind] = {
    "synthetic": DatasetKind(".synthetic:ProceduralFaces", "procedural faces", ("count", "seed"),
                             counts={"train": 20000, "val": 2000, "test": 2000}),
    "celeba": DatasetKind(".celeba:CelebA", "CelebA in its original layout under PATH",
                          ("split_mode", "train_count", "val_count")),
    "folder": DatasetKind(".folder:ImageFolderDataset", "PATH/attributes.csv plus images", ()),
}
SPEC_FORMS = tuple(form for name, kind in DATASETS.items() for form in kind.forms(name))


def add_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str) -> None:
    """Add ``--data SPEC`` to a command's options; ``what``: what the data is for."""
    forms = ", ".join(f"{' or '.join(kind.forms(name))} ({kind.about})"
                      for name, kind in DATASETS.items())
    parser.add_argument("--data", default="synthetic",
                        help=f"{what}: {forms} (default: %(default)s)")


def _bad_spec(spec: object, why: str) -> ValueError:
    return ValueError(
        f"bad dataset spec {spec!r}: {why}; accepted forms: {', '.join(SPEC_FORMS)} "
        f"(COUNT a positive integer, PATH a folder)"
    )


def _parse(spec: object) -> tuple[str, DatasetKind, str | None]:
    """The kind of ``spec`` (name and entry) and what follows its colon (None: no colon)."""
    if not isinstance(spec, str):
        raise _bad_spec(spec, "not a string")
    name, sep, arg = spec.strip().partition(":")
    name, arg = name.strip().lower(), arg.strip()
    if name not in DATASETS:
        raise _bad_spec(spec, f"unknown kind {name!r}")
    kind = DATASETS[name]
    if kind.counts is None and not arg:
        raise _bad_spec(spec, f"{name} needs a folder: {name}:PATH")
    # isdigit() alone takes "²" (int() refuses it) and other scripts' digits
    if kind.counts is not None and sep and (not (arg.isascii() and arg.isdigit())
                                            or int(arg) < 1):
        raise _bad_spec(spec, f"COUNT {arg!r} is not a positive integer")
    return name, kind, (arg if sep else None)


def dataset_options(spec: str, **given) -> dict:
    """The options in ``given`` that the kind of ``spec`` takes (e.g. seed for synthetic,
    split_mode for celeba); raises ValueError on a bad spec."""
    _, kind, _ = _parse(spec)
    return {k: v for k, v in given.items() if k in kind.options}


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
    and folders). Extra keyword arguments go to the dataset class (its kind's options,
    e.g. seed for synthetic; split_mode, train_count, val_count for CelebA).
    """
    name, kind, arg = _parse(spec)
    args: tuple[str, ...] = ()
    if kind.counts is None:
        args = (arg,)
    else:
        if arg is None and split not in kind.counts:
            raise ValueError(f"split must be one of {sorted(kind.counts)} for {name} data, "
                             f"got {split!r}")
        kw.setdefault("count", int(arg) if arg is not None else kind.counts[split])
    module, _, cls = kind.target.partition(":")
    return getattr(importlib.import_module(module, __package__), cls)(
        *args, size=size, attributes=attributes, split=split, **kw)
