"""ProceduralFaces: an embedded, deterministic cartoon-face dataset with CelebA attribute names.

Every item ``i`` is generated on demand from its own random generator seeded with
``(seed, split, i)``, so any item is identical across runs, processes and DataLoader
workers, and nothing is cached. ``face_drawing.render_face`` draws a face from its labels
and nuisance uniforms, one part at a time.

Attributes (``PROCEDURAL_ATTRIBUTES``, the default list) and how they are drawn:

    Young                 0: forehead lines, nose-to-mouth folds, crow's feet, eye bags
    Mouth_Slightly_Open   dark open mouth (with teeth)
    Smiling               mouth corners curve up (open: a wide grin)
    Black_Hair, Blond_Hair, Brown_Hair, Gray_Hair
                          hair colour, exactly one is set when sampled (none set renders
                          auburn hair, as CelebA's "other" colours)
    Receding_Hairline     hairline pushed up at the temples (M shape)
    Bangs                 a fringe over the forehead, down to the eyebrows
    Male                  short hair and a squarer jaw, thicker brows and neck; 0: long
                          hair down to the shoulders, rounder chin, lashes, redder lips
    No_Beard              0: a full (semi-transparent) beard along the jaw and chin
    Mustache              a moustache over the upper lip
    Goatee                a solid patch on the chin under the mouth
    Sideburns             strips of hair in front of the ears, down to the ear lobes
    Bald                  no hair on top (only a fringe above the ears) and a shiny scalp
    Bushy_Eyebrows        thick, wide eyebrows
    Eyeglasses            dark frames around the eyes, arms to the ears
    Pale_Skin             very light skin (otherwise a light-to-dark brown range)

Nuisance factors that an edit should preserve: face position (small shifts), head size,
oval width and height, skin tone within its class, background colour, clothes colour,
eye size / spacing / iris colour, mouth width, lighting direction and strength.

Sampling: Male, Young, Smiling, Mouth_Slightly_Open 0.5; one hair colour uniformly;
Bald 0.25 of males; Receding_Hairline 0.2 of the non-bald; Bangs 0.45 of the rest;
beard 0.4, Mustache 0.4, Goatee 0.35, Sideburns 0.4 of males (never for females);
Eyeglasses 0.35; Pale_Skin 0.3; Bushy_Eyebrows 0.3. Labels always match what is drawn.

Render the sample grids with::

    python -m bridgegan.reference.data.synthetic --out docs/procedural_faces.png --size 64 --count 48
    python -m bridgegan.reference.data.synthetic --attribute-sweep --count 6 \\
        --out docs/procedural_sweep.png
"""
from __future__ import annotations

import argparse
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..attributes import HAIR_COLOURS, apply_edits, resolve_attributes
from .face_drawing import ATTRIBUTE_INDEX as _INDEX
from .face_drawing import PARAM_NAMES, PROCEDURAL_ATTRIBUTES, render_face
from .image import uint8_to_tensor

SPLITS = {"train": 0, "val": 1, "test": 2}

_N_LABEL_U = 16
_N_U = _N_LABEL_U + len(PARAM_NAMES)


def _item_uniforms(seed: int, split_code: int, index: int) -> np.ndarray:
    return np.random.default_rng([int(seed), int(split_code), int(index)]).random(_N_U)


def _labels_from_uniforms(u: np.ndarray) -> np.ndarray:
    """All PROCEDURAL_ATTRIBUTES labels (float32 0/1) from the first _N_LABEL_U uniforms."""
    male = u[0] < 0.5
    young = u[1] < 0.5
    hair = HAIR_COLOURS[min(int(u[2] * 4), 3)]
    bald = male and u[3] < 0.25
    receding = (not bald) and u[4] < 0.2
    bangs = (not bald) and (not receding) and u[5] < 0.45
    beard = male and u[8] < 0.4
    v = {
        "Young": young,
        "Mouth_Slightly_Open": u[7] < 0.5,
        "Smiling": u[6] < 0.5,
        "Black_Hair": hair == "Black_Hair",
        "Blond_Hair": hair == "Blond_Hair",
        "Brown_Hair": hair == "Brown_Hair",
        "Gray_Hair": hair == "Gray_Hair",
        "Receding_Hairline": receding,
        "Bangs": bangs,
        "Male": male,
        "No_Beard": not beard,
        "Mustache": male and u[9] < 0.4,
        "Goatee": male and u[10] < 0.35,
        "Sideburns": male and u[11] < 0.4,
        "Bald": bald,
        "Bushy_Eyebrows": u[14] < 0.3,
        "Eyeglasses": u[12] < 0.35,
        "Pale_Skin": u[13] < 0.3,
    }
    return np.array([float(v[n]) for n in PROCEDURAL_ATTRIBUTES], dtype=np.float32)


def _check_attributes(attributes) -> tuple[str, ...]:
    if attributes is None:
        return PROCEDURAL_ATTRIBUTES
    try:
        names = resolve_attributes(attributes)
    except ValueError as exc:
        raise ValueError(
            f"{exc}\nProceduralFaces supports: {', '.join(PROCEDURAL_ATTRIBUTES)}"
        ) from None
    unsupported = [n for n in names if n not in _INDEX]
    if unsupported:
        raise ValueError(
            f"ProceduralFaces does not draw attribute(s) {unsupported}; supported attributes "
            f"are: {', '.join(PROCEDURAL_ATTRIBUTES)}"
        )
    return names


class ProceduralFaces(Dataset):
    """Deterministic procedural cartoon faces; item ``i`` depends only on (seed, split, i).

    Returns (image float32 (3, size, size) in [-1, 1], labels float32 (A,) of 0/1) with
    labels in the order of ``attributes`` (a preset name, a comma list or a sequence of
    names, all in PROCEDURAL_ATTRIBUTES; default PROCEDURAL_ATTRIBUTES). Attributes that
    are not requested still vary in the images (as unlabelled factors).
    """

    def __init__(
        self,
        size: int = 64,
        count: int = 20000,
        seed: int = 0,
        attributes: str | Sequence[str] | None = None,
        split: str = "train",
    ) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 32:
            raise ValueError(f"ProceduralFaces size must be an integer >= 32, got {size!r}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"ProceduralFaces count must be a positive integer, got {count!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        # numpy seeds an item's generator with (seed, split, index): a negative seed fails
        # there (at the first item, naming no seed) and a float would be truncated
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"ProceduralFaces seed (the data seed) must be an integer >= 0, "
                             f"got {seed!r}")
        self.size = size
        self.count = count
        self.seed = int(seed)
        self.split = split
        self.attributes = _check_attributes(attributes)
        self._cols = [_INDEX[n] for n in self.attributes]
        self._labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.count

    def _index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} items")
        return index

    def _uniforms(self, index: int) -> np.ndarray:
        return _item_uniforms(self.seed, SPLITS[self.split], index)

    def full_labels(self, index: int) -> np.ndarray:
        """All PROCEDURAL_ATTRIBUTES labels of item ``index`` (float32 numpy)."""
        return _labels_from_uniforms(self._uniforms(self._index(index)))

    @property
    def labels(self) -> torch.Tensor:
        """(len, A) float tensor of every item's labels (computed once, without drawing)."""
        if self._labels is None:
            rows = np.stack([
                _labels_from_uniforms(_item_uniforms(self.seed, SPLITS[self.split], i))
                for i in range(self.count)
            ])
            self._labels = torch.from_numpy(rows[:, self._cols].copy())
        return self._labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        u = self._uniforms(self._index(index))
        full = _labels_from_uniforms(u)
        img = render_face(full, u[_N_LABEL_U:], self.size)
        return uint8_to_tensor(img), torch.from_numpy(full[self._cols].copy())

    def render(
        self, index: int, edits: Mapping[str, float | int | bool] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``index`` with attributes set by name (ground truth for an edit).

        ``edits`` maps PROCEDURAL_ATTRIBUTES names to 0/1; the conflict rules of
        ``attributes.apply_edits`` apply (hair colours exclusive, Bald / Receding_Hairline
        clear Bangs). All nuisance factors (pose, colours, lighting...) are unchanged.
        Returns (image, labels over ``self.attributes``).
        """
        u = self._uniforms(self._index(index))
        full = _labels_from_uniforms(u)
        if edits:
            t = apply_edits(torch.from_numpy(full)[None], PROCEDURAL_ATTRIBUTES, dict(edits))
            full = t[0].numpy().astype(np.float32)
        img = render_face(full, u[_N_LABEL_U:], self.size)
        return uint8_to_tensor(img), torch.from_numpy(full[self._cols].copy())

    def render_labels(self, index: int, labels: torch.Tensor) -> torch.Tensor:
        """Item ``index`` drawn with ``labels`` (A,) over ``self.attributes`` (0/1, e.g. another
        item's labels) instead of its own, with every nuisance factor unchanged: the true
        result of translating the item to those labels (the trainer's paired target)."""
        u = self._uniforms(self._index(index))
        full = _labels_from_uniforms(u)
        full[self._cols] = (torch.as_tensor(labels, dtype=torch.float32).cpu().numpy() > 0.5)
        return uint8_to_tensor(render_face(full, u[_N_LABEL_U:], self.size))


def procedural_batch(
    n: int,
    size: int = 64,
    seed: int = 0,
    attributes: str | Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training items of ProceduralFaces(size, seed=seed) as tensors:
    images (n, 3, size, size) in [-1, 1] and labels (n, A)."""
    ds = ProceduralFaces(size=size, count=n, seed=seed, attributes=attributes)
    items = [ds[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def attribute_sweep(
    index: int = 0, size: int = 64, seed: int = 0, attributes: Sequence[str] | None = None
) -> tuple[torch.Tensor, list[str]]:
    """The item ``index`` followed by one image per attribute, that attribute flipped.

    Returns (images (1 + A, 3, size, size), captions). A hair colour that is already set
    is flipped to the next colour in HAIR_COLOURS rather than to "none".
    """
    ds = ProceduralFaces(size=size, count=index + 1, seed=seed)
    names = _check_attributes(attributes)
    full = ds.full_labels(index)
    images = [ds[index][0]]
    captions = ["original"]
    for n in names:
        value = full[_INDEX[n]]
        if n in HAIR_COLOURS and value > 0.5:
            nxt = HAIR_COLOURS[(HAIR_COLOURS.index(n) + 1) % len(HAIR_COLOURS)]
            edits, cap = {nxt: 1}, f"{nxt}=1"
        else:
            edits, cap = {n: 1 - int(value)}, f"{n}={1 - int(value)}"
        images.append(ds.render(index, edits)[0])
        captions.append(cap)
    return torch.stack(images), captions


def main(argv: Sequence[str] | None = None) -> int:
    from .grid import save_grid

    ap = argparse.ArgumentParser(
        prog="python -m bridgegan.reference.data.synthetic",
        description="Render a grid of procedural faces (rows of faces, no captions).",
    )
    ap.add_argument("--out", required=True, help="output PNG path")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--count", type=int, default=48, help="number of faces (grid mode)")
    ap.add_argument("--nrow", type=int, default=None, help="faces per row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attribute-sweep", action="store_true",
                    help="rows: one identity, then each attribute flipped (first column "
                         "the original); --count identities")
    args = ap.parse_args(argv)
    if args.attribute_sweep:
        rows = []
        for i in range(args.count):
            imgs, caps = attribute_sweep(i, args.size, args.seed)
            rows.append(imgs)
        images = torch.cat(rows)
        nrow = rows[0].shape[0]
        print("columns: original, then each attribute flipped (a set hair colour goes to "
              "the next one):", ", ".join(PROCEDURAL_ATTRIBUTES))
    else:
        images, _ = procedural_batch(args.count, args.size, args.seed)
        nrow = args.nrow or 8
    w, h = save_grid(images, args.out, nrow=args.nrow or nrow)
    print(f"wrote {args.out} ({w}x{h})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
