"""Datasets: the embedded procedural faces, CelebA, and a folder of images with a CSV.

Every dataset returns (image float32 (3, S, S) in [-1, 1], labels float32 (A,) of 0/1 in
the order of its ``.attributes``) and exposes ``.attributes`` (tuple of names),
``.labels`` ((len, A) float tensor of all labels) and ``__len__``.

``make_dataset(spec, size, attributes, split)`` builds one from a string such as
``synthetic:COUNT`` or ``celeba:PATH``; ``registry`` lists the kinds (SPEC_FORMS).

The names below are imported on first use (PEP 562): the registry without torch, and
``python -m bridgegan.reference.data.synthetic`` without a double import.
"""
from ...lazy import lazy_exports

_EXPORTS = {
    ".celeba": ("CelebA", "CelebAFormatError"),
    ".folder": ("FolderFormatError", "ImageFolderDataset"),
    ".grid": ("make_grid", "save_grid", "save_png"),
    ".image": ("tensor_to_uint8",),
    ".registry": ("DATASETS", "SPEC_FORMS", "dataset_options", "make_dataset"),
    ".synthetic": ("PROCEDURAL_ATTRIBUTES", "ProceduralFaces", "attribute_sweep",
                   "procedural_batch", "render_face"),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
