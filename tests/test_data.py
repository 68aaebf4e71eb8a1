"""Datasets: procedural faces, CelebA (original file formats), folder + CSV, make_dataset, save_grid."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bridgegan.cli import main
from bridgegan.reference.attributes import CELEBA_ATTRIBUTES, HAIR_COLOURS, PRESETS
from bridgegan.reference.data import (
    PROCEDURAL_ATTRIBUTES,
    CelebA,
    DATASETS,
    ImageFolderDataset,
    SPEC_FORMS,
    ProceduralFaces,
    dataset_options,
    make_dataset,
    procedural_batch,
    save_grid,
)
from bridgegan.reference.data.celeba import CelebAFormatError
from bridgegan.reference.data.folder import FolderFormatError

# ----------------------------------------------------------------------------------------
# Procedural faces
# ----------------------------------------------------------------------------------------


def test_procedural_attributes_cover_presets():
    assert len(set(PROCEDURAL_ATTRIBUTES)) == len(PROCEDURAL_ATTRIBUTES)
    assert set(PROCEDURAL_ATTRIBUTES) <= set(CELEBA_ATTRIBUTES)
    for preset in ("bridgegan", "stargan", "attgan"):
        ds = ProceduralFaces(size=64, count=4, attributes=preset)
        assert ds.attributes == PRESETS[preset]


def test_procedural_determinism():
    a = ProceduralFaces(size=64, count=10, seed=3)
    b = ProceduralFaces(size=64, count=10, seed=3)
    for i in (0, 7, 3):  # any order, on demand
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = ProceduralFaces(size=64, count=10, seed=4)
    assert not torch.equal(a[0][0], c[0][0])
    assert not torch.equal(a[0][0], a[1][0])
    val = ProceduralFaces(size=64, count=10, seed=3, split="val")
    assert not torch.equal(a[0][0], val[0][0])


def test_procedural_same_across_processes():
    code = (
        "from bridgegan.reference.data import ProceduralFaces;"
        "x, y = ProceduralFaces(size=64, count=6, seed=11)[5];"
        "print(repr(float(x.double().sum())), repr(float((x.double() ** 2).sum())), y.tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    x, y = ProceduralFaces(size=64, count=6, seed=11)[5]
    assert out == f"{float(x.double().sum())!r} {float((x.double() ** 2).sum())!r} {y.tolist()}"


@pytest.mark.parametrize("size", [64, 128, 256, 48])
def test_procedural_shapes_and_range(size):
    ds = ProceduralFaces(size=size, count=3, seed=0)
    x, y = ds[2]
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    assert y.shape == (len(PROCEDURAL_ATTRIBUTES),) and y.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert x.std() > 0.1  # not a flat image
    assert set(y.unique().tolist()) <= {0.0, 1.0}


def test_procedural_labels_property_and_rules():
    ds = ProceduralFaces(size=64, count=400, seed=1)
    labels = ds.labels
    assert labels.shape == (400, len(PROCEDURAL_ATTRIBUTES))
    for i in (0, 17, 399):
        assert torch.equal(labels[i], ds[i][1])
    col = {n: labels[:, PROCEDURAL_ATTRIBUTES.index(n)] for n in PROCEDURAL_ATTRIBUTES}
    hair = torch.stack([col[h] for h in HAIR_COLOURS], 1)
    assert torch.all(hair.sum(1) == 1), "exactly one hair colour per face"
    male = col["Male"]
    for n in ("Mustache", "Goatee", "Sideburns", "Bald"):
        assert torch.all(col[n] <= male), f"{n} only for males"
    assert torch.all(col["No_Beard"] >= 1 - male)
    assert torch.all(col["Bangs"] * col["Bald"] == 0)
    assert torch.all(col["Bangs"] * col["Receding_Hairline"] == 0)
    # every attribute takes both values
    for n in PROCEDURAL_ATTRIBUTES:
        assert 0.02 < float(col[n].mean()) < 0.98, n
    # subset labels are columns of the full labels
    sub = ProceduralFaces(size=64, count=400, seed=1, attributes="Male,Smiling")
    assert torch.equal(sub.labels, labels[:, [PROCEDURAL_ATTRIBUTES.index("Male"),
                                                PROCEDURAL_ATTRIBUTES.index("Smiling")]])


def _hair_patch(x: torch.Tensor) -> torch.Tensor:
    """Mean RGB just above the forehead (hair or fringe for every non-bald face)."""
    s = x.shape[-1]
    return x[:, int(0.20 * s):int(0.25 * s), int(0.44 * s):int(0.56 * s)].mean((1, 2))


def test_procedural_hair_colour_visible():
    ds = ProceduralFaces(size=64, count=60, seed=2)
    labels = ds.labels
    blond = PROCEDURAL_ATTRIBUTES.index("Blond_Hair")
    black = PROCEDURAL_ATTRIBUTES.index("Black_Hair")
    bald = PROCEDURAL_ATTRIBUTES.index("Bald")
    means = {"blond": [], "black": []}
    for i in range(60):
        if labels[i, bald]:
            continue
        if labels[i, blond]:
            means["blond"].append(_hair_patch(ds[i][0]).mean())
        elif labels[i, black]:
            means["black"].append(_hair_patch(ds[i][0]).mean())
    assert means["blond"] and means["black"]
    assert min(means["blond"]) > max(means["black"]) + 0.3
    # the same identity edited: blond vs black
    xb, yb = ds.render(0, {"Blond_Hair": 1, "Bald": 0})
    xk, yk = ds.render(0, {"Black_Hair": 1, "Bald": 0})
    assert yb[blond] == 1 and yb[black] == 0 and yk[black] == 1 and yk[blond] == 0
    assert _hair_patch(xb).mean() > _hair_patch(xk).mean() + 0.8


def test_procedural_edits_are_local():
    ds = ProceduralFaces(size=64, count=5, seed=5)
    x0, _ = ds.render(1, {"Eyeglasses": 0})
    x1, y1 = ds.render(1, {"Eyeglasses": 1})
    assert y1[PROCEDURAL_ATTRIBUTES.index("Eyeglasses")] == 1
    diff = (x1 - x0).abs().sum(0)
    assert diff.sum() > 20  # frames are visible
    rows = diff.sum(1).nonzero().flatten()
    assert rows.min() > 64 * 0.25 and rows.max() < 64 * 0.6  # only around the eyes
    # nuisance (background corners, lighting) is unchanged by an edit
    for name in ("Smiling", "Male", "Pale_Skin", "Bangs"):
        v = float(ds.full_labels(1)[PROCEDURAL_ATTRIBUTES.index(name)])
        xe, _ = ds.render(1, {name: 1 - int(v)})
        assert not torch.equal(xe, ds[1][0]), name
        assert torch.equal(xe[:, :4, :4], x0[:, :4, :4]), name


def test_render_labels_draws_an_item_with_another_items_labels():
    ds = ProceduralFaces(size=32, count=6, seed=2, attributes=("Male", "Smiling", "Eyeglasses"))
    assert torch.equal(ds.render_labels(4, ds.labels[4]), ds[4][0])  # own labels: the item
    for j in range(6):
        want = dict(zip(ds.attributes, (int(v) for v in ds.labels[j])))
        assert torch.equal(ds.render_labels(4, ds.labels[j]), ds.render(4, want)[0])


def test_procedural_unknown_attribute():
    with pytest.raises(ValueError, match="supported attributes are"):
        ProceduralFaces(size=64, count=2, attributes=["Wearing_Hat"])
    with pytest.raises(ValueError, match="unknown attribute"):
        ProceduralFaces(size=64, count=2, attributes=["Nonsense"])
    with pytest.raises(ValueError, match="size"):
        ProceduralFaces(size=16, count=2)
    with pytest.raises(IndexError):
        ProceduralFaces(size=64, count=2)[2]


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3", None])
def test_procedural_bad_seed_is_refused_when_built(seed):
    """A data seed numpy cannot take (negative), or one that is not an integer, is refused
    by the constructor with a message naming the seed, not at the first item."""
    with pytest.raises(ValueError, match=r"seed \(the data seed\) must be an integer >= 0"):
        ProceduralFaces(size=32, count=2, seed=seed)
    with pytest.raises(ValueError, match="must be an integer >= 0"):
        make_dataset("synthetic:2", 32, split="test", seed=seed)
    assert ProceduralFaces(size=32, count=1, seed=np.int64(3))[0][0].shape == (3, 32, 32)


def test_procedural_batch():
    x, y = procedural_batch(5, 64, seed=0, attributes="stargan")
    assert x.shape == (5, 3, 64, 64) and y.shape == (5, 5)
    ds = ProceduralFaces(size=64, count=5, seed=0, attributes="stargan")
    assert torch.equal(x[3], ds[3][0]) and torch.equal(y[3], ds[3][1])


# ----------------------------------------------------------------------------------------
# CelebA fixture in the original file formats
# ----------------------------------------------------------------------------------------

N_CELEBA = 12


def _fmt_attr_line(name: str, vals) -> str:
    # the real file: file name, then values padded to width 2 with single/double spaces
    return name + " " + " ".join(f"{v:2d}" for v in vals) + "\n"


@pytest.fixture
def celeba_root(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, N_CELEBA + 1)]
    for n in names:
        arr = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "img_align_celeba" / n, quality=90)
    values = rng.choice([-1, 1], size=(N_CELEBA, 40))
    with open(root / "list_attr_celeba.txt", "w") as f:
        f.write(f"{N_CELEBA}\n")
        f.write(" ".join(CELEBA_ATTRIBUTES) + " \n")
        for n, v in zip(names, values):
            f.write(_fmt_attr_line(n, v))
    split = [0] * 7 + [1] * 2 + [2] * 3
    with open(root / "list_eval_partition.txt", "w") as f:
        for n, s in zip(names, split):
            f.write(f"{n} {s}\n")
    return root, names, values, split


def test_celeba_index_split(celeba_root):
    root, names, values, _ = celeba_root
    kw = dict(size=32, attributes="bridgegan", train_count=8, val_count=2)
    tr = CelebA(root, split="train", **kw)
    va = CelebA(root, split="val", **kw)
    te = CelebA(root, split="test", **kw)
    assert (len(tr), len(va), len(te)) == (8, 2, 2)
    assert tr.files == names[:8] and va.files == names[8:10] and te.files == names[10:]
    assert len(CelebA(root, split="all", **kw)) == N_CELEBA
    assert tr.attributes == PRESETS["bridgegan"]
    cols = [CELEBA_ATTRIBUTES.index(n) for n in PRESETS["bridgegan"]]
    expect = torch.tensor((values[10:][:, cols] + 1) / 2, dtype=torch.float32)
    assert torch.equal(te.labels, expect)
    assert torch.equal(te[1][1], expect[1])
    with pytest.raises(ValueError, match=f"lists {N_CELEBA} images, train_count=12, val_count=0"):
        CelebA(root, split="test", size=32, train_count=12, val_count=0)


def test_celeba_official_split(celeba_root):
    root, names, _, split = celeba_root
    sets = {s: CelebA(root, size=32, split=s, split_mode="official")
            for s in ("train", "val", "test")}
    assert sets["train"].files == [n for n, s in zip(names, split) if s == 0]
    assert sets["val"].files == [n for n, s in zip(names, split) if s == 1]
    assert sets["test"].files == [n for n, s in zip(names, split) if s == 2]
    with open(root / "list_eval_partition.txt", "w") as f:  # no test images
        f.writelines(f"{n} {min(s, 1)}\n" for n, s in zip(names, split))
    with pytest.raises(ValueError, match=r"split 'test' \(split_mode='official'\) is empty: "
                                         r".* none has code 2 in list_eval_partition.txt"):
        CelebA(root, size=32, split="test", split_mode="official")
    os.remove(root / "list_eval_partition.txt")
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt"):
        CelebA(root, size=32, split_mode="official")
    CelebA(root, size=32, train_count=8, val_count=2)  # index mode does not need it


def test_celeba_partition_duplicate_entry(celeba_root):
    """A file listed twice in the partition file is refused, not moved to the split of its
    last line (000001.jpg, training, would also be a test image)."""
    root, names, _, _ = celeba_root
    with open(root / "list_eval_partition.txt", "a") as f:
        f.write(f"{names[0]} 2\n")
    with pytest.raises(CelebAFormatError,
                       match=rf"line {N_CELEBA + 1}: duplicate file name '{names[0]}' "
                             r"\(already on line 1\)"):
        CelebA(root, size=32, split="test", split_mode="official")


def test_celeba_crop_resize(celeba_root):
    root, names, _, _ = celeba_root
    ds = CelebA(root, size=64, split="all")
    x, _ = ds[3]
    with Image.open(root / "img_align_celeba" / names[3]) as im:
        ref = im.convert("RGB").crop((3, 26, 173, 196)).resize((64, 64), Image.BICUBIC)
    ref_t = torch.from_numpy(np.asarray(ref, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert torch.allclose(x, ref_t, atol=1e-6)
    assert x.min() >= -1 and x.max() <= 1


def test_celeba_attribute_selection(celeba_root):
    root, _, values, _ = celeba_root
    for spec in ("stargan", ["Smiling", "Male"], "Eyeglasses,Pale_Skin,Young"):
        ds = CelebA(root, size=32, attributes=spec, split="all")
        names = PRESETS[spec] if spec == "stargan" else (
            tuple(spec) if isinstance(spec, list) else tuple(spec.split(",")))
        assert ds.attributes == names
        cols = [CELEBA_ATTRIBUTES.index(n) for n in names]
        assert torch.equal(ds.labels, torch.tensor((values[:, cols] + 1) / 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="valid names are"):
        CelebA(root, size=32, attributes=["Smiling", "Has_Cat"])


def _rewrite_attr(root, edit):
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines(keepends=True)
    edit(lines)
    path.write_text("".join(lines))
    return str(path)


def test_celeba_bad_count_line(celeba_root):
    root = celeba_root[0]
    path = _rewrite_attr(root, lambda ls: ls.__setitem__(0, "twelve\n"))
    with pytest.raises(CelebAFormatError, match=r"line 1") as e:
        CelebA(root, size=32)
    assert path in str(e.value)


def test_celeba_count_line_of_non_ascii_digits(celeba_root):
    root = celeba_root[0]
    path = _rewrite_attr(root, lambda ls: ls.__setitem__(0, "\u00b9\u00b2\n"))  # superscript 12
    with pytest.raises(CelebAFormatError, match=r"line 1: expected the number of images") as e:
        CelebA(root, size=32)
    assert path in str(e.value)


def test_celeba_count_mismatch(celeba_root):
    root = celeba_root[0]
    _rewrite_attr(root, lambda ls: ls.__setitem__(0, "13\n"))
    with pytest.raises(CelebAFormatError, match="declares 13 images but the file lists 12"):
        CelebA(root, size=32)


def test_celeba_wrong_value_count(celeba_root):
    root = celeba_root[0]

    def drop_value(ls):
        ls[4] = ls[4].rstrip("\n").rsplit(" ", 1)[0] + "\n"  # line 5 loses its last value
    path = _rewrite_attr(root, drop_value)
    with pytest.raises(CelebAFormatError, match=r"line 5: expected a file name and 40 values, got 39") as e:
        CelebA(root, size=32)
    assert path in str(e.value)


def test_celeba_bad_value(celeba_root):
    root = celeba_root[0]
    _rewrite_attr(root, lambda ls: ls.__setitem__(6, ls[6].replace(" 1", " 0", 1)))
    with pytest.raises(CelebAFormatError, match=r"line 7: value '0' for .* is not -1 or 1"):
        CelebA(root, size=32)


def test_celeba_bad_header(celeba_root):
    root = celeba_root[0]
    _rewrite_attr(root, lambda ls: ls.__setitem__(1, ls[1].replace("Smiling", "Smiles")))
    with pytest.raises(CelebAFormatError, match=r"line 2: .*missing \['Smiling'\].*'Smiles'"):
        CelebA(root, size=32)


def test_celeba_missing_files(celeba_root, tmp_path):
    root, names, _, _ = celeba_root
    with pytest.raises(FileNotFoundError, match="root folder not found"):
        CelebA(tmp_path / "nowhere", size=32)
    missing = root / "img_align_celeba" / names[10]
    os.remove(missing)
    # only the selected split is checked
    CelebA(root, size=32, split="train", train_count=8, val_count=2)
    with pytest.raises(FileNotFoundError, match="CelebA image missing") as e:
        CelebA(root, size=32, split="test", train_count=8, val_count=2)
    assert str(missing) in str(e.value)
    os.remove(root / "list_attr_celeba.txt")
    with pytest.raises(FileNotFoundError, match="list_attr_celeba.txt"):
        CelebA(root, size=32)


def test_celeba_wrong_image_size(celeba_root):
    root, names, _, _ = celeba_root
    Image.new("RGB", (100, 100)).save(root / "img_align_celeba" / names[0])
    ds = CelebA(root, size=32, split="all")
    with pytest.raises(ValueError, match=r"178x218, got 100x100"):
        ds[0]


# ----------------------------------------------------------------------------------------
# Folder + CSV
# ----------------------------------------------------------------------------------------


@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "faces"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (80, 80, 4), dtype=np.uint8), "RGBA").save(root / "b.png")
    Image.fromarray(rng.integers(0, 256, (90, 50), dtype=np.uint8), "L").save(
        root / "images" / "c.jpg")
    (root / "attributes.csv").write_text(
        "filename,Smiling,Male,Young\n"
        "a.png,1,0,1\n"
        "b.png, 0 ,1,1\n"
        "\n"
        "c.jpg,0,0,0\n"
    )
    return root


def test_folder_loads(folder_root):
    ds = ImageFolderDataset(folder_root, size=32)
    assert ds.attributes == ("Smiling", "Male", "Young") and len(ds) == 3
    assert torch.equal(ds.labels, torch.tensor([[1., 0, 1], [0, 1, 1], [0, 0, 0]]))
    for i in range(3):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
    # centre crop of the 100x60 image, then bicubic resize
    with Image.open(folder_root / "a.png") as im:
        ref = im.convert("RGB").crop((20, 0, 80, 60)).resize((32, 32), Image.BICUBIC)
    ref_t = torch.from_numpy(np.asarray(ref, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert torch.allclose(ds[0][0], ref_t, atol=1e-6)
    sub = ImageFolderDataset(folder_root, size=32, attributes=["Young", "Smiling"])
    assert torch.equal(sub.labels[:, 0], ds.labels[:, 2])
    with pytest.raises(ValueError, match="not columns of the CSV"):
        ImageFolderDataset(folder_root, size=32, attributes=["Bangs"])


def test_folder_split_column(folder_root):
    (folder_root / "attributes.csv").write_text(
        "filename,Smiling,split\na.png,1,train\nb.png,0,test\nc.jpg,0,train\n")
    assert len(ImageFolderDataset(folder_root, size=32, split="train")) == 2
    assert ImageFolderDataset(folder_root, size=32, split="test").files == ["b.png"]
    assert len(ImageFolderDataset(folder_root, size=32)) == 3
    assert not ImageFolderDataset(folder_root, size=32, split="test").unsplit


def test_folder_without_split_column_is_named_in_val_and_test_figures(folder_root, capsys):
    """Without a split column, val and test are all rows: train-classifier and eval say so."""
    from bridgegan.reference.data.folder import unsplit_note

    spec = f"folder:{folder_root}"
    test = ImageFolderDataset(folder_root, size=32, split="test")
    assert test.unsplit and len(test) == 3
    assert unsplit_note(spec, test, "test") == (
        f"note: {spec} has no split column, so its test split is all its rows, the training "
        f"images included")
    assert unsplit_note(spec, test, "all") is None
    assert main(["train-classifier", "--data", spec, "--resolution", "32", "--steps", "1",
                 "--batch", "2", "--width", "4", "--out", str(folder_root.parent / "clf")]) == 0
    assert unsplit_note(spec, test, "val") in capsys.readouterr().out


@pytest.mark.parametrize("body,pattern", [
    ("filename,Smiling,Male\na.png,1,0\nb.png,1\n", r"line 3: expected 3 fields"),
    ("filename,Smiling,Male\na.png,1,0\nb.png,2,0\n", r"line 3: value '2' for Smiling is not 0 or 1"),
    ("filename,Smiling,Male\na.png,-1,0\n", r"line 2: value '-1'"),
    ("name,Smiling\na.png,1\n", r"line 1: the first column must be 'filename'"),
    ("filename,Smiling,Cat\na.png,1,0\n", r"line 1: column\(s\) \['Cat'\] are not CelebA"),
    # one image, two label sets
    ("filename,Smiling\na.png,1\nb.png,0\na.png,0\n",
     r"line 4: duplicate filename 'a.png' \(already on line 2\)"),
    # one image in two splits (train / test leak), spelled two ways
    ("filename,Smiling,split\na.png,1,train\n./a.png,1,test\n",
     r"line 3: duplicate filename './a.png' \(already on line 2\)"),
])
def test_folder_malformed(folder_root, body, pattern):
    (folder_root / "attributes.csv").write_text(body)
    with pytest.raises(FolderFormatError, match=pattern) as e:
        ImageFolderDataset(folder_root, size=32)
    assert "attributes.csv" in str(e.value)


def test_folder_missing(folder_root, tmp_path):
    (folder_root / "attributes.csv").write_text("filename,Smiling\na.png,1\nzz.png,0\n")
    with pytest.raises(FileNotFoundError, match=r"image missing: .*zz\.png"):
        ImageFolderDataset(folder_root, size=32)
    with pytest.raises(FileNotFoundError, match="attributes.csv"):
        ImageFolderDataset(tmp_path, size=32)
    with pytest.raises(ValueError, match="unknown attribute"):
        ImageFolderDataset(folder_root, size=32, attributes=["Smilling"])


def test_folder_corrupt_image(folder_root):
    (folder_root / "a.png").write_bytes(b"not an image")
    ds = ImageFolderDataset(folder_root, size=32)
    with pytest.raises(ValueError, match=r"cannot read image file .*a\.png"):
        ds[0]


# ----------------------------------------------------------------------------------------
# make_dataset and save_grid
# ----------------------------------------------------------------------------------------


def test_make_dataset(celeba_root, folder_root):
    ds = make_dataset("synthetic", 64, None)
    assert isinstance(ds, ProceduralFaces) and len(ds) == 20000
    assert ds.attributes == PROCEDURAL_ATTRIBUTES
    ds = make_dataset("synthetic:50", 64, "stargan", split="val", seed=3)
    assert len(ds) == 50 and ds.attributes == PRESETS["stargan"] and ds.split == "val"
    ds = make_dataset(f"celeba:{celeba_root[0]}", 32, "stargan", split="test",
                      train_count=8, val_count=2)
    assert isinstance(ds, CelebA) and len(ds) == 2
    ds = make_dataset(f"folder:{folder_root}", 32, "Smiling")
    assert isinstance(ds, ImageFolderDataset) and ds.attributes == ("Smiling",)
    for bad in ("imagenet", "synthetic:abc", "synthetic:0", "celeba:", "celeba", "folder", "",
                "synthetic:\u00b2", "synthetic:\u0663"):  # superscript 2, Arabic-Indic 3
        with pytest.raises(ValueError, match="accepted forms: synthetic, synthetic:COUNT"):
            make_dataset(bad, 64)


def test_every_dataset_kind_pickles(celeba_root, folder_root):
    """DataLoader workers that do not fork (spawn on macOS and Windows, forkserver on
    Linux from Python 3.14) unpickle their dataset: every kind's copy yields the same
    items."""
    import pickle

    assert set(DATASETS) == {"synthetic", "celeba", "folder"}  # a new kind joins this test
    for ds in (make_dataset("synthetic:6", 32, None, seed=4),
               make_dataset(f"celeba:{celeba_root[0]}", 32, "stargan", train_count=8, val_count=2),
               make_dataset(f"folder:{folder_root}", 32, "Smiling")):
        copy = pickle.loads(pickle.dumps(ds))
        for i in (0, len(ds) - 1):
            assert all(torch.equal(a, b) for a, b in zip(copy[i], ds[i]))


def test_dataset_options_are_those_of_the_kind(celeba_root, folder_root):
    assert dataset_options("synthetic:8", seed=3, split_mode="index") == {"seed": 3}
    assert dataset_options(f"celeba:{celeba_root[0]}", seed=3, split_mode="index") == {
        "split_mode": "index"}
    assert dataset_options(f"folder:{folder_root}", seed=3, split_mode="index") == {}
    with pytest.raises(ValueError, match="accepted forms: " + ", ".join(SPEC_FORMS)):
        dataset_options("imagenet", seed=3)


def test_save_grid(tmp_path):
    imgs = torch.zeros(5, 3, 16, 20)
    imgs[0] = -1.0
    imgs[1] = 1.0
    imgs[2, 0] = 1.0  # red
    out = tmp_path / "sub" / "grid.png"
    w, h = save_grid(imgs, out, nrow=3, padding=2)
    assert (w, h) == (3 * 20 + 4 * 2, 2 * 16 + 3 * 2)
    with Image.open(out) as im:
        assert im.size == (w, h) and im.mode == "RGB"
        arr = np.asarray(im)
    assert (arr[2:18, 2:22] == 0).all()
    assert (arr[2:18, 24:44] == 255).all()
    assert tuple(arr[5, 50]) == (255, 128, 128)
    assert os.listdir(out.parent) == ["grid.png"]  # no temporary file left
    with pytest.raises(ValueError, match="NaN"):
        save_grid(torch.full((1, 3, 4, 4), float("nan")), tmp_path / "nan.png")
    assert not (tmp_path / "nan.png").exists()


@pytest.mark.parametrize("split_mode", ["official", "index"])
def test_celeba_without_images_says_so_in_every_split_mode(tmp_path, split_mode):
    """An attribute file listing no images: every split is empty, a ValueError (split
    "all" in official mode read the partition code it never set: UnboundLocalError)."""
    from bridgegan.reference.data.celeba import ATTR_FILE, IMAGE_DIR, PARTITION_FILE

    (tmp_path / IMAGE_DIR).mkdir()
    (tmp_path / ATTR_FILE).write_text("0\n" + " ".join(CELEBA_ATTRIBUTES) + "\n")
    (tmp_path / PARTITION_FILE).write_text("")
    with pytest.raises(ValueError, match=r"split 'all' .* lists 0 images, no image to split"):
        CelebA(tmp_path, size=32, split="all", split_mode=split_mode)


def test_celeba_columns_are_read_by_their_header_names(celeba_root):
    """The header's names say which column is which: a file whose columns come in another
    order (the 40 names shuffled, each row's values with them) gives the same labels."""
    root, names, values, _ = celeba_root
    order = np.random.default_rng(21).permutation(40)
    path = root / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    body = [lines[0], " ".join(CELEBA_ATTRIBUTES[j] for j in order)]
    body += [n + " " + " ".join(str(int(v)) for v in row[order]) for n, row in zip(names, values)]
    path.write_text("\n".join(body) + "\n")
    ds = CelebA(root, size=32, attributes="attgan", split="all")
    cols = [CELEBA_ATTRIBUTES.index(n) for n in ds.attributes]
    assert torch.equal(ds.labels, torch.tensor((values[:, cols] + 1) / 2, dtype=torch.float32))


def test_procedural_bald_faces_have_no_receding_hairline():
    """Receding_Hairline is drawn among the non-bald only (a fifth of them)."""
    labels = ProceduralFaces(size=32, count=2000, seed=22).labels
    col = {n: labels[:, PROCEDURAL_ATTRIBUTES.index(n)] for n in PROCEDURAL_ATTRIBUTES}
    assert torch.all(col["Bald"] * col["Receding_Hairline"] == 0)
    assert col["Bald"].sum() > 100
    rate = col["Receding_Hairline"][col["Bald"] == 0].mean().item()
    assert abs(rate - 0.2) < 0.03
