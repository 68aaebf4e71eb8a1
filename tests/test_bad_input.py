"""Bad input to the Engine API, image files, configs, checkpoints and `translate` is refused
with a ValueError naming the problem and what is accepted: never NaN images, never a raw
torch / Python error. Two seeded fuzz tests (hypothesis, 150 cases each) check that every
input either works or raises a ValueError with a message."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import threading
import warnings
import zlib
from importlib.util import find_spec

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from bridgegan.cli import main
from bridgegan.engine import Engine
from bridgegan.engine.options import MAX_SAMPLES
from bridgegan.reference import BridgeGAN, BridgeGANConfig, CheckpointError, save_checkpoint
from bridgegan.reference.checkpoint import WEIGHTS_FILE, load_checkpoint
from bridgegan.reference.data import image
from conftest import SMALL_ATTRS, images, labels, randomize, small_config

S = 32
N_ATTRS = len(SMALL_ATTRS)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize(BridgeGAN(small_config(S))).eval()


@pytest.fixture(scope="module")
def eng(model):
    return Engine(model)


def png_header(w: int, h: int) -> bytes:
    """A PNG holding only its header (size w x h) and an empty IDAT: cheap to write at any
    size, and decoding it would fail, so a refusal from it happened before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


# ----- Engine API --------------------------------------------------------------------
def calls(eng, x, **kw):
    """Each API method that takes ``kw``, on a valid batch ``x``."""
    out = {"translate": lambda: eng.translate(x, {"Male": 1}, **kw),
           "interpolate": lambda: eng.interpolate(x, x, {"Male": 1}, [0.5], **kw)}
    if "seed" not in kw and "noise" not in kw:
        out["translate_reference"] = lambda: eng.translate_reference(x, x, **kw)
    return out


BOUNDED = r"strength must be finite and within \[-10, 10\], got "


@pytest.mark.parametrize("strength, message", [
    (math.nan, BOUNDED + "nan"), (math.inf, BOUNDED + "inf"), (-math.inf, BOUNDED + "-inf"),
    (3e38, BOUNDED + r"3e\+38"), (11, BOUNDED + "11"),
    ("1.5", "strength must be a number, got '1.5'"), (True, "strength must be a number, got True"),
    # numpy's complex and bool were read as their real part and as 1 (with a warning at most);
    # torch's complex and meta tensors raised RuntimeErrors
    (np.complex128(1 + 5j), r"strength must be a number, got np.complex128\(1\+5j\)|"
                            r"strength must be a number, got \(1\+5j\)"),
    (np.bool_(True), "strength must be a number, got (np.)?(True|bool_)"),
    (torch.tensor(True), r"strength must be a number, got tensor\(True\)"),
    (torch.tensor(1 + 0j), r"strength must be a number, got tensor\(1\.\+0\.j\)"),
    (torch.tensor(1.0, device="meta"), "strength must be a number, got tensor"),
])
def test_strength_must_be_a_finite_number(eng, strength, message):
    x = images(2, S)
    for call in calls(eng, x, strength=strength).values():
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match=message):
        eng.edit_strip(x[:1], samples=1, strength=strength)
    with pytest.raises(ValueError, match=message):
        eng.translate_samples(x, {"Male": 1}, 2, strength=strength)


@pytest.mark.parametrize("value", [math.nan, math.inf, 3e38, -2e4])
def test_noise_must_be_finite_and_bounded(eng, value):
    x = images(2, S)
    noise = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    noise[1, 3] = value
    for call in calls(eng, x, noise=noise).values():
        with pytest.raises(ValueError, match=r"noise must be finite and within \[-10000, 10000\]"):
            call()
    with pytest.raises(ValueError, match="noise must be a tensor, array or nested list of numbers"):
        eng.translate(x, {"Male": 1}, noise="abc")
    assert torch.isfinite(eng.translate(x, {"Male": 1}, noise=torch.full((2, 8), -1e4))).all()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_images_must_be_finite(eng, value):
    x = images(2, S)
    x[1, 2, 3, 4] = value
    with pytest.raises(ValueError, match="images: contain NaN or Inf values"):
        eng.translate(x, {"Male": 1}, seed=0)


@pytest.mark.parametrize("value", [-1.5, 1.01])
def test_images_must_lie_in_range(eng, value):
    x = images(2, S)
    x[0, 0, 0, 0] = value
    with pytest.raises(ValueError, match=r"images: values must lie in \[-1, 1\] in every channel "
                                         r"\(RGBA alpha included\), got \[.*\] \(map 0..255"):
        eng.translate(x, {"Male": 1}, seed=0)


@pytest.mark.parametrize("model_arg", ["checkpoints/model", None])
def test_engine_takes_a_model_and_names_from_checkpoint(model_arg):
    with pytest.raises(ValueError, match=r"model must be a BridgeGAN .*Engine\.from_checkpoint"):
        Engine(model_arg)


def test_float64_images_beyond_float32_are_out_of_range_not_inf(eng):
    x = images(2, S).double()
    x[0, 0, 0, 0] = 1e39  # finite, but inf in float32
    with pytest.raises(ValueError, match=r"images: values must lie in \[-1, 1\].*got "
                                         r"\[.*, 1e\+39\]"):
        eng.translate(x, {"Male": 1}, seed=0)


@pytest.mark.parametrize("alpha", [3.0, 255.0, -1.5, math.nan])
def test_rgba_alpha_is_checked_before_compositing(eng, alpha):
    rgba = torch.cat([images(2, S, 4), images(2, S, 5)[:, :1]], 1)  # alpha in [-1, 1]
    assert eng.reconstruct(rgba, seed=0).shape == (2, 3, S, S)
    rgba[1, 3, 6, 7] = alpha
    message = "contain NaN" if math.isnan(alpha) else "values must lie in .* alpha included"
    with pytest.raises(ValueError, match=f"images: {message}"):
        eng.reconstruct(rgba, seed=0)


@pytest.mark.parametrize("value, message", [
    (1.5, r"values must lie in \[-1, 1\]"), (math.nan, "contain NaN or Inf")])
def test_range_errors_name_the_list_item(eng, value, message):
    x = images(3, S, 8)
    x[2, 1, 2, 3] = value
    with pytest.raises(ValueError, match=rf"images\[2\]: {message}"):
        eng.translate([x[0], x[1], x[2]], {"Male": 1}, seed=0)
    with pytest.raises(ValueError, match=rf"references\[1\]: {message}"):
        eng.translate_reference(x[:2], [x[:2], x[1:]])


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.1, 1.5])
def test_region_values_must_be_in_0_1(eng, value):
    x = images(2, S)
    m = torch.rand(S, S, generator=torch.Generator().manual_seed(3))
    m[4, 5] = value
    with pytest.raises(ValueError, match=r"region values must be finite and in \[0, 1\]"):
        eng.translate(x, {"Male": 1}, seed=0, region=m)


@pytest.mark.parametrize("value", [7.0, -1.0, 1e30, 0.5, math.nan])
def test_labels_must_be_0_or_1(eng, value):
    x = images(2, S)
    bad = labels(2, N_ATTRS)
    bad[1, 2] = value
    message = r"labels must be 0 \(absent\) or 1 \(present\), got "
    with pytest.raises(ValueError, match="target " + message):
        eng.translate(x, bad, seed=0)
    with pytest.raises(ValueError, match="source " + message):
        eng.translate(x, {"Male": 1}, source=bad, seed=0)
    with pytest.raises(ValueError, match="reference " + message):
        eng.translate_reference(x, x, reference_labels=bad)
    with pytest.raises(ValueError, match="target labels must be 0"):
        eng.interpolate(x, x, bad, [0.5], seed=0)
    with pytest.raises(ValueError, match="target for 'Male' must be 0 or 1"):
        eng.translate(x, {"Male": value})


@pytest.mark.parametrize("shape", [(N_ATTRS - 1,), (1, N_ATTRS), (2, N_ATTRS, 1)])
def test_label_shape_errors_name_the_shape_given(eng, shape):
    with pytest.raises(ValueError, match=rf"target labels must have shape \(2, {N_ATTRS}\) or "
                                         rf"\({N_ATTRS},\).*; got {re.escape(str(shape))}$"):
        eng.translate(images(2, S), torch.ones(shape), seed=0)


@pytest.mark.parametrize("near_one", [
    lambda y: y.double() * (1 - 1e-8),
    lambda y: (y.double() * (1 - 1e-8)).numpy(),
    lambda y: (y.double() * (1 - 1e-8)).tolist()], ids=["float64", "numpy", "list"])
def test_labels_are_checked_before_the_float32_cast(eng, near_one):
    x, y = images(2, S, 9), labels(2, N_ATTRS, 9)
    y[0, 0] = 1
    with pytest.raises(ValueError, match=r"target labels must be 0 \(absent\) or 1 \(present\), "
                                         r"got 0\.99999999"):
        eng.translate(x, near_one(y), source=y, seed=0)
    exact = eng.translate(x, y, source=y, seed=0)
    for same in (y.double(), y.bool(), y.long().numpy(), y.tolist()):
        assert torch.equal(eng.translate(x, same, source=y, seed=0), exact)


LABELS_OF = r"target labels must be a tensor, array or nested list of numbers, got "
TARGET_OF = (r"target must be a dict attribute name -> 0/1 \(names: Black_Hair, .*\) or "
             r"target labels \(N, A\) or \(A,\) of 0/1, got ")


@pytest.mark.parametrize("target, message", [
    (None, TARGET_OF + "NoneType"), ("Male", TARGET_OF + "str"), ({"Male"}, TARGET_OF + "set"),
    ({"Male": None}, "target for 'Male' must be 0 or 1, got None"),
    ({"Male": "1"}, "target for 'Male' must be 0 or 1, got '1'"),
    ({"Male": np.complex64(1 + 3j)}, "target for 'Male' must be 0 or 1, got"),
    ({"Male": torch.tensor(1 + 0j)}, "target for 'Male' must be 0 or 1, got"),
    ([[0, 1], [1]], LABELS_OF + "list")])
def test_targets_of_the_wrong_type(eng, target, message):
    with pytest.raises(ValueError, match=message):
        eng.translate(images(2, S), target, seed=0)


@pytest.mark.parametrize("alphas, message", [
    ([], "alphas must be a non-empty list of numbers"),
    (3, "alphas must be a non-empty list of numbers"),
    ("ab", "alphas must be a non-empty list of numbers"),
    ([0.5, math.nan], r"each alpha must be finite and within \[-10, 10\], got nan"),
    ([math.inf], r"each alpha must be finite and within \[-10, 10\], got inf"),
    ([1e30], r"each alpha must be finite and within \[-10, 10\], got 1e\+30"),
    ([0.5, "0.5"], "each alpha must be a number, got '0.5'"),
    (np.array([0.5 + 2j]), "each alpha must be a number, got"),
    ([np.bool_(True)], "each alpha must be a number, got"),
    ({0.0, 1.0}, "alphas must be a list of numbers .*, in the order of the results; got a set"),
    ({1.0: "a"}, "alphas must be a list of numbers .*; got a dict"),
])
def test_interpolation_alphas(eng, alphas, message):
    x = images(2, S)
    with pytest.raises(ValueError, match=message):
        eng.interpolate(x, x, {"Male": 1}, alphas, seed=0)


def test_interpolation_alphas_may_be_a_tensor(eng):
    x = images(2, S)
    out = eng.interpolate(x, x, {"Male": 1}, torch.tensor([0.0, 1.0]), seed=0)
    assert out.shape == (2, 2, 3, S, S) and torch.isfinite(out).all()


@pytest.mark.parametrize("seed", [2 ** 70, 2 ** 64, -1, 1.5, "3", True])
def test_seed_must_be_a_64_bit_unsigned_integer(eng, seed):
    x = images(1, S)
    with pytest.raises(ValueError, match=r"seed must be None or an integer in \[0, 2\*\*64\)"):
        eng.translate(x, {"Male": 1}, seed=seed)
    with pytest.raises(ValueError, match="seed must be None or an integer"):
        eng.edit_strip(x, samples=1, seed=seed)
    assert eng.reconstruct(x, seed=2 ** 64 - 1).shape == (1, 3, S, S)


@pytest.mark.parametrize("samples", [-2, MAX_SAMPLES + 1, 10 ** 23, 2.0, True])
def test_sample_counts(eng, samples):
    with pytest.raises(ValueError, match=rf"samples must be an integer from 0 to {MAX_SAMPLES}, "
                                         rf"got {samples!r}"):
        eng.edit_strip(images(1, S), samples=samples)
    with pytest.raises(ValueError, match=rf"samples must be an integer from 1 to {MAX_SAMPLES}, "
                                         rf"got {samples!r}"):
        eng.translate_samples(images(1, S), {"Male": 1}, samples)
    with pytest.raises(ValueError, match=rf"from 1 to {MAX_SAMPLES}, got 0"):
        eng.translate_samples(images(1, S), {"Male": 1}, 0)


def test_translate_samples_takes_one_seed_whose_samples_stay_below_2_64(eng):
    x = images(1, S)
    with pytest.raises(ValueError, match=r"seed must be None or an integer in \[0, 2\*\*64\), "
                                         r"got \[1, 2\]"):
        eng.translate_samples(x, {"Male": 1}, 2, seed=[1, 2])
    with pytest.raises(ValueError, match=rf"seed {2 ** 64 - 2} with 3 samples draws seeds up to "
                                         rf"{2 ** 64}; seeds must be below 2\*\*64: give seed <= "
                                         rf"{2 ** 64 - 3}"):
        eng.translate_samples(x, {"Male": 1}, 3, seed=2 ** 64 - 2)
    assert eng.translate_samples(x, {"Male": 1}, 3, seed=2 ** 64 - 3).shape == (1, 3, 3, S, S)


@pytest.mark.parametrize("kind", [np.int64, np.uint64, np.int8])
def test_a_numpy_integer_seed_is_its_integer(eng, kind):
    """translate_samples added k to a numpy seed: np.int64 failed in torch's manual_seed,
    np.uint64 turned float (numpy 1.x) and np.int8 would wrap."""
    x = images(2, S, 12)
    for call in (lambda seed: eng.translate_samples(x, {"Male": 1}, 2, seed=seed),
                 lambda seed: eng.translate(x, {"Male": 1}, seed=seed),
                 lambda seed: eng.edit_strip(x[:1], samples=2, seed=seed).images):
        assert torch.equal(call(kind(127)), call(127))
    with pytest.raises(ValueError, match=rf"seed {2 ** 64 - 2} with 3 samples draws seeds up "
                                         rf"to {2 ** 64}"):
        eng.translate_samples(x, {"Male": 1}, 3, seed=np.uint64(2 ** 64 - 2))


@pytest.mark.parametrize("backend", ["torch", "reference", "compile"])
def test_an_export_folder_for_a_backend_that_exports_nothing_is_refused(model, tmp_path,
                                                                         backend):
    """onnx_dir was ignored without a word by the backends that run no ONNX graphs (a
    caller meaning onnxruntime got torch's results and an empty folder); backend="auto"
    may pick one that exports, so it takes the folder."""
    with pytest.raises(ValueError, match=rf"onnx_dir is the export folder of the backends "
                                         rf"that run ONNX graphs \(onnxruntime, tensorrt\); "
                                         rf"backend '{backend}' runs none"):
        Engine(model, backend=backend, onnx_dir=tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_edit_strip_takes_one_seed(eng):
    with pytest.raises(ValueError, match=r"seed must be None or an integer in \[0, 2\*\*64\), "
                                         r"got \[1, 2\]"):
        eng.edit_strip(images(1, S), samples=0, seed=[1, 2])


@pytest.mark.parametrize("sample_target, kind", [
    (torch.ones(N_ATTRS), "Tensor"), ("Male", "str"), ([("Male", 1)], "list"), (1, "int")])
def test_edit_strip_sample_target_must_be_a_dict(eng, sample_target, kind):
    with pytest.raises(ValueError, match=rf"sample_target must be None or a dict attribute name "
                                         rf"-> 0/1 \(names: Black_Hair, .*\), got {kind}$"):
        eng.edit_strip(images(1, S, 10), samples=1, sample_target=sample_target)
    with pytest.raises(ValueError, match="unknown attribute"):
        eng.edit_strip(images(1, S, 10), samples=0, sample_target={"Nope": 1})


def test_float_and_32_bit_integer_images_are_refused(eng, tmp_path):
    rng = np.random.default_rng(11)
    grey = rng.random((S, S))
    accepted = r"accepted: 8-bit images \(modes 1, L, P, RGB, .*\) and 16-bit greyscale \(I;16"
    for mode, array in (("F", grey.astype(np.float32)), ("I", (grey * 2 ** 20).astype(np.int32))):
        im = Image.fromarray(array)
        assert im.mode == mode
        im.save(tmp_path / f"{mode}.tif")
        with pytest.raises(ValueError, match=rf"images\[0\] has mode {mode} .*; {accepted}"):
            eng.translate(im, {"Male": 1}, seed=0)
        with pytest.raises(ValueError, match=rf"cannot read image file .*{mode}\.tif: image has "
                                             rf"mode {mode} .*; {accepted}"):
            eng.translate(tmp_path / f"{mode}.tif", {"Male": 1}, seed=0)


def test_a_list_of_mixed_items_is_checked_item_by_item(eng, tmp_path):
    a, b = images(1, S), images(1, 2 * S)
    with pytest.raises(ValueError, match=rf"images\[1\]: tensors must be {S}x{S}"):
        eng.translate([a, b], {"Male": 1})
    with pytest.raises(ValueError, match=r"references\[1\]: tensors must be"):
        eng.translate_reference(a, [a[0], b[0]])
    path = tmp_path / "face.png"
    Image.new("RGB", (40, 50), (200, 150, 120)).save(path)
    grey = Image.new("L", (20, 20), 90)
    out = eng.translate([a[0], a[:, :1], grey, path], {"Male": 1}, seed=0)
    assert out.shape == (4, 3, S, S)


@pytest.mark.parametrize("images_arg, message", [
    (b"face.png", r"images: expected a tensor, a PIL image, a file path \(str or os.PathLike\)"),
    ([b"face.png"], r"images\[0\]: expected a tensor, a PIL image or a file path \(str or "
                    r"os.PathLike\), got bytes"),
    (None, "images: expected a tensor, a PIL image, a file path"),
    (5, "got int"),
    ([[images(1, S)]], r"images\[0\]: expected .* got list"),
])
def test_images_of_the_wrong_type(eng, images_arg, message):
    with pytest.raises(ValueError, match=message):
        eng.translate(images_arg, {"Male": 1})


def refused_without_hanging(fn, seconds: float = 20.0) -> Exception:
    """The exception ``fn`` raises, asserting it returns at all (reading a device or a pipe
    would never end)."""
    result = []

    def run():
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            result.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert result, "the call did not return (or raised nothing)"
    return result[0]


def test_non_regular_files_are_not_read(eng, tmp_path):
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    for path in (zero, fifo, folder):
        exc = refused_without_hanging(lambda: eng.translate([path], {"Male": 1}))
        assert isinstance(exc, ValueError)
        assert f"{path} is not a regular file" in str(exc) and "accepted: image files" in str(exc)


def test_a_missing_file_is_a_value_error_too(eng, tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found: .*nope.png") as info:
        eng.translate([tmp_path / "nope.png"], {"Male": 1})
    assert isinstance(info.value, ValueError)


# ----- images --------------------------------------------------------------------------
@pytest.mark.parametrize("w, h", [(9000, 9000), (10000, 10000), (20000, 20000),
                                  (60_000_000, 1)])
def test_huge_images_are_refused_from_the_header(eng, tmp_path, w, h):
    """Refused in one error, without PIL's DecompressionBombWarning (past its own cap of
    about 89 million pixels) printed above it."""
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(w, h))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(
            ValueError, match=r"image file .*huge.png.*accepted: .*at most 50,000,000 pixels"):
        warnings.simplefilter("always")
        eng.translate([path], {"Male": 1})
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pixel_cap_applies_before_decoding(monkeypatch, tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(path)
    monkeypatch.setattr(image, "MAX_IMAGE_PIXELS", 399)

    def no_decoding(self):
        raise AssertionError("decoded an image above the cap")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    with pytest.raises(ValueError, match="image is 20x20 pixels; accepted: non-empty images of "
                                         "at most 399 pixels"):
        image.open_rgb(path)


@pytest.mark.parametrize("size", [(0, 0), (0, 10), (10, 0)])
def test_empty_pil_images_are_refused(eng, size):
    with pytest.raises(ValueError, match=rf"images\[0\] is {size[0]}x{size[1]} pixels; accepted: "
                                         "non-empty images"):
        eng.translate(Image.new("RGB", size), {"Male": 1})


# ----- configs -------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("e_blocks", 1.5, r"config.e_blocks must be an integer in \[0, 16\], got 1.5"),
    ("eps", "x", r"config.eps must be a number in \[1e-12, 0.1\], got 'x'"),
    ("eps", math.nan, "config.eps must be a number"),
    ("eps", 0, "config.eps must be a number"),
    ("eps", 1e-100, "config.eps must be a number"),  # 0 in float32: NaN images
    ("g_width", 1e6, r"config.g_width must be an integer in \[1, 512\], got 1000000.0"),
    ("g_width", 10 ** 6, r"config.g_width must be an integer in \[1, 512\]"),
    ("image_size", 4096, r"config.image_size must be an integer in \[16, 1024\]"),
    ("image_size", True, "config.image_size must be an integer"),
    ("g_downs", 10 ** 9, r"config.g_downs must be an integer in \[1, 10\]"),
    ("g_downs", 5, r"image_size 32 with g_downs 5 leaves G's middle blocks at 1x1, where "
                   r"instance norm is degenerate \(its output is its shift\); accepted: "
                   r"g_downs <= 4 at this size"),
    ("noise_dim", None, "config.noise_dim must be an integer"),
    ("g_width", 128, r"g_width \* 2\*\*g_downs = 1024 channels; accepted: at most 512"),
    ("d_width", 128, r"d_width \* 2\*\*d_downs = 1024 channels; accepted: at most 512"),
    ("edit_strength", 0, r"config.edit_strength must be a number in \(0, 10\], got 0"),
    ("edit_strength", math.inf, "config.edit_strength must be a number"),
    ("edit_strength", "1.0", "config.edit_strength must be a number"),
    ("extra", [1], r"config.extra must be an object \(dict\)"),
    ("attributes", 5, "attributes must be a preset name, a comma-separated string or a list"),
    ("attributes", [["Male"]], r"list of names \(strings\), got \[\['Male'\]\]"),
    ("attributes", ["Male", "Purple_Hair"], "unknown attribute name"),
])
def test_config_fields_of_the_wrong_type_or_size(field, value, message):
    data = small_config(S).to_dict()
    data[field] = value
    with pytest.raises(ValueError, match=message):
        BridgeGANConfig.from_dict(data)
    with pytest.raises(ValueError, match=message):
        BridgeGANConfig.from_json(json.dumps(data))


def test_discriminator_head_is_bounded():
    with pytest.raises(ValueError, match=r"D's head convolutions would hold \(d_width \* "
                                         r"image_size\)\*\*2 = 268,435,456 weights each"):
        BridgeGANConfig(image_size=1024, d_width=16, d_downs=5)
    assert BridgeGANConfig(image_size=512).d_head_kernel == 32  # the paper's widths at 512 px


def test_deeply_nested_or_non_object_config_json():
    deep = '{"extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(ValueError, match="config JSON is nested too deeply"):
        BridgeGANConfig.from_json(deep)
    nested = "[" * 900 + "]" * 900  # parses, but would fail to print or save
    for field in ("g_width", "eps", "attributes", "extra"):
        value = nested if field != "extra" else '{"a": ' + nested + "}"
        with pytest.raises(ValueError, match=f"config.{field} must be|attributes must be"):
            BridgeGANConfig.from_json(f'{{"{field}": {value}}}')
    cfg = BridgeGANConfig.from_json('{"extra": {"a": ' + "[" * 31 + "]" * 31 + "}}")
    assert BridgeGANConfig.from_json(cfg.to_json()).extra == cfg.extra
    for text in ("[1]", "3", '"x"', "null"):
        with pytest.raises(ValueError, match=r"config must be an object \(dict\) of fields"):
            BridgeGANConfig.from_json(text)
    with pytest.raises(ValueError, match="unknown config field"):
        BridgeGANConfig.from_dict({1: 2, "image_size": 64})


def test_checkpoint_config_names_the_field(model, tmp_path):
    save_checkpoint(tmp_path / "ck", model)
    cfg = tmp_path / "ck" / "config.json"
    cfg.write_text(cfg.read_text().replace('"g_width": 8', '"g_width": 1e6'))
    with pytest.raises(CheckpointError, match="config.g_width must be an integer"):
        load_checkpoint(tmp_path / "ck")



@pytest.mark.parametrize("change, problem", [
    (lambda t: t.replace('"g_width": 8', '"g_width": 8, "g_width": 512'),
     "the JSON repeats the key 'g_width' in an object; give each key once"),
    (lambda t: t.replace('"g_width": 8', '"g_width": 8, ' + ", ".join(
        f'"k{i}": 1' for i in range(20_000))),
     "unknown config field(s) k0, k1, k10, k100, k1000, k10000, k10001, k10002 ... and 19992 "
     "more; known fields: attributes, "),
    (lambda t: re.sub(r'"attributes": \[[^]]*\]', '"attributes": ' + json.dumps(
        ["Young"] * 100_000), t), "attribute list has duplicates: ['Young']")])
def test_a_config_json_of_repeated_keys_or_long_lists_says_so_briefly(model, tmp_path, change,
                                                                        problem):
    """A key given twice was taken as the last (tritonserver takes the first); the
    messages of unknown fields and attribute lists listed them all (a 9 MB line)."""
    save_checkpoint(tmp_path / "ck", model)
    cfg = tmp_path / "ck" / "config.json"
    cfg.write_text(change(cfg.read_text()))
    with pytest.raises(CheckpointError, match=re.escape(problem)) as err:
        load_checkpoint(tmp_path / "ck")
    assert len(str(err.value)) < 1000

def test_a_config_file_past_its_limit_is_refused_before_it_is_parsed(model, tmp_path):
    """A config.json of 240 MB (a deep empty list in "extra") took 3.6 GB and 28 s to
    parse; a configuration file is refused past JSON_LIMIT bytes, read no further."""
    from bridgegan.files import JSON_LIMIT

    save_checkpoint(tmp_path / "ck", model)
    cfg = tmp_path / "ck" / "config.json"
    text = cfg.read_text()
    cfg.write_text(text + " " * (JSON_LIMIT - len(text)))  # at the limit: read
    load_checkpoint(tmp_path / "ck")
    cfg.write_text(text + " " * (JSON_LIMIT + 1 - len(text)))
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(cfg))} is not a valid BridgeGAN "
                                              rf"config: larger than {JSON_LIMIT:,} bytes"):
        load_checkpoint(tmp_path / "ck")

# ----- checkpoints ---------------------------------------------------------------------
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_refused_with_their_name(model, tmp_path, value):
    save_checkpoint(tmp_path / "ck", model)
    weights = tmp_path / "ck" / WEIGHTS_FILE
    tensors = load_file(weights)
    name = sorted(k for k in tensors if k.startswith("generator.up"))[0]
    tensors[name].view(-1)[0] = value
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=rf"holds NaN or Inf values in 1 tensor\(s\): "
                                              rf"{name}; weights must be finite"):
        Engine.from_checkpoint(tmp_path / "ck")



@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.float8_e4m3fn])
def test_weights_of_another_dtype_are_refused_with_their_name(model, tmp_path, dtype):
    """int8 or bool weights of the right shape loaded as garbage; float8 failed in
    isfinite without naming the file."""
    save_checkpoint(tmp_path / "ck", model)
    weights = tmp_path / "ck" / WEIGHTS_FILE
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].to(dtype)
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=rf"1 tensor\(s\) of another dtype: {name}: "
                                              rf"{str(dtype)[6:]} \(accepted for weights: "
                                              rf"float16, bfloat16, float32, float64\)"):
        load_checkpoint(tmp_path / "ck")


def test_weights_of_another_architecture_are_refused_before_the_model_is_built(
        model, tmp_path, monkeypatch):
    """A config.json that the weights do not fit (here a wider generator) is refused from
    the weights file's header, before the model is allocated (it was built and initialised
    first: 1.3 GiB and seconds at the largest the bounds allow)."""
    save_checkpoint(tmp_path / "ck", model)
    cfg = tmp_path / "ck" / "config.json"
    cfg.write_text(cfg.read_text().replace('"g_width": 8', '"g_width": 32'))
    built, init = [], BridgeGAN.__init__

    def recording(self, config):
        built.append(torch.get_default_device().type)
        init(self, config)

    monkeypatch.setattr(BridgeGAN, "__init__", recording)
    with pytest.raises(CheckpointError, match=r"model.safetensors does not match the model: "
                                              r"\d+ shape mismatch\(es\): generator"):
        load_checkpoint(tmp_path / "ck")
    assert built == ["meta"]

def test_float64_weights_past_float32_are_refused(model, tmp_path):
    """1e300 in float64 is finite as stored and Inf in the float32 model: refused, as
    NaN / Inf are (it loaded, and exports and training went on with Inf weights)."""
    save_checkpoint(tmp_path / "ck", model)
    weights = tmp_path / "ck" / WEIGHTS_FILE
    tensors = {k: v.double() for k, v in load_file(weights).items()}
    save_file(tensors, weights)
    load_checkpoint(tmp_path / "ck")  # float64 of float32 values: taken
    name = sorted(tensors)[1]
    tensors[name] = tensors[name] * 1e300
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=rf"holds NaN or Inf values in 1 tensor\(s\): "
                                              rf"{name}; weights must be finite, in the "
                                              rf"model's dtype too"):
        load_checkpoint(tmp_path / "ck")


# ----- translate CLI -------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_files(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_checkpoint(root / "ck", model)
    Image.new("RGB", (40, 40), (180, 140, 120)).save(root / "face.png")
    return root


def translate_args(root, out: str, *extra) -> list[str]:
    return ["translate", "--checkpoint", str(root / "ck"), "--input", str(root / "face.png"),
            "--set", "Male=1", "--out", str(root / out), *extra]


def test_translate_strength_nan_names_the_strength(cli_files, capsys):
    assert main(translate_args(cli_files, "out-nan", "--strength", "nan")) == 2
    err = capsys.readouterr().err
    assert "strength must be finite and within [-10, 10], got nan" in err
    assert "images contain NaN" not in err


@pytest.mark.parametrize("samples", ["-2", "0", "two"])
def test_translate_samples_must_be_from_1_to_64(cli_files, capsys, samples):
    with pytest.raises(SystemExit) as info:
        main(translate_args(cli_files, f"out{samples}", "--samples", samples))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --samples: must be an integer from 1 to 64, got '{samples}'" in err
    assert not (cli_files / f"out{samples}").exists()


def test_translate_refuses_outputs_that_would_overwrite_each_other_or_an_input(cli_files, capsys):
    """Outputs are named after the input's file name: two inputs sharing one would write
    the same STEM_edit1.png, and X_edit1.png in --out may be an input itself. Refused
    before any work; nothing is written or overwritten."""
    other = cli_files / "b" / "face.png"
    other.parent.mkdir()
    Image.new("RGB", (40, 40), (90, 60, 50)).save(other)
    argv = ["translate", "--checkpoint", str(cli_files / "ck"), "--set", "Male=1"]
    assert main([*argv, "--input", str(cli_files / "face.png"), str(other),
                 "--out", str(cli_files / "out-clash")]) == 2
    err = capsys.readouterr().err
    assert f"--input {cli_files / 'face.png'} and {other} would both write face_*.png" in err
    assert not (cli_files / "out-clash").exists()
    edited = cli_files / "b" / "face_edit1.png"
    Image.new("RGB", (40, 40), (10, 20, 30)).save(edited)
    before = edited.read_bytes()
    assert main([*argv, "--input", str(other), str(edited), "--out", str(other.parent)]) == 2
    assert f"output {edited} is --input {edited}: a command writes nothing over" \
        in capsys.readouterr().err
    assert edited.read_bytes() == before
    ref = cli_files / "b" / "face_reference.png"  # a reference where an output goes
    Image.new("RGB", (40, 40), (30, 20, 10)).save(ref)
    before = ref.read_bytes()
    assert main(["translate", "--checkpoint", str(cli_files / "ck"), "--input", str(other),
                 "--reference", str(ref), "--out", str(other.parent)]) == 2
    assert f"output {ref} is --reference {ref}: a command writes nothing over" \
        in capsys.readouterr().err
    assert ref.read_bytes() == before


def test_a_run_into_a_checkpoint_and_configs_that_are_no_json_are_named(cli_files, tmp_path,
                                                                      capsys):
    """`train --out CKPT` wrote a run (checkpoints/, samples/, metrics) into a model's
    folder; a --config or --expect-config file that is not JSON was "config is not valid
    JSON" without the file's name."""
    ck = tmp_path / "ck"
    shutil.copytree(cli_files / "ck", ck)
    before = sorted(p.name for p in ck.iterdir())
    text = tmp_path / "notes.txt"
    text.write_text("not JSON")
    cases = [(["train", "--data", "synthetic:8", "--out", str(ck)],
              f"--out {ck} is a checkpoint folder (config.json, model.safetensors): a run "
              f"writes its own folder"),
             (["train", "--data", "synthetic:8", "--config", str(text), "--out",
               str(tmp_path / "run")], f"--config {text}: config is not valid JSON")]
    if find_spec("onnx") is not None:  # the export needs it first
        cases.append((["export", "onnx", str(ck), str(tmp_path / "x"), "--expect-config",
                       str(text)], f"--expect-config {text}: config is not valid JSON"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert f"error: {message}" in capsys.readouterr().err, argv
    assert sorted(p.name for p in ck.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "notes.txt"]


def test_outputs_over_or_inside_what_a_command_reads_are_refused(cli_files, tmp_path, capsys):
    """`eval --json CKPT/config.json` wrote the report over the checkpoint's config (rc 0, the
    model broken after), `demo --input DIR/demo_grid.png --out DIR` the grid over its
    input, `serve --write-repository CKPT` a repository into the model folder, `translate
    --out CKPT` its images and `export onnx CKPT CKPT/sub` an export into it, `train
    --init-from CKPT --out CKPT/run` a run; a TensorRT plan could be written over its ONNX
    file. Each is refused before any work, its input untouched."""
    pytest.importorskip("onnx")
    ck = tmp_path / "ck"
    shutil.copytree(cli_files / "ck", ck)
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    grid = tmp_path / "demo_grid.png"
    shutil.copy(cli_files / "face.png", grid)
    onnx_file = tmp_path / "trunk.onnx"
    onnx_file.write_bytes(b"an ONNX graph's bytes")
    cases = [
        (["eval", "--checkpoint", str(ck), "--classifier", "none", "--n", "2", "--json",
          str(ck / "config.json")], f"--json {ck / 'config.json'} is inside --checkpoint {ck}"),
        (["demo", "--checkpoint", str(ck), "--input", str(grid), "--out", str(tmp_path)],
         f"the grid {grid} is --input {grid}"),
        (["export", "triton-repo", str(ck), str(ck)],
         f"model repository folder {ck} is checkpoint {ck}"),
        (["export", "tensorrt", str(onnx_file), str(onnx_file)],
         f"plan file {onnx_file} is ONNX file {onnx_file}"),
        (["translate", "--checkpoint", str(ck), "--input", str(grid), "--set", "Male=1",
          "--out", str(ck)], f"output {ck / 'grid.png'} is inside --checkpoint {ck}"),
        (["export", "onnx", str(ck), str(ck / "sub")],
         f"export folder {ck / 'sub'} is inside checkpoint {ck}"),
        (["train", "--data", "synthetic:8", "--init-from", str(ck), "--out", str(ck / "run")],
         f"--out {ck / 'run'} is inside --init-from {ck}")]
    if find_spec("pytriton") is not None:
        cases.append((["serve", "--checkpoint", str(ck), "--write-repository", str(tmp_path)],
                      f"--write-repository {tmp_path} holds --checkpoint {ck}"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert f"{message}: a command writes nothing over, into or around what it reads" in \
            capsys.readouterr().err, argv
    assert {p.name: p.read_bytes() for p in ck.iterdir()} == before
    assert grid.read_bytes() == (cli_files / "face.png").read_bytes()
    assert onnx_file.read_bytes() == b"an ONNX graph's bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "demo_grid.png", "trunk.onnx"]


def test_a_folder_where_a_command_writes_a_file_is_refused_before_any_work(cli_files, tmp_path,
                                                                         capsys):
    """A folder named like an output file (demo_grid.png, grid.png, bench.png, run.json)
    failed the write after the work, naming a temporary file."""
    cases = [(["demo", "--checkpoint", str(cli_files / "ck"), "--samples", "0"], "demo_grid.png"),
             (translate_args(cli_files, "unused")[:-2], "grid.png"),
             (["bench", "--checkpoint", str(cli_files / "ck"), "--batches", "1"], "bench.png"),
             (["train", "--data", "synthetic:8", "--steps", "1"], "run.json")]
    for k, (argv, name) in enumerate(cases):
        out = tmp_path / str(k)
        (out / name).mkdir(parents=True)
        assert main([*argv, "--out", str(out)]) == 2, argv
        assert f"--out {out} holds a folder {name} where this command writes a file: move it" \
            in capsys.readouterr().err, argv
        assert [p.name for p in out.iterdir()] == [name]


def test_a_name_too_long_once_written_through_its_temporary_name_is_refused_before_any_work(
        cli_files, tmp_path, capsys):
    """An output name within a few bytes of the file system's limit failed as the file was
    put in place, after the work, naming its temporary file (``.NAME.tmp-PID-XXXX``); an
    input whose name makes its output's too long is named (it blamed --out)."""
    long_input = tmp_path / ("f" * 240 + ".png")  # its output: STEM_edit1.png, 249 bytes
    shutil.copy(cli_files / "face.png", long_input)
    cases = [(["translate", "--checkpoint", str(cli_files / "ck"), "--input", str(long_input),
               "--set", "Male=1", "--out", str(tmp_path / "out")], "_edit1.png"),
             (["eval", "--checkpoint", str(cli_files / "ck"), "--classifier", "unused",
               "--json", str(tmp_path / ("e" * 250 + ".json"))], "e.json"),
             (["export", "onnx", str(cli_files / "ck"), str(tmp_path / ("x" * 250))], "x")]
    for argv, ending in cases:
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse's refusal (--json is an output_file)
            status = exc.code
        assert status == 2, argv
        err = capsys.readouterr().err
        assert f"{ending}: the name is too long for its file system (255 bytes a name, and a " \
            "write goes through a temporary name" in err, argv
        if argv[0] == "translate":
            assert f"error: --input {long_input} gives an output, " in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [long_input.name]


# ----- numbers and paths on the command line -------------------------------------------
BAD_NUMBERS = [
    (["bench", "--reps", "0"], "--reps: must be an integer >= 1, got '0'"),
    (["bench", "--warmup", "-1"], "--warmup: must be an integer >= 0, got '-1'"),
    (["bench", "--rounds", "0"], "--rounds: must be an integer >= 1, got '0'"),
    (["parity", "--backends", "--batch", "0"], "--batch: must be an integer >= 1, got '0'"),
    (["eval", "--checkpoint", "ck", "--classifier", "clf", "--n", "0"],
     "--n: must be an integer >= 1, got '0'"),
    (["train-classifier", "--out", "clf", "--batch", "0"],
     "--batch: must be an integer >= 1, got '0'"),
    (["train-classifier", "--out", "clf", "--steps", "0"],
     "--steps: must be an integer >= 1, got '0'"),
    (["train-classifier", "--out", "clf", "--width", "65"],
     "--width: must be an integer from 1 to 64, got '65'"),
    (["export", "triton-repo", "ck", "repo", "--max-batch", "-5"],
     "--max-batch: must be an integer from 1 to 2147483647, got '-5'"),
    (["export", "triton-repo", "ck", "repo", "--max-batch", "0"],
     "--max-batch: must be an integer from 1 to 2147483647, got '0'"),
    (["export", "triton-repo", "ck", "repo", "--max-queue-delay-us", "-1"],
     "--max-queue-delay-us/--queue-delay-us: must be an integer from 0 to 2147483647, got '-1'"),
    (["export", "triton-repo", "ck", "repo", "--preferred-batch", "0", "-3"],
     "--preferred-batch: must be an integer from 1 to 2147483647, got '0'"),
    (["serve", "--checkpoint", "ck", "--write-repository", "repo", "--max-queue-delay-us", "-7"],
     "--max-queue-delay-us: must be an integer from 0 to 2147483647, got '-7'"),
    (["serve", "--checkpoint", "ck", "--write-repository", "repo", "--max-batch", "0"],
     "--max-batch: must be an integer from 1 to 2147483647, got '0'"),
    (["serve", "--checkpoint", "ck", "--http-port", "-1"],  # was bind()'s OverflowError
     "--http-port: must be an integer from 1 to 65535, got '-1'"),
    (["serve", "--checkpoint", "ck", "--metrics-port", "65536"],
     "--metrics-port: must be an integer from 1 to 65535, got '65536'"),
    (["serve", "--checkpoint", "ck", "--exit-timeout-secs", "-5"],
     "--exit-timeout-secs: must be an integer from 0 to 2147483647, got '-5'"),
    (["serve", "--checkpoint", "ck", "--host", " "],  # grpc and tritonserver read no address
     "--host: give an address: 127.0.0.1, ::1, 0.0.0.0 (every interface)"),
    # NaN was no limit at all (a comparison with NaN is False); --data: fail fast if taken
    (["train", "--data", "nowhere:x", "--time-limit", "nan"],
     "--time-limit: must be a finite number > 0, got 'nan'"),
    (["train", "--data", "nowhere:x", "--time-limit", "-5"],
     "--time-limit: must be a finite number > 0, got '-5'"),
]


@pytest.mark.parametrize("argv, message", BAD_NUMBERS,
                         ids=[f"{a[0]}{a[-2]}{a[-1]}" for a, _ in BAD_NUMBERS])
def test_bad_numbers_are_refused_by_the_parser(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert f"argument {message}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_train_takes_a_gpu_index_and_names_the_devices_it_cannot_use(tmp_path, monkeypatch,
                                                                    capsys):
    """train took only cpu or cuda (every other command takes cuda:N); a device it cannot
    use is one line, before any work, from the check the Trainer makes too."""
    from bridgegan.devices import device_problem

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "--data", "synthetic:8", "--device", "cuda:1"]) == 2
    assert "bridgegan train: error: --device cuda:1: torch sees no CUDA device" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", "synthetic:8", "--device", "mps"])
    assert "argument --device: device must be cpu, cuda or cuda:N, got 'mps'" in \
        capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_problem("cuda:1", distributed=False) is None
    assert device_problem("cuda:2", False) == "torch sees 2 CUDA device(s): cuda:0 to cuda:1"
    assert device_problem("cuda:0", True) == ("under torchrun each process takes GPU "
                                              "LOCAL_RANK: give cuda")
    assert device_problem("cuda", True) is None and device_problem("cpu", True) is None


@pytest.mark.parametrize("argv", [["parity", "--device", "cuda"],
                                  ["parity", "--ops", "--device", "cuda:1"],
                                  ["train-classifier", "--out", "clf", "--device", "cuda"]])
def test_commands_refuse_a_device_torch_cannot_see_in_one_line(tmp_path, monkeypatch, capsys,
                                                               argv):
    """parity and train-classifier on CUDA that torch cannot see were an AssertionError
    traceback ('Torch not compiled with CUDA enabled'), status 1; now the one check the
    engine and training make (``devices.device_problem``), before any work."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"bridgegan {argv[0]}: error: --device {argv[-1]}: torch "
                                       f"sees no CUDA device\n")
    assert not list(tmp_path.iterdir())


def assert_parser_refuses(argv, message, folder, monkeypatch, capsys) -> None:
    """``argv`` run in ``folder`` is refused by the parser (status 2) with "argument
    MESSAGE", writing nothing there."""
    monkeypatch.chdir(folder)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert f"argument {message}" in capsys.readouterr().err
    assert not list(folder.iterdir())


@pytest.mark.parametrize("argv, name", [
    (["demo", "--out", ""], "--out"),  # wrote into the current folder
    (["bench", "--variants", ""], "--variants"),  # ran the default table
    (["demo", "--checkpoint", ""], "--checkpoint"),  # loaded the shipped model
    (["train", "--data", "synthetic:8", "--attributes", ""], "--attributes"),  # ignored
    (["export", "onnx", "", "out"], "checkpoint"),
    (["translate", "--input", "a.png", "", "--set", "Male=1", "--out", "o"], "--input")])
def test_an_empty_value_is_refused_by_the_parser(tmp_path, monkeypatch, capsys, argv, name):
    """An empty value (an unset shell variable, say) was taken for a choice: --out "" the
    current folder, --variants "" the default table, --checkpoint "" the shipped model."""
    assert_parser_refuses(argv, f"{name}: empty; give a value", tmp_path, monkeypatch, capsys)


def test_a_bench_resolution_no_model_takes_is_named(tmp_path, capsys):
    """--resolutions 100 was refused as "config.image_size must be a power of two", which
    names no option the user gave; nothing is measured or written."""
    assert main(["bench", "--resolutions", "64,100", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("bridgegan bench: error: resolution 100: "
                                       "config.image_size must be a power of two, got 100\n")
    assert not (tmp_path / "out").exists()


def test_eval_seeds_past_2_64_are_refused_before_the_model_loads(tmp_path, capsys):
    """eval draws --seed + DIVERSITY_SEEDS + k for source k: a --seed within 2**64 whose
    draws pass it failed after the model loaded, naming a seed the user never gave."""
    last = 2 ** 64 - 1
    assert main(["eval", "--checkpoint", str(tmp_path / "none"), "--classifier", "none",
                 "--n", "4", "--seed", str(last)]) == 2
    assert capsys.readouterr().err == (
        f"bridgegan eval: error: --seed {last} with 4 sources (--n) draws seeds up to "
        f"{last + 1003}; "
        f"seeds must be below 2**64: give --seed <= {2 ** 64 - 1004}\n")


def test_a_zero_queue_delay_is_accepted_under_either_name():
    from bridgegan.cli import build_parser

    for name in ("--max-queue-delay-us", "--queue-delay-us"):  # serve's name, export's earlier
        args = build_parser().parse_args(["export", "triton-repo", "ck", "repo", name, "0",
                                          "--max-batch", "1", "--preferred-batch", "1"])
        assert (args.max_queue_delay_us, args.max_batch, args.preferred_batch) == (0, 1, [1])


def test_preferred_batch_sizes_above_the_max_batch_are_refused(tmp_path, capsys):
    assert main(["export", "triton-repo", "ck", str(tmp_path / "repo"), "--max-batch", "8",
                 "--preferred-batch", "4", "16", "32"]) == 2
    err = capsys.readouterr().err
    assert "--preferred-batch sizes 16 32 exceed --max-batch 8: give sizes from 1 to 8" in err
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("opset", ["16", "99"])
def test_export_opset_outside_the_exporters_range_is_one_line(cli_files, tmp_path, capsys,
                                                              opset):
    """Checked before tracing: no Torch IR dump before the error."""
    assert main(["export", "onnx", str(cli_files / "ck"), str(tmp_path / "x"), "--opset",
                 opset]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bridgegan export onnx: error: --opset must be from 17 to ")
    assert err.endswith(f"got {opset}\n") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def _parse_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_output_and_input_paths_are_checked_before_the_work(cli_files, tmp_path, capsys):
    """A file where an output folder goes, a folder where a file goes: a one-line error
    with status 2 before anything runs (not a traceback, nor one after a whole eval)."""
    afile, folder = tmp_path / "afile", tmp_path / "folder"
    afile.write_text("keep me")
    folder.mkdir()
    ck = str(cli_files / "ck")
    for argv, what in ((["demo", "--out", str(afile)], "--out"),
                       (["serve", "--checkpoint", ck, "--write-repository", str(afile)],
                        "--write-repository"),
                       (["train-classifier", "--data", "synthetic:16", "--steps", "1",
                         "--out", str(afile)], "--out")):
        assert main(argv) == 2
        assert f"error: {what} {afile} is a file, not a folder" in capsys.readouterr().err
    assert afile.read_text() == "keep me"
    eval_args = ["eval", "--checkpoint", ck, "--classifier", "none", "--json"]
    assert f"argument --json: {folder} is a folder: give a file path in an existing folder" \
        in _parse_error([*eval_args, str(folder)], capsys)
    assert f"{folder / 'no' / 'r.json'} is in {folder / 'no'}, which is not an existing " \
        in _parse_error([*eval_args, str(folder / "no" / "r.json")], capsys)
    assert f"argument --json: {folder} is a folder" in _parse_error(
        ["parity", "--backends", "--json", str(folder)], capsys)
    assert f"argument --expect-config: {folder} is a folder: give an existing file" in \
        _parse_error(["export", "onnx", ck, str(tmp_path / "x"), "--expect-config",
                      str(folder)], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"]
    (folder / "thesis.txt").write_text("years of work")  # a folder the classifier would replace
    assert main(["train-classifier", "--data", "synthetic:16", "--steps", "1",
                 "--out", str(folder)]) == 2
    assert f"{folder} holds thesis.txt, which is not a file this write produces" \
        in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]


# ----- fuzz ----------------------------------------------------------------------------
FUZZ_VALUES = [0.0, 1.0, 0.5, -1.0, 7.0, 1e30, 3e38, math.nan, math.inf, -math.inf]
JUNK = st.sampled_from([None, "abc", b"abc", 3, [None], {"a": 1}])
ANY_NUMBER = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2 ** 70, 2 ** 70)


@st.composite
def fuzz_tensors(draw, shapes):
    """A tensor of one of ``shapes``: random in [-1, 1], or filled with one fuzz value."""
    shape = draw(st.sampled_from(shapes))
    if draw(st.booleans()):
        g = torch.Generator().manual_seed(draw(st.integers(0, 99)))
        return torch.rand(shape, generator=g) * 2 - 1
    return torch.full(shape, draw(st.sampled_from(FUZZ_VALUES)))


def good_images(n, paths):
    """n valid images: a tensor, a list of tensors, PIL images or files."""
    face = Image.new("RGB", (45, 38), (200, 150, 120))
    return st.integers(0, 9).flatmap(lambda seed: st.sampled_from([
        images(n, S, seed), list(images(n, S, seed)), [face] * n, [paths[0]] * n,
        images(n, S, seed)[:, :1], [images(1, S, seed)] * n]))


def bad_images(n, paths):
    good = images(n, S)
    sizes = st.tuples(st.integers(0, 70), st.integers(0, 70))
    modes = st.sampled_from(["L", "P", "RGBA", "LA", "1", "I", "F", "CMYK"])
    return st.one_of(
        st.sampled_from([good[0, 0], good * 3, good[:0], images(n, S // 2), good.to(torch.int64),
                         [good, images(1, S // 2)], torch.full((n, 3, S, S), math.nan),
                         good[:, :2], *paths[1:]]),
        sizes.map(lambda wh: Image.new("RGB", wh)),
        modes.map(lambda mode: Image.new(mode, (33, 21))),
        JUNK)


def good_labels(n):
    return st.integers(0, 9).flatmap(lambda seed: st.sampled_from(
        [labels(n, N_ATTRS, seed), labels(1, N_ATTRS, seed)[0].tolist()]))


def bad_labels(n):
    return st.one_of(fuzz_tensors([(n, N_ATTRS), (N_ATTRS,), (n, 3), (n,), ()]), JUNK,
                     st.just([[0, 1], [1]]))


def edits():
    return st.dictionaries(st.sampled_from(SMALL_ATTRS), st.sampled_from([0, 1, True, 0.0]),
                           max_size=3)


def bad_edits():
    return st.dictionaries(st.sampled_from(SMALL_ATTRS + ("Blue_Hair", "")),
                           st.sampled_from([0.5, 7, math.nan, None, "1", [1]]), min_size=1,
                           max_size=2)


def arguments(n, paths):
    """name -> (good values, bad values) for every Engine argument."""
    finite = st.floats(-10, 10)
    g = torch.Generator().manual_seed(n)
    return {
        "images": (good_images(n, paths), bad_images(n, paths)),
        "references": (good_images(n, paths) | good_images(1, paths), bad_images(n, paths)),
        "target": (edits() | good_labels(n), bad_edits() | bad_labels(n)),
        "source": (st.none() | good_labels(n), bad_labels(n)),
        "reference_labels": (st.none() | good_labels(n), bad_labels(n)),
        "noise": (st.sampled_from([None, torch.randn(n, 8, generator=g), torch.full((n, 8), -1e4)]),
                  fuzz_tensors([(n, 8), (1, 8), (n, 4)]) | JUNK),
        "seed": (st.none() | st.integers(0, 2 ** 64 - 1), ANY_NUMBER | JUNK),
        "strength": (finite, ANY_NUMBER | JUNK),
        "region": (st.sampled_from([None, torch.rand(S, S, generator=g), torch.ones(n, 1, S, S)]),
                   fuzz_tensors([(S, S), (n, 1, S, S), (S // 2, S // 2)]) | JUNK),
        "attributes": (st.sampled_from([None, ["Male"], ["Young", "Bangs"], []]),
                       st.sampled_from([["Blue_Hair"], "Male", 5])),
        "alphas": (st.lists(finite, min_size=1, max_size=3),
                   st.lists(ANY_NUMBER, max_size=3) | st.sampled_from(["ab", 3, []])),
        "level": (st.sampled_from(["latent", "spade"]), st.sampled_from(["pixel", None])),
        "samples": (st.integers(1, 3), st.sampled_from([0, -1, MAX_SAMPLES + 1, 2.0, True, "2"])),
    }


METHODS = {
    "translate": ("images", "target", "noise", "seed", "strength", "source", "region"),
    "reconstruct": ("images", "noise", "seed"),
    "translate_reference": ("images", "references", "attributes", "source", "reference_labels",
                            "strength", "region"),
    "interpolate": ("images", "references", "target", "alphas", "noise", "seed", "level",
                    "source", "strength", "region"),
    "translate_samples": ("images", "target", "samples", "seed", "strength", "source"),
}


@st.composite
def engine_calls(draw, paths):
    """(method, kwargs): every argument good, one argument bad, or each either way."""
    method = draw(st.sampled_from(sorted(METHODS)))
    names = METHODS[method]
    args = arguments(draw(st.integers(1, 2)), paths)
    mode = draw(st.sampled_from(["good", "one bad", "any"]))
    bad = draw(st.sampled_from(names)) if mode == "one bad" else None
    return method, {name: draw(args[name][1] if name == bad else
                               args[name][0] | args[name][1] if mode == "any" else args[name][0])
                    for name in names}


@pytest.fixture(scope="module")
def fuzz_paths(tmp_path_factory):
    """A good image file first, then bad ones."""
    root = tmp_path_factory.mktemp("fuzz")
    Image.new("RGB", (48, 40), (200, 150, 120)).save(root / "face.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "huge.png").write_bytes(png_header(9000, 9000))
    (root / "zero.png").symlink_to("/dev/zero")
    return [root / "face.png", str(root / "broken.png"), root / "huge.png", root / "zero.png",
            root / "missing.png", root, bytes(root / "face.png")]


FUZZ_COUNTS = {"engine": [0, 0], "config": [0, 0]}  # cases tried, cases that worked


def test_fuzz_engine_api(eng, fuzz_paths):
    """Every call works (finite images of the right shape) or raises a ValueError with a
    message; any other exception fails the test."""

    @FUZZ
    @given(engine_calls(fuzz_paths))
    def check(call):
        method, kw = call
        FUZZ_COUNTS["engine"][0] += 1
        try:
            out = getattr(eng, method)(**kw)
        except ValueError as exc:
            assert str(exc).strip(), f"{type(exc).__name__} without a message"
            return
        FUZZ_COUNTS["engine"][1] += 1
        n = eng.load_images(kw["images"]).shape[0]
        lead = ((len(list(kw["alphas"])), n) if method == "interpolate"
                else (n, kw["samples"]) if method == "translate_samples" else (n,))
        assert out.shape == (*lead, 3, S, S) and torch.isfinite(out).all()

    check()
    tried, worked = FUZZ_COUNTS["engine"]
    print(f"engine fuzz: {tried} cases, {worked} worked, {tried - worked} refused")
    assert tried >= 150 and 0 < worked < tried


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=3),
    max_leaves=8)
FIELD_VALUES = {
    "image_size": st.sampled_from([16, 32, 64, 100, 1024, 2048, 0, -32, 32.0]),
    "attributes": st.sampled_from(["stargan", "Male,Young", "", "Male,Male", ["Male"], [], 5]),
    "eps": st.sampled_from([1e-5, 0.1, 0.2, 0, -1e-5, math.nan, "x", True]),
    "e_blocks": st.integers(-2, 20) | st.just(1.5),
    "g_downs": st.integers(-1, 12), "d_downs": st.integers(-1, 12),
}


@st.composite
def config_dicts(draw):
    data = small_config(S).to_dict() if draw(st.booleans()) else {}
    names = sorted(small_config(S).to_dict()) + ["widht"]
    for name in draw(st.lists(st.sampled_from(names), max_size=3)):
        if name in FIELD_VALUES and draw(st.booleans()):
            data[name] = draw(FIELD_VALUES[name])
        else:
            data[name] = draw(st.integers(0, 600) | JSON)
    return data


def test_fuzz_config_loader():
    """Every dict / JSON text gives a config that round-trips, or a ValueError with a
    message."""

    @FUZZ
    @given(st.one_of(config_dicts(), JSON),
           st.sampled_from(["dict", "json", "json-prefix"]))
    def check(data, how):
        FUZZ_COUNTS["config"][0] += 1
        text = json.dumps(data)
        try:
            cfg = (BridgeGANConfig.from_dict(data) if how == "dict"
                   else BridgeGANConfig.from_json(text if how == "json" else text[:len(text) // 2]))
        except ValueError as exc:
            assert str(exc).strip()
            return
        FUZZ_COUNTS["config"][1] += 1
        assert BridgeGANConfig.from_json(cfg.to_json()) == cfg

    check()
    tried, worked = FUZZ_COUNTS["config"]
    print(f"config fuzz: {tried} cases, {worked} worked, {tried - worked} refused")
    assert tried >= 150 and 0 < worked < tried


# ----- found by fuzzing: raw errors, unbounded options, half-written outputs -------------
def test_meta_and_sparse_image_tensors_are_refused(eng):
    """aminmax of a meta / sparse tensor raised torch's NotImplementedError."""
    x = images(2, S)
    for bad, kind in ((x.to("meta"), "meta"), (x.to_sparse(), "torch.sparse_coo")):
        with pytest.raises(ValueError, match=rf"images: expected a dense tensor holding values, "
                                             rf"got a {kind} tensor"):
            eng.translate(bad, {"Male": 1}, seed=0)
    with pytest.raises(ValueError, match=r"images\[1\]: expected a dense tensor"):
        eng.translate([x[0], x[1].to("meta")], {"Male": 1}, seed=0)


def test_tensors_that_hold_no_plain_values_are_refused_for_every_argument(eng):
    """Labels, noise and regions that were meta, sparse or nested raised torch's
    NotImplementedError or RuntimeError; float8 and nested images too."""
    x, y = images(2, S), labels(2, N_ATTRS, 3)
    dense = {"target labels": lambda t: dict(target=t), "source labels": lambda t: dict(
        target={"Male": 1}, source=t), "noise": lambda t: dict(target={"Male": 1}, noise=t)}
    for what, kw in dense.items():
        value = torch.randn(2, 8) if what == "noise" else y
        for bad, kind in ((value.to("meta"), "meta"), (value.to_sparse(), "torch.sparse_coo")):
            with pytest.raises(ValueError, match=rf"{what}: expected a dense tensor holding "
                                                 rf"values, got a {kind} tensor"):
                eng.translate(x, seed=None if what == "noise" else 0, **kw(bad))
    with pytest.raises(ValueError, match="region: expected a dense tensor holding values, got "
                                         r"a torch.sparse_coo tensor \(make it dense"):
        eng.translate(x, {"Male": 1}, seed=0, region=torch.rand(S, S).to_sparse())
    with pytest.raises(ValueError, match=r"reference labels: expected a dense tensor holding "
                                         r"values, got a meta tensor \(it holds no data\)"):
        eng.translate_reference(x, x, reference_labels=y.to("meta"))
    with pytest.raises(ValueError, match=r"images: expected a floating-point tensor in \[-1, 1\] "
                                         r"\(float16, bfloat16, float32, float64\), got "
                                         r"torch.float8_e4m3fn"):
        eng.classify(x.to(torch.float8_e4m3fn))
    nested = torch.nested.nested_tensor([x[0], x[1]], layout=torch.jagged)
    with pytest.raises(ValueError, match=r"images: expected a dense tensor holding values, got "
                                         r"a nested tensor \(torch.stack its parts\)"):
        eng.classify(nested)


def test_engine_arguments_of_the_wrong_type_are_named(model, tmp_path):
    """Raw TypeErrors and AttributeErrors before; rewrites=0 turned every rewrite on, and
    Rewrites(fold_bias="no") read "no" as on."""
    from bridgegan.engine import Rewrites

    for rewrites in ("none", 0, {"fold_bias": False}):
        with pytest.raises(ValueError, match=r"rewrites must be None \(all\) or a Rewrites"):
            Engine(model, rewrites=rewrites)
    with pytest.raises(ValueError, match="Rewrites.fold_bias must be True or False, got 'no'"):
        Rewrites(fold_bias="no")
    with pytest.raises(ValueError, match="unknown rewrite 'fast'; rewrites are merge_gamma_beta"):
        Rewrites.without("fast")
    with pytest.raises(ValueError, match=r"backend 'reference' runs the unmodified model: "
                                         r"rewrites apply to the backends of the rewritten "
                                         r"graph \(torch, triton"):
        Engine(model, backend="reference", rewrites=Rewrites.none())  # was silently ignored
    with pytest.raises(ValueError, match="backend must be a name: auto, reference, torch, .*; "
                                         "got list"):
        Engine(model, backend=["torch"])
    with pytest.raises(ValueError, match=r"onnx_dir must be a folder path \(str or "
                                         r"os.PathLike\), got int"):
        Engine(model, backend="onnxruntime", onnx_dir=5)
    with pytest.raises(ValueError, match=r"a checkpoint is a folder path \(str or "
                                         r"os.PathLike\), got NoneType"):
        Engine.from_checkpoint(None)
    ck = save_checkpoint(tmp_path / "ck", model)
    with pytest.raises(ValueError, match="expected_config must be a BridgeGANConfig .*, got str"):
        Engine.from_checkpoint(ck, expected_config="x")


def test_reference_counts_name_the_averaging_form(eng):
    """Two references for one source said "expected 1 or 1 images"; averaging more
    references per source than one call encodes at once is refused."""
    from bridgegan.engine.cudagraphs import MAX_ROWS

    x = images(2, S, 20)
    with pytest.raises(ValueError, match=r"references: expected 1 image \(one per source\), "
                                         r"got 2; to average several references per source "
                                         r"pass a list of them"):
        eng.translate_reference(x[:1], [x[0], x[1]])
    with pytest.raises(ValueError, match=r"references\[1\]: expected 1 or 2 images \(one per "
                                         r"source\), got 3$"):
        eng.translate_reference(x, [x, images(3, S, 21)])
    with pytest.raises(ValueError, match=rf"references: at most {MAX_ROWS} references per "
                                         rf"source \(their codes are averaged\), got "
                                         rf"{MAX_ROWS + 1}"):
        eng.translate_reference(x[:1], [[x[0]]] * (MAX_ROWS + 1))


def test_a_nul_in_an_image_path_and_bytes_for_attribute_names_are_named(eng):
    x = images(1, S, 22)
    with pytest.raises(ValueError, match=r"an image path cannot hold a NUL character, got "
                                         r"'face\\x00.png'"):
        eng.classify("face\0.png")
    with pytest.raises(ValueError, match=r"attributes must be a list of attribute names \(of "
                                         r"Black_Hair, .*\), got b'Male'"):
        eng.translate_reference(x, x, attributes=b"Male")


def test_noise_is_bounded_before_float32_rounds_it(eng):
    noise = torch.zeros(1, 8, dtype=torch.float64).normal_(generator=torch.Generator().manual_seed(3))
    noise[0, 2] = 1e39  # inf in float32
    with pytest.raises(ValueError, match=r"noise must be finite and within \[-10000, 10000\], "
                                         r"got 1e\+39"):
        eng.translate(images(1, S), {"Male": 1}, noise=noise)


def test_uint8_image_tensors_are_refused_with_the_mapping(eng):
    pixels = torch.randint(0, 256, (1, 3, S, S), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match=r"got torch.uint8; for 0..255 pixels: "
                                         r"x.float\(\) / 127.5 - 1"):
        eng.classify(pixels)


def test_integers_beyond_a_float_are_refused_as_numbers(eng):
    """float(10**400) raised OverflowError, past every `except (TypeError, ValueError)`."""
    x, huge = images(2, S), 10 ** 400
    with pytest.raises(ValueError, match="strength must be a number, got 1000"):
        eng.translate(x, {"Male": 1}, seed=0, strength=huge)
    with pytest.raises(ValueError, match="each alpha must be a number, got 1000"):
        eng.interpolate(x, x, {"Male": 1}, [0.5, huge], seed=0)
    with pytest.raises(ValueError, match="target for 'Male' must be 0 or 1, got 1000"):
        eng.translate(x, {"Male": huge}, seed=0)
    with pytest.raises(ValueError, match="target labels must be a tensor, array or nested list"):
        eng.translate(x, [huge] * N_ATTRS, seed=0)


def test_a_pil_image_whose_pixels_do_not_decode(eng, tmp_path):
    """Image.open is lazy: a truncated file's PIL image raised OSError inside the call."""
    path = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with Image.open(path) as im:
        with pytest.raises(ValueError, match=r"images\[0\]: the PIL image's pixels cannot be "
                                             r"read \(image file is truncated"):
            eng.translate(im, {"Male": 1}, seed=0)


def test_a_pil_image_closed_before_its_pixels_are_read(eng, tmp_path):
    """Used after its ``with Image.open(...)`` block a PIL image raised a bare
    AssertionError; after ``.close()``, a ValueError not naming the item."""
    path = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), np.uint8)).save(path)
    with Image.open(path) as unread:
        pass
    closed = Image.open(path)
    closed.load()
    closed.close()
    for im in (unread, closed):
        with pytest.raises(ValueError, match=r"images\[1\]: the PIL image's pixels cannot be "
                                             r"read \(.+\); accepted: .* read before it is closed"):
            eng.translate([path, im], {"Male": 1}, seed=0)


def test_channels_last_and_grey_batch_tensors_get_a_hint(eng):
    x = images(2, S)
    with pytest.raises(ValueError, match=r"shape \(32, 32, 3\) is channels-last \(H, W, C\); "
                                         r"expected \(C, H, W\) images: use \.permute\(2, 0, 1\)"):
        eng.translate(x[0].permute(1, 2, 0), {"Male": 1}, seed=0)
    with pytest.raises(ValueError, match=r"shape \(2, 32, 32, 3\) is channels-last .*"
                                         r"\.permute\(0, 3, 1, 2\)"):
        eng.translate(x.permute(0, 2, 3, 1), {"Male": 1}, seed=0)
    with pytest.raises(ValueError, match=r"got 2 \(a 3-D tensor is one image, \(C, H, W\); a "
                                         r"batch of grey images is \(N, 1, H, W\)\)"):
        eng.translate(x[:, 0], {"Male": 1}, seed=0)
    assert eng.translate(x[:, :1], {"Male": 1}, seed=0).shape == (2, 3, S, S)


def test_images_in_0_1_are_warned_about(eng):
    """torchvision's ToTensor gives [0, 1], inside the accepted range: read as washed out."""
    x = images(2, S)
    with pytest.warns(UserWarning, match=r"without a negative value: .* map images in "
                                         r"\[0, 1\] with x \* 2 - 1"):
        eng.translate((x + 1) / 2, {"Male": 1}, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eng.translate(x, {"Male": 1}, seed=0)


def test_numpy_images_get_the_conversion_named(eng):
    array = np.random.default_rng(2).integers(0, 255, (S, S, 3), np.uint8)
    for passed, what in ((array, "images"), ([array], r"images\[0\]")):
        with pytest.raises(ValueError, match=rf"{what}: expected a tensor, .* got ndarray; for a "
                                             r"numpy image .* PIL\.Image\.fromarray\(a\)"):
            eng.translate(passed, {"Male": 1}, seed=0)
    out = eng.translate(torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1, {"Male": 1},
                        seed=0)
    assert torch.equal(out, eng.translate(Image.fromarray(array), {"Male": 1}, seed=0))


def test_numpy_views_are_read_as_the_values_they_show(eng):
    """A flipped view (negative strides) was refused as not an array of numbers, and a
    read-only one (np.broadcast_to) made torch warn."""
    x = images(2, S)
    m = np.random.default_rng(3).random((S, S))
    want = eng.translate(x, {"Male": 1}, seed=0, region=np.ascontiguousarray(m[:, ::-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for view in (m[:, ::-1], np.broadcast_to(m[:, ::-1].copy(), (2, S, S))):
            assert torch.equal(eng.translate(x, {"Male": 1}, seed=0, region=view), want)


def test_region_range_error_says_what_it_got(eng):
    x = images(2, S)
    mask = np.zeros((S, S))
    mask[:, : S // 2] = 255
    with pytest.raises(ValueError, match=r"in \[0, 1\] \(1: edit, 0: keep\), got \[0, 255\] "
                                         r"\(a 0\.\.255 mask: divide it by 255\)"):
        eng.translate(x, {"Male": 1}, seed=0, region=mask)


def test_one_image_references_as_many_as_the_sources_are_ambiguous(eng):
    """``images`` reads a list of one-image tensors as one batch; ``references`` read it as
    K references for every source and averaged them (0.6-0.9 max abs off, shipped model,
    for a caller who meant one per source). Refused, naming both spellings; each works."""
    x, r = images(2, S), images(2, S, seed=4)
    with pytest.raises(ValueError, match=r"a list of 2 one-image tensors for 2 sources is "
                                         r"ambiguous: .*torch\.cat\(references\).*"
                                         r"\[\[r\] for r in references\]"):
        eng.translate_reference(x, [r[:1], r[1:]])
    with pytest.raises(ValueError, match="ambiguous"):
        eng.interpolate(x, [r[:1], r[1:]], {"Male": 1}, [0.5], seed=0)
    per_source = eng.translate_reference(x, r)
    assert torch.equal(eng.translate_reference(x, [r[0], r[1]]), per_source)
    shared = eng.translate_reference(x, [[r[:1]], [r[1:]]])
    assert torch.equal(shared, eng.translate_reference(x, [r[:1].expand(2, -1, -1, -1),
                                                           r[1:].expand(2, -1, -1, -1)]))
    assert not torch.allclose(shared, per_source)
    assert eng.translate_reference(x[:1], [r[:1], r[1:]]).shape == (1, 3, S, S)  # K = 2


@pytest.mark.parametrize("device", ["gpu", "meta", "mps", None, "cuda:x"])
def test_engine_device_must_be_cpu_or_cuda(model, device):
    """"gpu" reached torch's list of every device type; "meta" made an engine whose every
    call failed with a torch error."""
    with pytest.raises(ValueError, match=rf"device must be cpu, cuda or cuda:N \(or a torch."
                                         rf"device of those\), got {re.escape(repr(device))}"):
        Engine(model, device=device)


CAPPED = [
    (["translate", "--input", "f.png", "--set", "Male=1", "--out", "o", "--threads",
      "3000000000"], "--threads: must be an integer from 1 to 1024, got '3000000000'"),
    (["translate", "--input", "f.png", "--set", "Male=1", "--out", "o", "--samples", "65"],
     "--samples: must be an integer from 1 to 64, got '65'"),
    (["translate", "--input", "f.png", "--set", "Male=1", "--out", "o", "--seed",
      str(2 ** 64)], f"--seed: must be an integer from 0 to {2 ** 64 - 1}, got '{2 ** 64}'"),
    (["demo", "--samples", str(10 ** 23)], "--samples: must be an integer from 0 to 64"),
    (["demo", "--seed", str(2 ** 64 - 1)], f"--seed: must be an integer from 0 to {2 ** 63}"),
    (["cache", "--prune", str(10 ** 400)], "--prune: must be an integer from 0 to 1000000"),
    (["bench", "--min-seconds", "inf"], "--min-seconds: must be a finite number >= 0, got 'inf'"),
    (["bench", "--min-seconds", "nan"], "--min-seconds: must be a finite number >= 0, got 'nan'"),
    (["bench", "--min-seconds", "-1"], "--min-seconds: must be a finite number >= 0, got '-1'"),
    # config.pbtxt holds them in int32 fields: Triton refused the repository written
    (["export", "triton-repo", "ck", "repo", "--max-queue-size", str(10 ** 20)],
     f"--max-queue-size: must be an integer from 0 to 2147483647, got '{10 ** 20}'"),
    (["serve", "--checkpoint", "ck", "--write-repository", "repo", "--max-batch",
      str(10 ** 12)], f"--max-batch: must be an integer from 1 to 2147483647, got '{10 ** 12}'"),
    (["serve", "--checkpoint", "ck", "--exit-timeout-secs", str(10 ** 20)],
     f"--exit-timeout-secs: must be an integer from 0 to 2147483647, got '{10 ** 20}'"),
    # 2**64 overflowed in the run ("Overflow when unpacking long long"); train took -1
    (["train-classifier", "--out", "clf", "--seed", str(2 ** 64)],
     f"--seed: must be an integer from 0 to {2 ** 64 - 1}, got '{2 ** 64}'"),
    (["train", "--data", "synthetic:8", "--seed", "-1"],
     f"--seed: must be an integer from 0 to {2 ** 64 - 1}, got '-1'"),
    (["train-classifier", "--out", "clf", "--resolution", "100000"],  # ran out of memory
     "--resolution: must be an integer from 16 to 1024, got '100000'"),
]


@pytest.mark.parametrize("argv, message", CAPPED, ids=[f"{a[0]}{a[-2]}" for a, _ in CAPPED])
def test_unbounded_numbers_are_capped_by_the_parser(tmp_path, monkeypatch, capsys, argv,
                                                    message):
    """--threads 3000000000 was a traceback (torch.set_num_threads overflowed), translate
    --samples 10**23 ran out of memory naming its outputs and demo --samples 10**23 was
    an OverflowError traceback, --seed 2**64 failed after loading the model, --prune
    10**400 an OverflowError traceback, bench --min-seconds inf timed one row forever."""
    assert_parser_refuses(argv, message, tmp_path, monkeypatch, capsys)


def test_translate_seeds_past_2_64_are_refused_naming_the_options(cli_files, capsys):
    assert main(translate_args(cli_files, "out-seed", "--seed", str(2 ** 64 - 1),
                               "--samples", "2")) == 2
    err = capsys.readouterr().err
    assert (f"--seed {2 ** 64 - 1} with 2 samples draws seeds up to {2 ** 64}; seeds must be "
            f"below 2**64: give --seed <= {2 ** 64 - 2}") in err
    assert not (cli_files / "out-seed").exists()


def test_bench_refuses_a_resolution_before_writing_anything(cli_files, tmp_path, capsys):
    """The check ran at the resolution's turn, after the partial CSV was created."""
    for extra, message in ((["--checkpoint", str(cli_files / "ck"), "--resolutions", "64"],
                            f"makes {S} px images; --resolutions must be {S}"),
                           (["--resolutions", "7"], "config.image_size must be an integer")):
        out = tmp_path / "bench"
        assert main(["bench", *extra, "--variants", "torch:float32", "--batches", "1",
                     "--workloads", "translate", "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_translate_never_leaves_a_part_of_an_output(cli_files, tmp_path):
    """With the file size limited (RLIMIT_FSIZE; Python ignores SIGXFSZ, so a write gets
    EFBIG), translate fails while writing an output: an earlier run's file there is kept
    whole, not replaced by the part written (PIL wrote into the output itself); the earlier
    run's grid, which showed it, is removed."""
    import resource
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    old = out / "face_edit1.png"
    old.write_bytes(b"an earlier run's result")
    (out / "grid.png").write_bytes(b"an earlier run's grid")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (400, 400))

    proc = subprocess.run(
        [sys.executable, "-m", "bridgegan.cli", "translate", "--checkpoint",
         str(cli_files / "ck"), "--input", str(cli_files / "face.png"), "--set", "Male=1",
         "--out", str(out), "--threads", "1"],
        preexec_fn=limit, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "File too large" in proc.stderr and "Traceback" not in proc.stderr
    assert old.read_bytes() == b"an earlier run's result"
    assert sorted(p.name for p in out.iterdir()) == ["face_edit1.png"]  # no temporary left


def test_noise_and_seed_together_are_refused(eng):
    """The seed was checked, then silently ignored for the noise given (serve refuses the
    pair too)."""
    x = images(2, S)
    noise = torch.randn(2, eng.config.noise_dim, generator=torch.Generator().manual_seed(5))
    for call in (lambda **kw: eng.translate(x, {"Male": 1}, **kw),
                 lambda **kw: eng.reconstruct(x, **kw),
                 lambda **kw: eng.interpolate(x, x, {"Male": 1}, [0.5], **kw)):
        with pytest.raises(ValueError, match=r"give noise or seed, not both"):
            call(noise=noise, seed=0)
        with pytest.raises(ValueError, match=r"give noise or seed, not both"):
            call(noise=noise, seed=[1, 2])


def test_flags_must_be_booleans_and_labels_real(model, eng):
    """channels_last="no" (truthy) was taken as True, and complex labels lost their
    imaginary parts with only a torch warning."""
    for name in ("channels_last", "cuda_graphs", "cudnn_benchmark"):
        with pytest.raises(ValueError, match=rf"{name} must be True, False or None, got 'no'"):
            Engine(model, **{name: "no"})
    for bad in ("no", None):
        with pytest.raises(ValueError, match=rf"streams must be True or False, got {bad!r}"):
            Engine(model, streams=bad)
    x = images(1, S)
    for cache in ("no", None):
        with pytest.raises(ValueError, match=rf"cache must be True or False, got {cache!r}"):
            eng.edit_strip(x, cache=cache)
    with pytest.raises(ValueError, match=r"target labels must hold real numbers, got complex64"):
        eng.translate(x, torch.ones(1, N_ATTRS, dtype=torch.complex64), seed=0)
    with pytest.raises(ValueError, match=r"noise must hold real numbers, got complex128"):
        eng.reconstruct(x, noise=np.ones((1, eng.config.noise_dim), dtype=complex))
    with pytest.raises(ValueError, match=r"target labels must hold real numbers, got complex"):
        eng.translate(x, [[np.complex128(1)] * N_ATTRS], seed=0)  # list(array) gives these
