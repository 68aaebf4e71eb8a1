"""Serving: the batch runner against the engine (in process), the python-backend model
repository (files, and its model class on a stand-in of Triton's module), the front's
checks (in process, and over loopback in front of a stand-in of tritonserver: malformed
JSON, slow clients), then for real on loopback: `bridgegan serve --checkpoint` over HTTP
and gRPC, dynamic batching, bad requests, a bounded load, hostile traffic, shutdown, and
`serve --repository` on a repository written before.

The server tests need the serve extra (nvidia-pytriton, tritonclient; numpy<2), which CI's
environment does not install: they skip there, naming the missing package; the front's
loopback tests need only aiohttp and grpcio."""
from __future__ import annotations

import contextlib
import errno
import http.client
import http.server
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from bridgegan.cli import main
from bridgegan.engine import Engine, NonFiniteOutputError
from bridgegan.numerics import tolerance
from bridgegan.reference import BridgeGAN, save_checkpoint
from bridgegan.serve import client_limits, request_checks
from bridgegan.serve import front as front_module
from bridgegan.serve.request_checks import RequestError, check, grpc_arrays, http_arrays
from bridgegan.serve.models import NUMPY_TYPES, model_specs, run_requests
from bridgegan.serve.names import MODELS
from bridgegan.serve.process import free_ports
from conftest import benchmark_script, images, labels, randomize, small_config

ATOL = tolerance("float32").image_max_abs
MISSING = [pkg for module, pkg in (("pytriton", "nvidia-pytriton"),
                                   ("tritonclient", "tritonclient"))
           if importlib.util.find_spec(module) is None]
needs_serve = pytest.mark.skipif(bool(MISSING), reason=f"needs {' and '.join(MISSING)}: pip "
                                 "install 'bridgegan[serve]' (it pins numpy<2)")
FRONT_MISSING = [m for m in ("aiohttp", "grpc") if importlib.util.find_spec(m) is None]
needs_front = pytest.mark.skipif(bool(FRONT_MISSING), reason=f"needs {' and '.join(FRONT_MISSING)}"
                                 ": pip install aiohttp grpcio")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(4)
    return randomize(BridgeGAN(small_config(32)), seed=4).eval()


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model, backend="torch")


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ck", model)


def noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))


def close(got: np.ndarray, want: torch.Tensor) -> bool:
    return got.shape == tuple(want.shape) and np.abs(got - want.numpy()).max() <= ATOL


SEEDS = np.array([[7], [0], [2 ** 64 - 1]], np.uint64)  # one per row, the extremes included


def cases(engine) -> list[tuple[str, dict, torch.Tensor]]:
    """(model, request inputs, the engine's own output) for every model and input mix."""
    x, ref, ys, yt = images(3, 32, 1), images(3, 32, 2), labels(3, 6, 1), labels(3, 6, 2)
    r = noise(3, 3)
    mask = np.zeros((3, 6), bool)
    mask[:, [1, 3]] = True
    return [
        ("translate_label", {"image": x, "target": yt, "noise": r, "source": ys},
         engine.translate(x, yt, noise=r, source=ys)),
        ("translate_label", {"image": x, "target": yt, "noise": r,
                             "strength": torch.full((3, 1), 0.75)},
         engine.translate(x, yt, noise=r, strength=0.75)),
        ("translate_reference", {"image": x, "reference": ref, "source": ys},
         engine.translate_reference(x, ref, source=ys)),
        ("translate_reference", {"image": x, "reference": ref, "attributes": mask,
                                 "strength": torch.full((3, 1), 2.0)},
         engine.translate_reference(x, ref, attributes=["Blond_Hair", "Male"], strength=2.0)),
        ("reconstruct", {"image": x, "noise": r}, engine.reconstruct(x, noise=r)),
        ("translate_label", {"image": x, "target": yt, "seed": SEEDS, "source": ys},
         engine.translate(x, yt, seed=SEEDS[:, 0].tolist(), source=ys)),
        ("reconstruct", {"image": x, "seed": SEEDS},
         engine.reconstruct(x, seed=SEEDS[:, 0].tolist())),
    ]


def as_numpy(inputs: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in inputs.items()}


# ----------------------------------------------------------------------------- in process

def test_batches_of_requests_match_the_engine(engine):
    assert tuple(model_specs(engine.config)) == MODELS  # the served table names each model
    for name, inputs, want in cases(engine):
        got = run_requests(engine, name, [as_numpy(inputs)])[0]["output"]
        assert close(got, want), name
    # one batch mixing requests: with and without source labels, several strengths, masks
    label, strength = cases(engine)[0][1], cases(engine)[1][1]
    split = [{k: v[i:i + 1] for k, v in as_numpy(label).items()} for i in range(3)]
    split[1].pop("source")
    got = run_requests(engine, "translate_label", [*split, as_numpy(strength)])
    x, yt, r, ys = (label[k] for k in ("image", "target", "noise", "source"))
    for i in (0, 2):
        assert close(got[i]["output"], engine.translate(x[i:i + 1], yt[i:i + 1], noise=r[i:i + 1],
                                                        source=ys[i:i + 1]))
    assert close(got[1]["output"], engine.translate(x[1:2], yt[1:2], noise=r[1:2]))
    assert close(got[3]["output"], cases(engine)[1][2])
    refs = [as_numpy(c[1]) for c in cases(engine) if c[0] == "translate_reference"]
    got = run_requests(engine, "translate_reference", refs)
    assert all(close(g["output"], c[2]) for g, c in zip(got, cases(engine)[2:4]))
    # seeded rows give what they give alone, in whatever batch and position
    seeded = as_numpy(cases(engine)[5][1])
    rows = [{k: v[i:i + 1] for k, v in seeded.items()} for i in (2, 0, 1)]
    got = run_requests(engine, "translate_label", [rows[0], as_numpy(label), *rows[1:]])
    assert [close(g["output"], cases(engine)[5][2][i:i + 1])
            for g, i in zip(got[:1] + got[2:], (2, 0, 1))] == [True] * 3


def test_head_labels_do_not_depend_on_the_batch(engine):
    """A request without source labels gets the attribute head's labels its rows get
    alone, whatever its batch mates: a row whose logit is a rounding away from 0 (bisected
    between two images, random or flat, the head labels differently) keeps its label and
    its result in batches of 2 to 9, in the engine and served (the batch's float32
    rounding once flipped it: 0.25 apart)."""
    x = torch.cat([images(16, 32, 11), *(torch.full((1, 3, 32, 32), v) for v in (-1, 0, 1))])
    with torch.no_grad():
        logits = engine.attribute_logits(x)
    k = next(k for k in range(logits.shape[1])
             if (logits[:, k] > 0).any() and (logits[:, k] <= 0).any())
    a, b = int((logits[:, k] > 0).nonzero()[0]), int((logits[:, k] <= 0).nonzero()[0])

    def row(t):
        return ((1 - t) * x[a] + t * x[b])[None]

    lo, hi = 0.0, 1.0
    for _ in range(64):
        mid = (lo + hi) / 2
        with torch.no_grad():
            lo, hi = (mid, hi) if engine.attribute_logits(row(mid))[0, k] > 0 else (lo, mid)
    target, r = torch.ones(1, 6), torch.zeros(1, 8)
    for edge in (row(lo), row(hi)):
        want_labels, want = engine.classify(edge), engine.translate(edge, target, noise=r)
        request = as_numpy({"image": edge, "target": target, "noise": r})
        for n in range(1, 9):
            assert torch.equal(engine.classify(torch.cat([x[:n], edge]))[-1:], want_labels), n
            mates = [as_numpy({"image": x[i:i + 1], "target": target, "noise": r})
                     for i in range(n)]
            got = run_requests(engine, "translate_label", [*mates, request])[-1]["output"]
            assert close(got, want), n


def test_bad_requests_fail_alone(engine):
    x, t = images(1, 32, 5).numpy(), labels(1, 6, 5).numpy()
    nan = x.copy()
    nan[0, 1, 2, 3] = np.nan
    bad = [({"image": nan, "target": t}, "image: contain NaN or Inf"),
           ({"image": 2 * x, "target": t}, r"values must lie in \[-1, 1\]"),
           ({"image": x, "target": np.full_like(t, np.inf)}, "'target' contains NaN or Inf"),
           ({"image": x, "target": np.ones((1, 7), np.float32)},
            r"'target' must have shape \(N, 6\)"),
           ({"image": x[:, :, :16, :16], "target": t}, r"'image' must have shape \(N, 3, 32, 32\)"),
           ({"image": x}, "missing input 'target'"),
           ({"image": x, "target": t, "region": t}, "unknown input"),
           ({"image": x, "target": t, "seed": np.full((1, 1), -1)},
            r"input 'seed' must hold integers in \[0, 2\*\*64\), got int64 \[-1\]"),
           ({"image": x, "target": t, "seed": np.full((1, 1), 3.0)},
            r"input 'seed' must hold integers in \[0, 2\*\*64\), got float64"),
           ({"image": x, "target": t, "seed": SEEDS[:1], "noise": noise(1, 5).numpy()},
            "give noise or seed, not both"),
           ({"image": np.concatenate([x, x]), "target": t}, "'target' has 1 rows, the others 2"),
           ({"image": x[:0], "target": t[:0]}, "image: empty batch"),
           ({"image": x, "target": t, "noise": np.full((1, 8), 1e6, np.float32)},
            r"input 'noise' must be finite and within \[-10000, 10000\], got 1e\+06"),
           ({"image": x, "target": t, "strength": np.full((1, 1), 11, np.float32)},
            r"input 'strength' must be finite and within \[-10, 10\], got 11"),
           ({"image": x, "target": t, "strength": np.full((1, 1), -1e30, np.float32)},
            r"input 'strength' must be finite and within \[-10, 10\], got -1e\+30"),
           ({"image": x, "target": t, "strength": np.full((1, 1), np.nan, np.float32)},
            r"input 'strength' must be finite and within \[-10, 10\], got nan")]
    good = {"image": x, "target": t, "noise": noise(1, 5).numpy()}
    results = run_requests(engine, "translate_label", [good, *(b for b, _ in bad), good])
    for (_, message), got in zip(bad, results[1:-1]):
        assert isinstance(got, ValueError)
        assert re.search(message, str(got)), (message, got)
    want = engine.translate(torch.from_numpy(x), torch.from_numpy(t), noise=noise(1, 5))
    assert close(results[0]["output"], want) and close(results[-1]["output"], want)


def test_a_refused_request_leaves_no_tensor_to_the_cycle_collector(engine):
    """A refused request's error is kept for its response without its traceback: with it,
    the batch's tensors (every request's inputs and outputs) stayed alive in a cycle
    through run_requests' frame until Python's cycle collector ran."""
    import gc

    x, t = images(2, 32, 7).numpy(), labels(2, 6, 7).numpy()

    def tensors() -> int:
        return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())

    requests = [{"image": x, "target": t, "noise": noise(2, 7).numpy()},
                {"image": 2 * x, "target": t}]  # refused by its checks: out of range
    refused = [dict(requests[0], noise=np.full((2, 8), RefusingEngine.refused, np.float32)),
               requests[0]]  # refused by the engine: the batch runs again one by one
    for served, batch in ((engine, requests), (RefusingEngine(engine), refused)):
        run_requests(served, "translate_label", batch)  # first calls' caches made
        gc.collect()
        gc.disable()
        try:
            before = tensors()
            got = run_requests(served, "translate_label", batch)
            assert [type(g) for g in got] == ([dict, ValueError] if served is engine
                                              else [ValueError, dict])
            del got
            assert tensors() == before
        finally:
            gc.enable()


class RefusingEngine:
    """The engine, refusing any translation whose noise holds ``refused`` (ValueError) or
    ``broken`` (RuntimeError): checks stricter than ``check_request``'s, a server fault."""

    refused, broken = 7.0, 8.0

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def translate(self, *args, noise, **kwargs):
        if (noise == self.refused).any():
            raise ValueError(f"noise {self.refused:g} refused")
        if (noise == self.broken).any():
            raise RuntimeError("broken")
        return self.engine.translate(*args, noise=noise, **kwargs)


def test_a_refused_batch_runs_again_request_by_request(engine):
    x, t, r = images(3, 32, 6), labels(3, 6, 6), noise(3, 6)
    requests = [as_numpy({"image": x[i:i + 1], "target": t[i:i + 1], "noise": r[i:i + 1],
                          "source": t[i:i + 1]}) for i in range(3)]
    requests[1]["noise"] = np.full((1, 8), RefusingEngine.refused, np.float32)
    got = run_requests(RefusingEngine(engine), "translate_label", requests)
    assert isinstance(got[1], ValueError) and str(got[1]) == "noise 7 refused"
    for i in (0, 2):
        assert close(got[i]["output"], engine.translate(x[i:i + 1], t[i:i + 1], noise=r[i:i + 1],
                                                        source=t[i:i + 1]))
    requests[1]["noise"][:] = RefusingEngine.broken  # not the request's fault: no slot error
    with pytest.raises(RuntimeError, match="broken"):
        run_requests(RefusingEngine(engine), "translate_label", requests)


# ------------------------------------------------------------------ the front's checks

IMAGE = images(1, 32, 12).flatten().tolist()


def json_input(name: str, shape, data, datatype: str = "FP32", **fields) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data, **fields}


def label_inputs() -> list[dict]:
    """A valid translate_label request's inputs, as JSON."""
    return [json_input("image", [1, 3, 32, 32], IMAGE),
            json_input("target", [1, 6], [0, 1, 0, 1, 0, 1])]


def reference_inputs() -> list[dict]:
    """A valid translate_reference request's inputs, as JSON."""
    return [json_input("image", [1, 3, 32, 32], IMAGE),
            json_input("reference", [1, 3, 32, 32], IMAGE),
            json_input("attributes", [1, 6], [True, False, True, False, False, False], "BOOL")]


def changed(inputs: list[dict], k: int, **fields) -> str:
    """``inputs`` as a JSON request body, input ``k``'s ``fields`` replaced (None: removed)."""
    inputs = [dict(i) for i in inputs]
    inputs[k].update(fields)
    inputs[k] = {f: v for f, v in inputs[k].items() if v is not None}
    return json.dumps({"inputs": inputs})


def binary_reference(attributes: bytes) -> tuple[bytes, int]:
    """A translate_reference request in the binary extension: (body, JSON header length)."""
    image = np.asarray(IMAGE, np.float32).tobytes()
    head = json.dumps({"inputs": [
        {"name": n, "datatype": "FP32", "shape": [1, 3, 32, 32],
         "parameters": {"binary_data_size": len(image)}} for n in ("image", "reference")] + [
        {"name": "attributes", "datatype": "BOOL", "shape": [1, 6],
         "parameters": {"binary_data_size": len(attributes)}}]}).encode()
    return head + image + image + attributes, len(head)


def duplicated_shape() -> str:
    """translate_label with the image's "shape" given twice: first wrong, then right."""
    image, target = label_inputs()
    return ('{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 16, 16], '
            f'"shape": [1, 3, 32, 32], "data": {json.dumps(image["data"])}}}, '
            f'{json.dumps(target)}]}}')


LABEL, REFERENCE = label_inputs(), reference_inputs()
OUT_OF_RANGE = [json_input("image", [1, 3, 32, 32], [1e9] * 3072), LABEL[1]]
MALFORMED = [  # (model, body, JSON header length of a binary request, message)
    ("translate_label", '{"inputs": %s, "inputs": %s}' % (
        json.dumps(OUT_OF_RANGE), json.dumps(LABEL)), None,
     "the JSON repeats the key 'inputs' in an object; give each key once"),
    ("translate_label", duplicated_shape(), None, "the JSON repeats the key 'shape'"),
    ("translate_label", changed(LABEL, 0, shape=[1.0, 3, 32, 32]), None,
     "input 'image': the shape must be a list of integers, got [1.0, 3, 32, 32]"),
    ("translate_label", changed(LABEL, 0, shape=[1, 3, 32, 32.0]), None,
     "the shape must be a list of integers, got [1, 3, 32, 32.0]"),
    ("translate_label", changed(LABEL, 0, shape=[True, 3, 32, 32]), None,
     "the shape must be a list of integers, got [true, 3, 32, 32]"),
    ("translate_label", changed(LABEL, 0, shape="1,3,32,32"), None,
     'the shape must be a list of integers, got "1,3,32,32"'),
    ("translate_label", changed(LABEL, 0, parameters=[1]), None,
     "input 'image': \"parameters\" must be a JSON object, got a list"),
    ("translate_label", changed(LABEL, 0, parameters="x"), None,
     "input 'image': \"parameters\" must be a JSON object, got a string"),
    ("translate_label", json.dumps({"inputs": LABEL, "parameters": 3}), None,
     "the request: \"parameters\" must be a JSON object, got a number"),
    ("translate_label", changed(LABEL, 0, data=None), None,
     "input 'image': \"data\" must be a list of numbers (or give \"binary_data_size\"), got null"),
    ("translate_label", changed(LABEL, 1, data=["1"] * 6), None,
     "input 'target': \"data\" of a FP32 input must hold JSON numbers (lists of them may nest, "
     "evenly), got a string"),
    ("translate_label", changed(LABEL, 1, data=[True] * 6), None,
     "input 'target': \"data\" of a FP32 input must hold JSON numbers (lists of them may nest, "
     "evenly), got true / false"),
    ("translate_label", changed(LABEL, 1, data=[[0, 1, 0], 1, 0, 1]), None,
     "input 'target': \"data\" of a FP32 input must hold JSON numbers (lists of them may nest, "
     "evenly), got a list"),
    ("translate_label", changed(LABEL, 1, data=[10 ** 400] * 6), None,
     "input 'target': data must be FP32 values (int too large to convert to float)"),
    ("translate_reference", changed(REFERENCE, 2, data=[0.5, 2, -1, 0, 0, 0]), None,
     "input 'attributes': \"data\" of a BOOL input must hold JSON true / false (lists of them "
     "may nest, evenly), got a number"),
    ("translate_label", json.dumps({"inputs": LABEL}).encode("utf-16"), None,
     "the request must be a JSON inference request in UTF-8; byte 0 is not UTF-8"),
    ("translate_label", json.dumps({"inputs": LABEL + [json_input("strength", [1, 1], [1e30])]}),
     None, "translate_label: invalid input: input 'strength' must be finite and within "
           "[-10, 10], got 1e+30"),
    ("translate_label", json.dumps({"inputs": LABEL + [json_input("noise", [1, 8], [-1e6] * 8)]}),
     None, "input 'noise' must be finite and within [-10000, 10000], got -1e+06"),
    ("translate_label", json.dumps({"inputs": LABEL + [json_input("seed", [1, 1], [-1],
                                                                  "UINT64")]}),
     None, "input 'seed': UINT64 values must lie in [0, 2**64), got -1"),
    ("translate_label", json.dumps({"inputs": LABEL + [json_input("seed", [1, 1], [2 ** 64],
                                                                  "UINT64")]}),
     None, f"input 'seed': UINT64 values must lie in [0, 2**64), got {2 ** 64}"),
    ("translate_label", json.dumps({"inputs": LABEL + [json_input("seed", [1, 1], [1.5],
                                                                  "UINT64")]}),
     None, "input 'seed': \"data\" of a UINT64 input must hold JSON integers (lists of them "
           "may nest, evenly), got a number"),
    ("translate_label", json.dumps({"inputs": LABEL + [json_input("seed", [1, 1], [1], "UINT64"),
                                                       json_input("noise", [1, 8], [0] * 8)]}),
     None, "translate_label: invalid input: give noise or seed, not both"),
    ("translate_label", b"[1]", None, "the request must be a JSON inference request"),
    ("translate_label", json.dumps({"inputs": LABEL,
                                    "parameters": {f"k{i}": i for i in range(65)}}), None,
     'the request: at most 64 "parameters", got 65'),
    ("translate_label", json.dumps({"inputs": LABEL, "outputs": [
        {"name": "output", "parameters": {f"k{i}": i for i in range(65)}}]}), None,
     'output 0: at most 64 "parameters", got 65'),
    ("translate_label", "[" * 100_000 + "]" * 100_000, None,
     "translate_label: invalid request (RecursionError: maximum recursion depth exceeded"),
    ("translate_reference", *binary_reference(bytes([0, 2, 0, 255, 0, 0])),
     "input 'attributes': binary BOOL data must be bytes 0 (false) or 1 (true)"),
]


def as_bytes(body) -> bytes:
    return body if isinstance(body, bytes) else body.encode()


def front_check(config, model: str, body, header_length: int | None = None) -> None:
    """The front's decoding and checking of one HTTP request body (max batch 8)."""
    spec = model_specs(config)[model]
    check(spec, lambda: http_arrays(spec, 8, as_bytes(body), header_length))


def test_front_accepts_json_nested_lists_and_binary(engine):
    front_check(engine.config, "translate_label", json.dumps({"inputs": LABEL}))
    nested = np.reshape(IMAGE, (1, 3, 32, 32)).tolist()
    front_check(engine.config, "translate_label", changed(LABEL, 0, data=nested))
    front_check(engine.config, "translate_reference", json.dumps({"inputs": REFERENCE}))
    front_check(engine.config, "translate_reference", *binary_reference(bytes([1, 0, 1, 0, 0, 1])))
    spec = model_specs(engine.config)["translate_reference"]
    arrays = http_arrays(spec, 8, *binary_reference(bytes([1, 0, 1, 0, 0, 1])))
    assert arrays["attributes"].tolist() == [[True, False, True, False, False, True]]
    spec = model_specs(engine.config)["translate_label"]
    seed = json.dumps({"inputs": LABEL + [json_input("seed", [1, 1], [2 ** 64 - 1], "UINT64")]})
    assert http_arrays(spec, 8, seed.encode(), None)["seed"].tolist() == [[2 ** 64 - 1]]


def test_the_front_takes_unit_range_images_without_the_python_hint(engine):
    """The engine warns Python callers about [0, 1] images; the front's check of a client's
    request does not (under -W error the warning made the request a 400)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        front_check(engine.config, "translate_label",
                    changed(LABEL, 0, data=[abs(v) for v in IMAGE]))


def test_json_of_many_small_items_is_refused_before_it_is_parsed(engine, monkeypatch):
    """A body of empty lists ("[],": 3 bytes, some 64 for Python) within the size limit is
    refused from its count of commas and brackets, unparsed; the most nested request of
    max batch rows is not."""
    monkeypatch.setattr(request_checks, "json_head", lambda raw: pytest.fail("parsed"))
    spec = model_specs(engine.config)["translate_label"]
    body = b'{"inputs": [' + b"[]," * 200_000 + b"[]]}"
    with pytest.raises(RequestError, match=r"^the JSON holds 400003 items .*, more than 8 rows "
                                           r"of translate_label's inputs take") as err:
        http_arrays(spec, 8, body, None)
    assert err.value.status == 413
    monkeypatch.undo()
    nested = [json_input(p.name, [8, *p.shape], np.zeros((8, *p.shape)).tolist())
              for p in spec.inputs if p.name != "seed"]
    front_check(engine.config, "translate_label", json.dumps({"inputs": nested}))


@pytest.mark.parametrize("name, body, header_length, message", MALFORMED,
                         ids=[m[3][:40] for m in MALFORMED])
def test_front_refuses_malformed_requests_with_400(engine, name, body, header_length, message):
    with pytest.raises(RequestError) as err:
        front_check(engine.config, name, body, header_length)
    assert err.value.status == 400 and message in str(err.value), str(err.value)


class FakeTriton(http.server.BaseHTTPRequestHandler):
    """tritonserver's private HTTP socket, stood in for: records each POST body and gives
    the server's ``reply`` (status, JSON)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.server.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.gate.wait(60)  # a test holds requests here by clearing it
        time.sleep(self.server.delay)
        status, answer = self.server.reply
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


READ_TIMEOUT_S = 3.0  # the in-process front's; short, so that the slow-client tests are
OK_REPLY = (200, {"model_name": "translate_label", "outputs": []})


@pytest.fixture(scope="module")
def front(engine, tmp_path_factory):
    """The front on a free loopback port (max batch 8, READ_TIMEOUT_S) in front of a
    FakeTriton, its ``fake`` attribute; ``http``: its "host:port"."""
    from bridgegan.serve.front import Front

    folder = tmp_path_factory.mktemp("front")
    fake = socketserver.ThreadingUnixStreamServer(str(folder / "http.sock"), FakeTriton)
    fake.bodies, fake.reply, fake.daemon_threads, fake.delay = [], OK_REPLY, True, 0.0
    fake.gate = threading.Event()
    fake.gate.set()
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    specs = {name: (spec, 8) for name, spec in model_specs(engine.config).items()}
    with Front(specs, folder / "http.sock", f"unix:{folder / 'grpc.sock'}", "127.0.0.1",
               free_ports(1)[0], 0, READ_TIMEOUT_S) as served:
        served.fake, served.http = fake, f"{served.host}:{served.http_port}"
        yield served
    fake.shutdown()
    fake.server_close()


def post(address: str, body, path: str = "/v2/models/translate_label/infer",
         headers: dict | None = None, answer_headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON answer) of one POST to the server at ``address`` ("host:port"); the
    answer's headers go into ``answer_headers`` where given."""
    conn = http.client.HTTPConnection(address, timeout=60)
    try:
        conn.request("POST", path, body=as_bytes(body), headers=headers or {})
        response = conn.getresponse()
        if answer_headers is not None:
            answer_headers.update(response.getheaders())
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@needs_front
def test_front_over_http_forwards_valid_and_refuses_malformed_requests(front):
    valid = json.dumps({"inputs": LABEL})
    front.fake.bodies.clear()
    assert post(front.http, valid) == OK_REPLY
    for name, body, header_length, message in MALFORMED:
        headers = {} if header_length is None else {
            "Inference-Header-Content-Length": str(header_length)}
        status, answer = post(front.http, body, f"/v2/models/{name}/infer", headers)
        assert status == 400 and message in answer["error"], (status, answer)
    assert front.fake.bodies == [valid.encode()]  # nothing malformed reached it


@needs_front
def test_a_binary_request_may_send_some_inputs_as_json(front):
    """tritonclient sends an input set with binary_data=False inside the JSON part of a
    binary request: a batch of images there passes 64 KiB (413 before), up to a JSON
    request's size; the JSON part's items are bounded as a JSON request's are."""
    n = 4
    image = np.asarray(IMAGE, np.float32).reshape(1, 3, 32, 32).repeat(n, 0)
    attributes = bytes([1, 0, 1, 0, 0, 1] * n)
    head = json.dumps({"inputs": [
        {"name": name, "datatype": "FP32", "shape": [n, 3, 32, 32], "data": image.tolist()}
        for name in ("image", "reference")] + [
        {"name": "attributes", "datatype": "BOOL", "shape": [n, 6],
         "parameters": {"binary_data_size": len(attributes)}}]}).encode()
    assert request_checks.HEADER_BYTES < len(head) <= front.json_limit
    path = "/v2/models/translate_reference/infer"
    front.fake.bodies.clear()
    headers = {"Inference-Header-Content-Length": str(len(head))}
    assert post(front.http, head + attributes, path, headers) == OK_REPLY
    assert front.fake.bodies == [head + attributes]
    bomb = b'{"inputs": [' + b"[]," * (front.json_limit // 3 - 8) + b"[]]}"
    status, answer = post(front.http, bomb, path,
                          {"Inference-Header-Content-Length": str(len(bomb))})
    assert status == 413 and "items (commas and brackets)" in answer["error"], answer
    status, answer = post(front.http, bomb, path, {
        "Inference-Header-Content-Length": str(front.json_limit + 1)})
    assert status == 413 and f"must be 1..{front.json_limit}" in answer["error"], answer


@needs_front
def test_front_gives_tritonservers_parse_failures_as_400(front):
    valid = json.dumps({"inputs": LABEL, "id": 3})
    unparsed = "Unable to parse 'id': attempt to access JSON non-string as string"
    try:
        front.fake.reply = (500, {"error": unparsed})
        assert post(front.http, valid) == (400, {
            "error": f"/v2/models/translate_label/infer: invalid request: {unparsed}"})
        front.fake.reply = (500, {"error": "out of memory"})
        assert post(front.http, valid) == (500, {"error": "/v2/models/translate_label/infer: the "
                                            "server failed on this request (its log has the "
                                            "detail)"})
    finally:
        front.fake.reply = OK_REPLY


def stall(front, head: bytes) -> socket.socket:
    """A connection to ``front`` that sends ``head`` and then nothing."""
    sock = socket.create_connection((front.host, front.http_port), timeout=60)
    sock.sendall(head)
    return sock


def response_on(sock: socket.socket) -> tuple[int, bytes]:
    """(status, body) of the HTTP response that arrives on ``sock``."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.read()


BODY_HEAD = (b"POST /v2/models/translate_label/infer HTTP/1.1\r\nHost: x\r\n"
             b"Content-Length: 1000\r\n\r\n{\"inputs\": [")


@needs_front
def test_slow_grpc_clients_are_cut_off(front):
    """A gRPC call whose request message has not arrived within the read timeout is ended
    with DEADLINE_EXCEEDED; one that arrives in time is read and checked."""
    import grpc

    from bridgegan.serve.front import GRPC_SERVICE

    answered = threading.Event()

    def late():  # the message follows the server's answer: never within its deadline
        answered.wait(120)
        yield b"\xff"

    with grpc.insecure_channel(f"{front.host}:{front.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            try:
                channel.stream_unary(GRPC_SERVICE + "ModelInfer")(late(), timeout=120)
            finally:
                answered.set()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert err.value.details() == (f"the request message did not arrive within "
                                       f"{READ_TIMEOUT_S:g} s (--read-timeout-secs)")
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(GRPC_SERVICE + "ModelInfer")(b"\xff", timeout=120)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a ModelInferRequest" in err.value.details()


def test_grpc_requests_with_many_inputs_are_refused_from_their_count(engine):
    """A gRPC message can declare an input in two bytes (some 500,000 in the 1 MiB checked on
    the event loop): it is refused from the count, with a short message, before its inputs
    are walked and named one by one."""
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    request = service_pb2.ModelInferRequest.FromString(
        service_pb2.ModelInferRequest(model_name="translate_label").SerializeToString()
        + b"\x2a\x00" * 100_000)  # field 5 (inputs), an empty InferInputTensor, each
    spec = model_specs(engine.config)["translate_label"]
    with pytest.raises(RequestError) as err:
        grpc_arrays(spec, 8, request)
    assert str(err.value).startswith("100000 inputs given; translate_label takes image FP32"), \
        str(err.value)[:200]
    with pytest.raises(RequestError, match="^1000 inputs given; translate_label takes"):
        http_arrays(spec, 8, json.dumps({"inputs": [{}] * 1000}).encode(), None)


def test_grpc_requests_asking_for_more_outputs_than_the_model_has_are_refused(engine):
    """163,000 repeated ``outputs`` entries (10 bytes each) went to tritonserver, which
    answered them: 128 such calls took the server tree +932 MB."""
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    request = service_pb2.ModelInferRequest(model_name="translate_label")
    for k in range(2):
        request.outputs.add(name="output")
    spec = model_specs(engine.config)["translate_label"]
    with pytest.raises(RequestError, match="^2 outputs requested; translate_label has output$"):
        grpc_arrays(spec, 8, request)


def test_grpc_typed_contents_of_each_data_type_are_read(engine):
    """Inputs sent in the typed contents fields (not raw bytes): each data type's own."""
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    request = service_pb2.ModelInferRequest(model_name="translate_label")
    values = {"image": ("FP32", [1, 3, 32, 32], "fp32_contents", IMAGE),
              "target": ("FP32", [1, 6], "fp32_contents", [0, 1, 0, 1, 1, 0]),
              "seed": ("UINT64", [1, 1], "uint64_contents", [2 ** 64 - 1])}
    for name, (dtype, shape, field, data) in values.items():
        i = request.inputs.add(name=name, datatype=dtype, shape=shape)
        getattr(i.contents, field).extend(data)
    arrays = grpc_arrays(model_specs(engine.config)["translate_label"], 8, request)
    assert {k: a.reshape(-1).tolist() for k, a in arrays.items()} == {
        k: list(np.asarray(v[3], NUMPY_TYPES[v[0]])) for k, v in values.items()}


@needs_front
def test_grpc_calls_past_the_bound_are_refused(engine, tmp_path, monkeypatch):
    """With MAX_GRPC_CALLS calls held open by clients that send nothing, the next call is
    refused with RESOURCE_EXHAUSTED; once they end, calls are taken again."""
    import grpc

    from bridgegan.serve.front import GRPC_SERVICE, Front

    monkeypatch.setattr(front_module, "MAX_GRPC_CALLS", 2)
    release = threading.Event()
    entered = threading.Semaphore(0)  # a call has its slot and waits for its message
    message = Front.grpc_message

    async def counted(self, requests, context):
        entered.release()
        return await message(self, requests, context)

    monkeypatch.setattr(Front, "grpc_message", counted)

    def held():  # sends its message only when released
        release.wait(120)
        yield b"\xff"

    specs = {name: (spec, 8) for name, spec in model_specs(engine.config).items()}
    with Front(specs, tmp_path / "http.sock", f"unix:{tmp_path / 'grpc.sock'}", "127.0.0.1",
               free_ports(1)[0], 0, 120.0) as served, \
            grpc.insecure_channel(f"{served.host}:{served.grpc_port}") as channel:
        infer = GRPC_SERVICE + "ModelInfer"
        calls = [channel.stream_unary(infer).future(held(), timeout=120) for _ in range(2)]
        # both held before the first probe: a probe that reached the server between the
        # two would take the second one's slot (it is refused), and no probe is ever refused
        assert all(entered.acquire(timeout=60) for _ in calls), [c.done() for c in calls]
        codes = []
        try:
            while grpc.StatusCode.RESOURCE_EXHAUSTED not in codes and len(codes) < 1000:
                with pytest.raises(grpc.RpcError) as err:  # taken until the two are held
                    channel.unary_unary(infer)(b"\xff", timeout=120)
                codes.append(err.value.code())
        finally:
            release.set()
        assert set(codes) <= {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED, codes[-3:]
        for call in calls:
            assert call.exception(timeout=120).code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(infer)(b"\xff", timeout=120)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") \
        + payload


def h2_calls_without_window(address: tuple[str, int], method: str, calls: int) -> socket.socket:
    """A connection that makes ``calls`` gRPC calls of an empty message to ``method`` and
    grants the server no HTTP/2 window for their answers; it acknowledges the server's
    SETTINGS and, on a thread, its PINGs (a client that does not is cut off by grpc)."""
    def literal(name: bytes, value: bytes) -> bytes:  # HPACK: literal, new name, no Huffman
        return bytes([0, len(name)]) + name + bytes([len(value)]) + value

    headers = b"".join(literal(*h) for h in [
        (b":method", b"POST"), (b":scheme", b"http"), (b":path", method.encode()),
        (b":authority", b"x"), (b"content-type", b"application/grpc"), (b"te", b"trailers")])
    sock = socket.create_connection(address, timeout=60)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                 + h2_frame(4, 0, 0, (4).to_bytes(2, "big") + (0).to_bytes(4, "big")))
    while True:  # the server's SETTINGS
        head = sock.recv(9, socket.MSG_WAITALL)
        sock.recv(int.from_bytes(head[:3], "big"), socket.MSG_WAITALL)  # its payload, unread
        if head[3] == 4 and not head[4] & 1:
            break
    sock.sendall(h2_frame(4, 1, 0) + b"".join(
        h2_frame(1, 4, 2 * k + 1, headers) + h2_frame(0, 1, 2 * k + 1, bytes(5))
        for k in range(calls)))

    def answer_pings():
        try:
            while head := sock.recv(9, socket.MSG_WAITALL):
                payload = sock.recv(int.from_bytes(head[:3], "big"), socket.MSG_WAITALL)
                if head[3] == 6 and not head[4] & 1:
                    sock.sendall(h2_frame(6, 1, 0, payload))
        except OSError:  # closed
            pass

    sock.settimeout(None)
    threading.Thread(target=answer_pings, daemon=True).start()
    return sock


@needs_front
def test_grpc_clients_that_do_not_take_their_answers_lose_their_calls(engine, tmp_path,
                                                                      monkeypatch):
    """Calls whose answers the client takes no HTTP/2 window for do not keep their
    MAX_GRPC_CALLS slots for good: the front ends the connection after the read timeout
    (twice: a grace for calls in flight), and other clients' calls are taken again."""
    from concurrent.futures import ThreadPoolExecutor as Pool

    import grpc

    from bridgegan.serve.front import GRPC_SERVICE, Front

    class Live(grpc.GenericRpcHandler):  # tritonserver's gRPC socket: answers every call
        def service(self, details):
            return grpc.unary_unary_rpc_method_handler(lambda request, context: b"live")

    monkeypatch.setattr(front_module, "MAX_GRPC_CALLS", 2)
    # the held calls keep their slots for twice the read timeout, the window in which the
    # probes below must meet a refusal: 10 s leaves room for a stalled, loaded machine
    # (at 2 s a 4 s stall before the first probe saw no refusal)
    read_timeout = 10.0
    fake = grpc.server(Pool(2))
    fake.add_generic_rpc_handlers([Live()])
    fake.add_insecure_port(f"unix:{tmp_path / 'grpc.sock'}")
    fake.start()
    specs = {name: (spec, 8) for name, spec in model_specs(engine.config).items()}
    live = GRPC_SERVICE + "ServerLive"
    try:
        with Front(specs, tmp_path / "http.sock", f"unix:{tmp_path / 'grpc.sock'}",
                   "127.0.0.1", free_ports(1)[0], 0, read_timeout) as served, \
                grpc.insecure_channel(f"{served.host}:{served.grpc_port}") as channel:
            held = h2_calls_without_window((served.host, served.grpc_port), live, 2)
            answers = []  # refused while the two are held, then taken again (before: never)
            try:
                for _ in range(600):  # a hang guard: two minutes of probes
                    try:
                        answer = channel.unary_unary(live)(b"", timeout=60).decode()
                    except grpc.RpcError as err:
                        answer = err.code()
                    if answers or answer != "live":  # from the first refusal on
                        answers.append(answer)
                    if answers and answers[-1] == "live":
                        break
                    time.sleep(0.2)
            finally:
                held.close()
            assert answers and answers[0] == grpc.StatusCode.RESOURCE_EXHAUSTED, answers[:3]
            assert answers[-1] == "live", answers[-3:]
            # (this channel's own connection ages out too: a call may meet its GOAWAY)
            assert set(answers[:-1]) <= {grpc.StatusCode.RESOURCE_EXHAUSTED,
                                         grpc.StatusCode.UNAVAILABLE}
    finally:
        fake.stop(None)


@needs_front
def test_slow_clients_are_cut_off(front):
    t0 = time.monotonic()
    late_body = stall(front, BODY_HEAD)
    late_header = stall(front, BODY_HEAD[:40])
    assert post(front.http, json.dumps({"inputs": LABEL})) == OK_REPLY  # served meanwhile
    assert response_on(late_body) == (408, b'{"error": "the request body did not arrive '
                                           b'within 3 s (--read-timeout-secs)"}')
    assert late_header.recv(1000) == b""  # closed without an answer
    assert time.monotonic() - t0 >= READ_TIMEOUT_S
    late_body.close()
    late_header.close()


@needs_front
def test_clients_that_do_not_read_their_response_are_cut_off(front):
    """A client that sends a valid request and never reads its (large) response loses the
    connection after the read timeout, instead of holding it, and the response, for good."""
    import select

    body = json.dumps({"inputs": LABEL}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        front.fake.reply = (200, {"outputs": "x" * 32_000_000})  # more than socket buffers
        sock.connect((front.host, front.http_port))
        sock.sendall(b"POST /v2/models/translate_label/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        poll = select.poll()
        poll.register(sock, select.POLLRDHUP)  # the front closed its end (POLLERR, POLLHUP too)
        assert poll.poll(120_000), "the connection is still open"
    finally:
        sock.close()
        front.fake.reply = OK_REPLY
    assert post(front.http, body) == OK_REPLY


@needs_front
def test_clients_that_leave_before_their_answer_are_no_error(front, caplog):
    """A client that leaves before its answer is written, or in the middle of its body, is
    let go quietly (as aiohttp does), not logged as an "Error handling request" traceback."""
    import logging

    body = json.dumps({"inputs": LABEL}).encode()
    front.fake.delay = 0.5  # the answer comes after the client has gone
    try:
        with caplog.at_level(logging.DEBUG):
            forwarded = len(front.fake.bodies)
            with socket.create_connection((front.host, front.http_port)) as sock:
                sock.sendall(b"POST /v2/models/translate_label/infer HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)
                deadline = time.monotonic() + 60  # a hang guard
                while len(front.fake.bodies) == forwarded:  # forwarded: the answer is due
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            with socket.create_connection((front.host, front.http_port)) as sock:
                sock.sendall(b"POST /v2/models/translate_label/infer HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
                time.sleep(0.2)  # and leaves in the middle of its body
            time.sleep(1.0)  # the answer is written (or not) to the closed connection
            assert post(front.http, body) == OK_REPLY
    finally:
        front.fake.delay = 0.0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records]


def test_readers_holding_parts_of_the_budget_do_not_wait_for_one_another():
    """Bodies each holding part of the budget and needing more (a burst of large bodies),
    behind an older connection that sends nothing: the first to find it short overdraws;
    the other waits until it leaves, then takes what it gave back; a waiting reader
    cancelled (its deadline) leaves nothing held. Stepped with sleep(0), no timing."""
    import asyncio

    from bridgegan.serve.client_limits import Budget

    async def steps(n=10):
        for _ in range(n):
            await asyncio.sleep(0)

    async def run():
        budget = Budget(10, 2)
        silent, first, second, third = (budget.enter() for _ in range(4))
        await budget.take(first, 6)
        await budget.take(second, 4)
        await asyncio.wait_for(budget.take(first, 5), 60)  # short: first overdraws
        waiting = asyncio.ensure_future(budget.take(second, 5))
        cancelled = asyncio.ensure_future(asyncio.wait_for(budget.take(third, 1), 60))
        await steps()
        assert not waiting.done() and not cancelled.done() and budget.free == -5
        cancelled.cancel()
        await steps()
        budget.leave(third)  # its reader's finally
        budget.leave(first)
        await asyncio.wait_for(waiting, 60)
        assert budget.overdrawing is None and budget.free == 10 - 4 - 5  # no need to
        budget.leave(second)
        budget.leave(silent)
        return budget.free, budget.overdrawing, budget.readers

    assert asyncio.run(run()) == (10, None, {})


def test_the_reading_budget_is_capped_in_bytes(engine):
    """MAX_READING bodies of the largest size, but at most READING_BYTES where those are
    large (the paper model at 128 px, max batch 64: 32 JSON bodies of 0.23 GB were a
    7.3 GB budget), and two bodies at least; gRPC calls held at once, MAX_GRPC_CALLS but
    no more than that budget holds of the largest message (128 of 24 MiB were 3 GB)."""
    from bridgegan.reference import BridgeGANConfig
    from bridgegan.serve.client_limits import MAX_GRPC_CALLS, MAX_READING, READING_BYTES
    from bridgegan.serve.front import Front

    def budget(config, max_batch):
        specs = {name: (spec, max_batch) for name, spec in model_specs(config).items()}
        front = Front(specs, "http.sock", "unix:grpc.sock", "127.0.0.1", 0, 0, 1.0)
        front.loop.close()  # never started
        return front.reading_bytes, front.mixed_limit, front.grpc_calls, front.binary_limit

    reading, body, calls, message = budget(engine.config, 8)
    assert reading == MAX_READING * body < READING_BYTES and calls == MAX_GRPC_CALLS
    reading, body, calls, message = budget(BridgeGANConfig(), 64)
    assert reading == READING_BYTES and MAX_READING * body > 7e9
    assert calls == 42 == READING_BYTES // message
    reading, body, calls, message = budget(BridgeGANConfig(), 1024)
    assert reading == 2 * body > READING_BYTES and calls == reading // message >= 2


def test_the_right_to_overdraw_passes_on_once_a_body_is_in():
    """Bodies are held until their answer is sent, but the right to overdraw passes on when
    the overdrawing reader's body is in (held until its answer, it let one request at a
    time reach tritonserver while half-read bodies waited: with gradual uploads, one
    forward per service time and 503s); the overdraft stays within the budget's size."""
    import asyncio

    from bridgegan.serve.client_limits import Budget

    async def steps(n=10):
        for _ in range(n):
            await asyncio.sleep(0)

    async def run():
        budget = Budget(10, 4)
        a, b, c = (budget.enter() for _ in range(3))
        await budget.take(a, 6)
        await budget.take(b, 4)
        await asyncio.wait_for(budget.take(a, 5), 60)  # short: a overdraws
        b_more = asyncio.ensure_future(budget.take(b, 3))
        await steps()
        assert not b_more.done()
        budget.read(a)  # a's body is in (its request still served): b may overdraw
        await asyncio.wait_for(b_more, 60)
        assert (budget.overdrawing, budget.free) == (b, -8)
        budget.read(b)
        c_first = asyncio.ensure_future(budget.take(c, 3))  # -11: past the size, waits
        await steps()
        assert not c_first.done() and budget.overdrawing is None
        budget.leave(a)  # answered: its 11 back
        await asyncio.wait_for(c_first, 60)
        assert budget.free == 0
        budget.leave(b)
        budget.leave(c)
        return budget.free, budget.overdrawing, budget.readers, budget.waiting

    assert asyncio.run(run()) == (10, None, {}, set())


@needs_front
def test_bodies_wait_for_reading_budget_within_their_deadline(front):
    import asyncio

    async def hold(n):  # a reader holding the whole budget, and the right to go over it
        ticket = front.reading.enter()
        await front.reading.take(ticket, n)
        await front.reading.take(ticket, 1)
        return ticket

    async def release(ticket):
        front.reading.leave(ticket)

    def on_loop(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, front.loop).result(timeout=60)

    body = json.dumps({"inputs": LABEL})
    ticket = on_loop(hold(front.reading_bytes))
    headers = {}
    try:
        status, answer = post(front.http, body, answer_headers=headers)
    finally:
        on_loop(release(ticket))
    assert status == 503 and answer["error"] == (
        f"{client_limits.BUSY}: no request body budget freed within {READ_TIMEOUT_S:g} s")
    assert headers["Retry-After"] == str(front_module.RETRY_AFTER_S)
    assert post(front.http, body) == OK_REPLY


@needs_front
def test_tritonservers_full_queue_is_busy_not_a_failure(front):
    """tritonserver's 503 for a model queue at its max_queue_size was "the server failed on
    this request" (logged as an error): the client is told to retry."""
    headers = {}
    try:
        front.fake.reply = (503, {"error": "Exceeds maximum queue size"})
        status, answer = post(front.http, json.dumps({"inputs": LABEL}), answer_headers=headers)
    finally:
        front.fake.reply = OK_REPLY
    assert status == 503 and answer["error"] == front_module.queue_busy("translate_label")
    assert "the queue of translate_label is full" in answer["error"]
    assert headers["Retry-After"] == str(front_module.RETRY_AFTER_S)


@needs_front
def test_chunked_inference_bodies_and_many_header_fields_are_refused(front, caplog):
    """A chunked body was parsed chunk by chunk (1-byte chunks: 0.7 s of the event loop per
    MB) and a header of 128 fields of 8 KiB held 1 MB a connection: 411, and 400 (each
    such 400 also logged a traceback, a log any client could fill: not logged)."""
    front.fake.bodies.clear()
    sock = stall(front, b"POST /v2/models/translate_label/infer HTTP/1.1\r\nHost: x\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n" + b"1\r\n{\r\n" * 100)
    with sock:
        status, body = response_on(sock)
    assert status == 411 and b"needs a Content-Length" in body
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(front_module.MAX_HEADERS + 1))
    with stall(front, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n") \
            as sock:
        assert response_on(sock)[0] == 400
    line = b"X-Long: " + b"a" * (front_module.HEADER_LINE + 1) + b"\r\n"
    with stall(front, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n") \
            as sock:
        assert response_on(sock)[0] == 400
    assert front.fake.bodies == []
    assert not [r for r in caplog.records if r.exc_info], caplog.text


@needs_front
def test_a_request_whose_client_left_is_not_forwarded(front, monkeypatch):
    """A client that closed its connection while its request was checked: tritonserver
    computed it all the same (it does not drop an HTTP request whose client left)."""
    checking, closed = threading.Event(), threading.Event()
    check = front_module.check

    def slow_check(*args):
        checking.set()
        closed.wait(60)
        return check(*args)

    monkeypatch.setattr(front_module, "check", slow_check)
    front.fake.bodies.clear()
    sock = send_request(front, json.dumps({"inputs": LABEL}).encode())
    assert checking.wait(60)
    sock.close()
    closed.set()
    monkeypatch.undo()
    assert post(front.http, json.dumps({"inputs": LABEL})) == OK_REPLY  # served after it
    assert front.fake.bodies == [json.dumps({"inputs": LABEL}).encode()]  # this one only


def test_the_connection_cap_stays_below_the_descriptors(monkeypatch):
    """At a soft limit of 1,024 open files the front ran out of descriptors before its cap
    of 1,024 connections (asyncio then logs every failed accept): the soft limit is raised
    towards the hard one, and the cap kept FD_RESERVE below what it gets."""
    limits = {}

    def setrlimit(kind, value):
        if value[0] > value[1]:
            raise ValueError("not allowed")
        limits["now"] = value

    monkeypatch.setattr(client_limits.resource, "getrlimit", lambda kind: limits["now"])
    monkeypatch.setattr(client_limits.resource, "setrlimit", setrlimit)
    # gRPC's connections beside the rest
    reserve = client_limits.FD_RESERVE + client_limits.GRPC_CONNECTIONS
    most = client_limits.MAX_CONNECTIONS
    for soft, hard, cap, after in [(1024, 1 << 20, most, most + reserve),
                                   (1024, 1024, 1024 - reserve, 1024),
                                   (200, 300, 1, 300), (100, 100, 1, 100),
                                   (1 << 20, 1 << 20, most, 1 << 20)]:
        limits["now"] = (soft, hard)
        assert client_limits.connection_cap() == cap, (soft, hard)
        assert limits["now"] == (after, hard)


@needs_front
def test_a_signal_stops_both_protocols_at_once_and_answers_requests_in_flight(engine, tmp_path,
                                                                              monkeypatch):
    """close(): the HTTP port took new connections for as long as gRPC calls drained (then
    drained again), and the drain was 2 s whatever --exit-timeout-secs said: both stop
    listening at once, a body still being sent is refused (503), and a request in hand is
    answered within ``grace_s``."""
    import grpc

    from bridgegan.serve.front import GRPC_SERVICE, Front

    entered, release = threading.Event(), threading.Event()
    message = Front.grpc_message

    async def counted(self, requests, context):
        entered.set()
        return await message(self, requests, context)

    monkeypatch.setattr(Front, "grpc_message", counted)

    def held():
        release.wait(120)
        yield b"\xff"

    fake = socketserver.ThreadingUnixStreamServer(str(tmp_path / "http.sock"), FakeTriton)
    fake.bodies, fake.reply, fake.daemon_threads, fake.delay = [], OK_REPLY, True, 0.0
    fake.gate = threading.Event()  # holds the forwarded request
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    specs = {name: (spec, 8) for name, spec in model_specs(engine.config).items()}
    served = Front(specs, tmp_path / "http.sock", f"unix:{tmp_path / 'grpc.sock'}",
                   "127.0.0.1", free_ports(1)[0], 0, 120.0, grace_s=90.0)
    closer = threading.Thread(target=served.close)
    try:
        with served, grpc.insecure_channel(f"{served.host}:{served.grpc_port}") as channel:
            call = channel.stream_unary(GRPC_SERVICE + "ModelInfer").future(held(), timeout=120)
            assert entered.wait(60)
            sock = send_request(served, json.dumps({"inputs": LABEL}).encode())
            wait_for(lambda: fake.bodies, "the request forwarded")
            slow = stall(served, BODY_HEAD)  # a body still being sent: it would hold the drain
            wait_for(lambda: len(served.reading.readers) == 2, "the slow body being read")
            closer.start()

            def refused() -> bool:
                try:
                    socket.create_connection((served.host, served.http_port), timeout=60).close()
                except ConnectionRefusedError:
                    return True
                return False

            wait_for(refused, "the HTTP port closed")
            assert not call.done()  # while the gRPC call still drains (before: after it)
            with slow:
                status, body = response_on(slow)
            assert (status, json.loads(body)) == (503, {"error": front_module.STOPPING})
            fake.gate.set()
            with sock:
                status, body = response_on(sock)
            assert (status, json.loads(body)) == OK_REPLY  # answered, not cut off
            release.set()
            call.exception(timeout=120)
            closer.join(120)
            assert not closer.is_alive()
    finally:
        release.set()
        fake.gate.set()
        fake.shutdown()
        fake.server_close()


def test_what_keeps_the_server_from_listening_is_found_before_it_starts(monkeypatch):
    """One port given to two options, a host that is no address, or one that is not this
    machine's failed only once tritonserver had loaded the models (9-17 s), or blamed the
    ports; a busy port names its option."""
    from bridgegan.serve.server import listen_problem

    free = free_ports(2)
    assert listen_problem("127.0.0.1", {"--http-port": free[0], "--grpc-port": free[1]}) is None
    assert listen_problem("127.0.0.1", {"--http-port": free[0], "--grpc-port": free[1],
                                        "--metrics-port": free[0]}) == (
        f"--http-port, --metrics-port: {free[0]} each; give each its own port")
    # not an address (a resolver that answers every name makes it one, not this machine's)
    assert listen_problem("999.1.1.1", {"--http-port": free[0]}).startswith(
        ("--host 999.1.1.1: not an address (", "--host 999.1.1.1: cannot listen there ("))
    problem = listen_problem("192.0.2.1", {"--http-port": free[0]})  # TEST-NET-1: not ours
    assert problem.startswith("--host 192.0.2.1: cannot listen there (") and problem.endswith(
        "); give an address of this machine (0.0.0.0: every interface)"), problem
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free[1]))
        busy.listen()
        assert listen_problem("127.0.0.1", {"--grpc-port": free[1]}) == (
            f"cannot listen on 127.0.0.1: --grpc-port {free[1]} (Address already in use); stop "
            f"what holds the port or choose another")

    def not_allowed(sock, address):  # a port below 1024 without privileges
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(socket.socket, "bind", not_allowed)
    assert listen_problem("127.0.0.1", {"--http-port": 80}) == (
        "--http-port 80: not allowed (Permission denied): ports below 1024 need privileges; "
        "choose another")


def test_a_max_batch_past_grpcs_message_limit_is_refused(engine, ckpt, tmp_path, capsys):
    """grpc takes its message limit as a C int: a max batch whose largest request would
    pass 2 GiB is refused naming the largest that fits, before the front starts anything,
    and `serve --max-batch` before it writes or starts anything."""
    from bridgegan.serve.front import Front
    from bridgegan.serve.request_checks import GRPC_MESSAGE_BYTES, HEADER_BYTES, row_bytes

    specs = model_specs(engine.config)
    row = max(row_bytes(s) for s in specs.values())
    most = (GRPC_MESSAGE_BYTES - HEADER_BYTES) // row
    front = Front({n: (s, most) for n, s in specs.items()}, "http.sock", "unix:grpc.sock",
                  "127.0.0.1", 0, 0, 1.0)
    front.loop.close()  # never started
    with pytest.raises(ValueError, match=rf"^the models' max_batch_size {most + 1}: a gRPC "
                                         rf"request of that many rows would pass gRPC's "
                                         rf"{GRPC_MESSAGE_BYTES} byte message limit; give at "
                                         rf"most {most}$"):
        Front({n: (s, most + 1) for n, s in specs.items()}, "http.sock", "unix:grpc.sock",
              "127.0.0.1", 0, 0, 1.0)
    # `serve --checkpoint` refuses it before it writes or starts anything
    out = tmp_path / "repo"
    assert main(["serve", "--checkpoint", str(ckpt), "--max-batch", str(most + 1),
                 "--write-repository", str(out)]) == 2
    assert f"error: --max-batch {most + 1}: a gRPC request" in capsys.readouterr().err
    assert not out.exists()


def skip_without_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"needs IPv6 on the loopback interface ({exc.strerror})")


@needs_front
def test_the_front_listens_on_an_ipv6_host(engine, tmp_path):
    """--host ::1 bound HTTP but not gRPC ("Failed to bind to address ::1:PORT": grpc takes
    an IPv6 address in brackets)."""
    from bridgegan.serve.front import Front

    skip_without_ipv6_loopback()
    specs = {name: (spec, 8) for name, spec in model_specs(engine.config).items()}
    with Front(specs, tmp_path / "http.sock", f"unix:{tmp_path / 'grpc.sock'}", "::1",
               free_ports(1)[0], 0, 60.0) as served:
        for port in (served.http_port, served.grpc_port):
            socket.create_connection(("::1", port), timeout=60).close()


@needs_serve
def test_serve_listens_on_an_ipv6_host(ckpt, tmp_path):
    """`serve --host ::1`: HTTP, gRPC and tritonserver's metrics all on ::1 (tritonserver
    took a bare "::1" for its metrics, logged it, and bound 255.255.255.255)."""
    from bridgegan.serve.http_client import http_get
    from bridgegan.serve.process import ServerProcess

    skip_without_ipv6_loopback()
    with ServerProcess(["--checkpoint", str(ckpt), "--max-batch", "8"], tmp_path / "log",
                       host="::1") as server:
        assert http_get(server.http, "/v2/health/ready")[0] == 200
        for port in (server.grpc_port, server.metrics_port):
            socket.create_connection(("::1", port), timeout=60).close()
        assert f"on http://[::1]:{server.http_port} and grpc [::1]:{server.grpc_port}" in \
            server.log_tail(), server.log_tail()


@needs_front
def test_connections_past_the_cap_are_closed_as_they_open(engine, tmp_path, monkeypatch):
    """Each open connection holds memory and a descriptor: past MAX_CONNECTIONS one more is
    closed at once; once one closes, another is taken."""
    from bridgegan.serve.front import Front

    monkeypatch.setattr(client_limits, "MAX_CONNECTIONS", 2)
    specs = {name: (spec, 8) for name, spec in model_specs(engine.config).items()}
    with Front(specs, tmp_path / "http.sock", f"unix:{tmp_path / 'grpc.sock'}", "127.0.0.1",
               free_ports(1)[0], 0, 60.0) as served:
        address = (served.host, served.http_port)
        held = [socket.create_connection(address, timeout=60) for _ in range(2)]
        wait_for(lambda: len(served.runner.server.connections) == 2, "two connections")
        with socket.create_connection(address, timeout=60) as extra:
            extra.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert extra.recv(100) == b""  # closed unanswered
        held.pop().close()
        wait_for(lambda: len(served.runner.server.connections) == 1, "one connection")
        with socket.create_connection(address, timeout=60) as sock:
            sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            assert response_on(sock)[0] == 403  # taken: answered
        held.pop().close()


@needs_front
def test_one_client_address_has_its_share_of_requests_and_no_more(front, monkeypatch):
    """One client address has at most --max-client-requests requests in hand, HTTP and
    gRPC together: one more is refused at once (HTTP 503 with Retry-After, gRPC
    RESOURCE_EXHAUSTED, which frees its call slot), while another address is served. (One
    client's held calls took every gRPC call slot, 2% of others' calls succeeding, and its
    abandoned HTTP requests queued minutes of work that tritonserver computed for no one.)"""
    import grpc

    from bridgegan.serve.client_limits import Clients
    from bridgegan.serve.front import GRPC_SERVICE

    body = json.dumps({"inputs": LABEL}).encode()
    monkeypatch.setattr(front, "clients", Clients(2))
    forwarded, held = len(front.fake.bodies), []
    front.fake.gate.clear()
    try:
        held = [send_request(front, body) for _ in range(2)]
        wait_for(lambda: len(front.fake.bodies) == forwarded + 2, "two forwarded")
        answer_headers = {}
        status, answer = post(front.http, body, answer_headers=answer_headers)
        assert status == 503 and answer["error"].startswith(
            "2 requests of client address 127.0.0.1 are in hand"), answer
        assert answer_headers["Retry-After"] == str(front_module.RETRY_AFTER_S)
        with grpc.insecure_channel(f"{front.host}:{front.grpc_port}") as channel, \
                pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(GRPC_SERVICE + "ModelInfer")(b"\xff", timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "client address 127.0.0.1 " in err.value.details()
        held.append(send_request(front, body, source="127.0.0.2"))  # another address
        wait_for(lambda: len(front.fake.bodies) == forwarded + 3, "the other one forwarded")
    finally:
        front.fake.gate.set()
    for sock in held:
        assert response_on(sock)[0] == 200
        sock.close()
    wait_for(lambda: not front.clients.held, "every request answered")


def test_one_client_address_has_its_share_of_connections(engine, tmp_path, caplog):
    """An address holds at most CLIENT_CONNECTIONS HTTP connections per request it may
    have in hand; one more is closed as it opens, with no traceback in the log (closed
    before aiohttp's handler started, each logged an AssertionError: 119 MB in 40 s),
    while another address connects (one client's 1,023 idle connections refused every
    other client's)."""
    import asyncio
    import gc

    from bridgegan.serve.client_limits import CLIENT_CONNECTIONS
    from bridgegan.serve.front import Front

    specs = {name: (spec, 8) for name, spec in model_specs(engine.config).items()}
    with Front(specs, tmp_path / "http.sock", f"unix:{tmp_path / 'grpc.sock'}", "127.0.0.1",
               free_ports(1)[0], 0, 60.0, client_requests=1) as served:
        address = (served.host, served.http_port)
        held = [socket.create_connection(address, timeout=60)
                for _ in range(CLIENT_CONNECTIONS)]
        wait_for(lambda: len(served.runner.server.connections) == CLIENT_CONNECTIONS,
                 "the address's connections")
        with socket.create_connection(address, timeout=60) as extra:
            extra.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert extra.recv(100) == b""  # closed unanswered
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.1), served.loop).result(60)
        gc.collect()  # a failed task's traceback is logged as it goes
        assert not [r for r in caplog.records if r.exc_info or "exception" in r.getMessage()]
        with socket.create_connection(address, timeout=60,
                                      source_address=("127.0.0.2", 0)) as sock:
            sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            assert response_on(sock)[0] == 403  # taken: answered
        held.pop().close()
        wait_for(lambda: served.runner.server.connections and len(
            served.runner.server.connections) == CLIENT_CONNECTIONS - 1, "one closed")
        with socket.create_connection(address, timeout=60) as sock:  # its share again
            sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            assert response_on(sock)[0] == 403
        for sock in held:
            sock.close()


def test_grpc_connections_past_their_cap_are_closed(engine, tmp_path, monkeypatch):
    """gRPC connections are capped too (GRPC_CONNECTIONS, within the descriptors the front
    keeps): 1,300 silent ones took every descriptor, HTTP's included, and the failed
    accepts filled the log at 3 MB/s."""
    from bridgegan.serve.front import Front

    monkeypatch.setattr(front_module, "GRPC_CONNECTIONS", 2)  # grpc's option
    monkeypatch.setattr(client_limits, "GRPC_CONNECTIONS", 2)  # the descriptors kept for them
    specs = {name: (spec, 8) for name, spec in model_specs(engine.config).items()}
    with Front(specs, tmp_path / "http.sock", f"unix:{tmp_path / 'grpc.sock'}", "127.0.0.1",
               free_ports(1)[0], 0, 60.0) as served:
        socks = [socket.create_connection((served.host, served.grpc_port), timeout=60)
                 for _ in range(3)]
        try:
            assert [bool(s.recv(100)) for s in socks] == [True, True, False]  # SETTINGS
        finally:
            for s in socks:
                s.close()


def send_request(front, body: bytes, source: str | None = None) -> socket.socket:
    """A connection to ``front`` (from address ``source``, where given) that has sent one
    translate_label request of ``body``."""
    sock = socket.create_connection((front.host, front.http_port), timeout=60,
                                    source_address=None if source is None else (source, 0))
    sock.sendall(b"POST /v2/models/translate_label/infer HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return sock


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 60  # a hang guard
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@needs_front
def test_request_bodies_are_held_in_the_budget_until_answered(front, monkeypatch):
    """A request's bytes count against the reading budget until its answer is sent, not
    only while its body is read (before, bodies read and waiting to be checked or answered
    were held without bound: 480 clients held +601 MB); readers past MAX_WAITING that
    would wait for budget are refused (503) at once."""
    from bridgegan.serve.client_limits import Budget

    body = json.dumps({"inputs": LABEL}).encode()
    full = front.reading.free
    monkeypatch.setattr(front, "reading", Budget(len(body), 0))
    front.fake.gate.clear()
    first = second = None
    forwarded = len(front.fake.bodies)
    try:
        first = send_request(front, body)  # held in tritonserver
        wait_for(lambda: len(front.fake.bodies) > forwarded, "forwarded")
        assert front.reading.free == 0  # before: all of it, once read
        second = send_request(front, body)  # overdraws by a whole budget: held too
        wait_for(lambda: len(front.fake.bodies) > forwarded + 1, "forwarded")
        assert front.reading.free == -len(body)
        status, answer = post(front.http, body)  # would wait: none may (MAX_WAITING 0)
        assert status == 503 and answer["error"].startswith(client_limits.BUSY), answer
    finally:
        front.fake.gate.set()
    for sock in (first, second):
        assert response_on(sock)[0] == 200
        sock.close()
    wait_for(lambda: not front.reading.readers, "every request answered")
    assert front.reading.free == len(body) and full > front.reading.free


@needs_front
def test_a_connection_is_not_read_while_its_request_is_served(front):
    """Bytes a client sends after its request wait in the kernel, not in the front: the
    connection is not read from until the answer is sent (aiohttp queued junk sent after
    a request, about 22 MB per connection); then the next request on it is served."""
    body = json.dumps({"inputs": LABEL}).encode()
    reading = []
    front.fake.gate.clear()
    forwarded = len(front.fake.bodies)
    try:
        sock = send_request(front, body)
        wait_for(lambda: len(front.fake.bodies) > forwarded, "forwarded")
        reading = [p.transport.is_reading() for p in front.runner.server.connections
                   if p.transport and p.transport.get_extra_info("peername") ==
                   sock.getsockname()]
    finally:
        front.fake.gate.set()
    assert reading == [False], reading  # its request in tritonserver
    assert response_on(sock)[0] == 200
    sock.sendall(b"POST /v2/models/translate_label/infer HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert response_on(sock) == (200, json.dumps(OK_REPLY[1]).encode())
    sock.close()


@needs_front
def test_clients_that_send_no_body_hold_up_no_other(front, monkeypatch):
    """More than MAX_READING connections that send a request's header and the start of its
    body, then nothing for as long as the read timeout lets them, do not hold up another
    client's body: a reader holds only the bytes it has received (before: one of
    MAX_READING slots each, and the other client waited for the read timeout). (Here all
    from one address: its share of requests lifted.)"""
    from bridgegan.serve.client_limits import Clients
    from bridgegan.serve.front import Front

    monkeypatch.setattr(front, "clients", Clients(0))
    monkeypatch.setattr(front, "read_timeout_s", 120.0)  # longer than post's hang guard
    entered = threading.Semaphore(0)  # a connection is reading its body
    read = Front._read

    async def counted(self, *args):
        entered.release()
        return await read(self, *args)

    monkeypatch.setattr(Front, "_read", counted)
    idle = [stall(front, BODY_HEAD) for _ in range(client_limits.MAX_READING + 1)]
    try:
        assert all(entered.acquire(timeout=60) for _ in idle)
        assert post(front.http, json.dumps({"inputs": LABEL})) == OK_REPLY
    finally:
        for sock in idle:
            sock.close()


@needs_front
def test_large_bodies_are_checked_off_the_event_loop(front, monkeypatch):
    from bridgegan.serve.models import check_request

    threads = []

    def recording(spec, arrays):
        threads.append(threading.current_thread().name)
        return check_request(spec, arrays)

    monkeypatch.setattr(request_checks, "check_request", recording)
    small, size = binary_reference(bytes([1, 0, 1, 0, 0, 1]))
    large = json.dumps({"inputs": REFERENCE}).encode()
    monkeypatch.setattr(front_module, "THREAD_BYTES", len(small))
    headers = {"Inference-Header-Content-Length": str(size)}
    assert post(front.http, small, "/v2/models/translate_reference/infer", headers) == OK_REPLY
    assert post(front.http, large, "/v2/models/translate_reference/infer") == OK_REPLY
    assert threads[0] == front.thread.name and threads[1] != front.thread.name, threads


def test_read_timeout_option_reaches_the_server(monkeypatch, capsys):
    from bridgegan.serve import server

    calls = []
    monkeypatch.setattr(server, "run_tritonserver", lambda repo, **kw: calls.append(kw) or 0)
    ports = [str(p) for p in free_ports(3)]
    options = ["serve", "--repository", "repo", "--http-port", ports[0], "--grpc-port",
               ports[1], "--metrics-port", ports[2]]
    assert main(options) == 0 and calls[-1]["read_timeout_secs"] == server.READ_TIMEOUT_S
    assert main([*options, "--read-timeout-secs", "5"]) == 0
    assert calls[-1]["read_timeout_secs"] == 5
    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(SystemExit) as exit_:
            main([*options, "--read-timeout-secs", bad])
        assert exit_.value.code == 2
        assert f"argument --read-timeout-secs: must be a finite number > 0, got '{bad}'" \
            in capsys.readouterr().err


def test_serve_repository_is_checked_before_tritonserver_starts(tmp_path, capsys):
    """A folder without the models' configurations is refused before tritonserver starts
    (it printed its banner, then failed); --repository beside --checkpoint is refused (the
    checkpoint was ignored), and so are engine and batching options that differ from their
    defaults (ignored too: the repository's config decides)."""
    from bridgegan.serve import server

    (tmp_path / MODELS[0]).mkdir()
    (tmp_path / MODELS[0] / "config.pbtxt").write_text("")
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path} is not a model repository of `bridgegan serve --write-repository` "
            f"(no {', '.join(MODELS[1:])}/config.pbtxt); one of `bridgegan export triton-repo` "
            f"(ONNX / TensorRT models) runs in NVIDIA's Triton container")):
        server.run_tritonserver(tmp_path)
    assert main(["serve", "--repository", str(tmp_path), "--checkpoint", "ck"]) == 2
    assert "--repository serves a repository already written: give it alone" \
        in capsys.readouterr().err
    assert main(["serve", "--repository", str(tmp_path), "--device", "cuda", "--dtype", "fp16",
                 "--max-batch", "64", "--max-queue-delay-us", "5"]) == 2
    assert ("--dtype, --device, --max-queue-delay-us: the repository's config.pbtxt files "
            "decide these under --repository") in capsys.readouterr().err
    assert main(["serve", "--repository", str(tmp_path), "--dtype", "fp32"]) == 2
    assert "decide these under --repository" not in capsys.readouterr().err  # float32's name


def parse_pbtxt_ports(text: str, kind: str) -> list[tuple]:
    block = re.search(kind + r" \[\n(.*?)\n\]", text, re.S).group(1)
    return re.findall(r'name: "(\w+)"\s+data_type: TYPE_(\w+)\s+dims: \[ ([\d, ]*) \]'
                      r'(\s+optional: true)?', block)


def test_python_backend_repository(ckpt, engine, tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["serve", "--checkpoint", str(ckpt), "--write-repository", str(repo),
                 "--max-batch", "16", "--max-queue-delay-us", "500"]) == 0
    assert f"serve with: bridgegan serve --repository {repo}" in capsys.readouterr().out
    assert sorted(p.name for p in repo.iterdir()) == sorted(MODELS)
    specs = model_specs(engine.config)
    weights = []
    for name in MODELS:
        folder = repo / name
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
            "1/checkpoint/config.json", "1/checkpoint/model.safetensors", "1/model.py",
            "bridgegan.json", "config.pbtxt"]
        text = (folder / "config.pbtxt").read_text()
        assert f'name: "{name}"\nbackend: "python"\nmax_batch_size: 16\n' in text
        assert "max_queue_delay_microseconds: 500" in text and "kind: KIND_CPU" in text
        ports = [(p.name, p.dtype, ", ".join(map(str, p.shape)), bool(p.optional))
                 for p in specs[name].inputs]
        assert [(n, t, d, bool(o)) for n, t, d, o in parse_pbtxt_ports(text, "input")] == ports
        assert parse_pbtxt_ports(text, "output") == [("output", "FP32", "3, 32, 32", "")]
        assert "TritonPythonModel" in (folder / "1/model.py").read_text()
        meta = json.loads((folder / "bridgegan.json").read_text())
        assert meta["attributes"] == list(engine.attributes) and meta["model"] == name
        data = (folder / "1/checkpoint/model.safetensors")
        assert data.read_bytes() == (ckpt / "model.safetensors").read_bytes()
        weights.append(data.stat().st_ino)
    assert len(set(weights)) == 1  # one copy, hard-linked
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N"):
        from bridgegan.serve.repo_python import write_python_repo

        write_python_repo(ckpt, tmp_path / "x", device="tpu")


def test_python_backend_repository_is_written_again_after_serving(ckpt, tmp_path):
    """tritonserver's python-backend stub imports DIR/<model>/1/model.py as "1.model", and
    Python caches its bytecode in 1/__pycache__ (unless PYTHONDONTWRITEBYTECODE is set):
    writing the repository again replaces that too, and still refuses other files."""
    import py_compile
    from importlib.util import cache_from_source

    from bridgegan.serve.repo_python import write_python_repo

    repo = tmp_path / "repo"
    write_python_repo(ckpt, repo)
    for name in MODELS:  # as a served repository holds them
        model_py = repo / name / "1" / "model.py"
        py_compile.compile(str(model_py), cfile=cache_from_source(str(model_py)), doraise=True)
    assert len(list(repo.rglob("__pycache__/model.*.pyc"))) == len(MODELS)
    write_python_repo(ckpt, repo)
    assert not list(repo.rglob("*.pyc"))
    (repo / MODELS[0] / "1" / "__pycache__").mkdir()
    (repo / MODELS[0] / "1" / "__pycache__" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds 1/__pycache__/notes.txt, which is not a file"):
        write_python_repo(ckpt, repo)


class FakeTritonUtils(types.ModuleType):
    """The parts of triton_python_backend_utils that the model class uses."""

    class TritonError(Exception):
        INTERNAL, INVALID_ARG = 1, 3

        def __init__(self, message, code=None):
            super().__init__(message)
            self.code = code

    class Tensor:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def as_numpy(self):
            return self.value

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.outputs, self.error = {t.name: t.value for t in output_tensors}, error

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return request.get(name)


def test_python_backend_model_class(ckpt, engine, tmp_path, monkeypatch):
    from bridgegan.serve.repo_python import TritonPythonModel

    pb = FakeTritonUtils("triton_python_backend_utils")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    repo = tmp_path / "repo"
    main(["serve", "--checkpoint", str(ckpt), "--write-repository", str(repo)])
    for name, inputs, want in cases(engine):
        m = TritonPythonModel()
        m.initialize({"model_config": json.dumps({"parameters": {
            "engine_backend": {"string_value": "torch"}}}), "model_repository": str(repo / name),
            "model_version": "1", "model_name": name, "model_instance_kind": "CPU",
            "model_instance_device_id": "0"})
        assert m.engine.backend == "torch"
        bad = {**as_numpy(inputs), "image": np.full((3, 3, 32, 32), np.nan, np.float32)}
        responses = m.execute([{k: pb.Tensor(k, v) for k, v in r.items()}
                               for r in (as_numpy(inputs), bad)])
        assert responses[0].error is None and close(responses[0].outputs["output"], want)
        assert responses[1].error.code == pb.TritonError.INVALID_ARG
        assert str(responses[1].error) == f"{name}: invalid input: image: contain NaN or Inf values"
    # NaN / Inf computed from valid inputs (weights that overflow the dtype) are the server's
    def overflowed(out):
        raise NonFiniteOutputError("the model computed NaN or Inf")

    monkeypatch.setattr(m.engine, "_checked", overflowed)
    responses = m.execute([{k: pb.Tensor(k, v) for k, v in as_numpy(inputs).items()}])
    assert responses[0].error.code == pb.TritonError.INTERNAL
    assert str(responses[0].error) == f"{name}: the model computed NaN or Inf"


@needs_serve
@pytest.mark.parametrize("options, message", [
    (["--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["--backend", "tensorrt"], "backend 'tensorrt' needs"),
    (["--backend", "onnxruntime", "--dtype", "bf16"], "onnxruntime"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"],
                                             "torch sees no CUDA device")]))
def test_bad_engine_options_fail_before_the_server_starts(ckpt, capsys, options, message):
    ports = [str(p) for p in free_ports(3)]
    assert main(["serve", "--checkpoint", str(ckpt), "--http-port", ports[0], "--grpc-port",
                 ports[1], "--metrics-port", ports[2], *options]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(not MISSING, reason="checks the message shown without the serve extra")
def test_missing_extra_is_named(ckpt, capsys):
    assert main(["serve", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "nvidia-pytriton" in err and "bridgegan[serve]" in err


# ------------------------------------------------------------------------ real servers

def client_module(protocol: str):
    if protocol == "http":
        import tritonclient.http as mod
    else:
        import tritonclient.grpc as mod
    return mod


def infer(server, protocol: str, model: str, inputs: dict) -> np.ndarray:
    """One request over ``protocol``; raises tritonclient's InferenceServerException."""
    from tritonclient.utils import np_to_triton_dtype

    mod = client_module(protocol)
    client = mod.InferenceServerClient(server.http if protocol == "http" else server.grpc)
    try:
        ports = []
        for name, value in as_numpy(inputs).items():
            ports.append(mod.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype)))
            ports[-1].set_data_from_numpy(value)
        return client.infer(model, ports).as_numpy("output")
    finally:
        client.close()


def server_stats(server, model: str) -> dict:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http)
    try:
        s = client.get_inference_statistics(model)["model_stats"][0]
    finally:
        client.close()
    return {"inferences": int(s["inference_count"]), "executions": int(s["execution_count"]),
            "batches": {int(b["batch_size"]): int(b["compute_infer"]["count"])
                        for b in s["batch_stats"]}}


@pytest.fixture(scope="module")
def served(ckpt, tmp_path_factory):
    from bridgegan.serve.process import ServerProcess

    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with ServerProcess(["--checkpoint", str(ckpt), "--max-batch", "8", "--max-queue-delay-us",
                        "20000", "--exit-timeout-secs", "10"], log) as server:
        yield server


@needs_serve
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_outputs_are_the_engines(served, engine, protocol):
    for name, inputs, want in cases(engine):
        assert close(infer(served, protocol, name, inputs), want), name


@needs_serve
def test_the_server_prints_the_attribute_order(served, model):
    """Clients' label vectors follow the checkpoint's attribute order: printed at start."""
    want = f"attributes (label order): {', '.join(model.config.attributes)}"
    deadline = time.monotonic() + 60  # a hang guard: the line follows readiness
    while want not in served.log_tail(100_000):
        assert time.monotonic() < deadline, served.log_tail()
        time.sleep(0.05)


# The batching server's queue delay: a request waits this long for others to fill a batch
# of --max-batch, so requests sent together are batched however busy the machine is (a
# hang guard too: a batch that never fills still runs, and the test then fails).
BATCHING_DELAY_US = 60_000_000


@pytest.fixture
def batching_server(ckpt, tmp_path):
    from bridgegan.serve.process import ServerProcess

    with ServerProcess(["--checkpoint", str(ckpt), "--max-batch", "8", "--max-queue-delay-us",
                        str(BATCHING_DELAY_US), "--exit-timeout-secs", "10"],
                       tmp_path / "serve.log") as server:
        yield server


def send_together(server, requests: list[dict]) -> list[np.ndarray]:
    """Each request from a thread of its own, released together, over gRPC and HTTP."""
    start = threading.Barrier(len(requests))

    def send(i):
        start.wait(60)
        return infer(server, "http" if i % 2 else "grpc", "translate_label", requests[i])

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, range(len(requests))))


@needs_serve
def test_dynamic_batching(batching_server, engine):
    """8 single-image requests sent together (--max-batch 8) run as one execution of a
    batch of 8, by the server's own statistics, and each answer is the engine's for that
    request alone. The queue delay (BATCHING_DELAY_US) is far longer than sending takes,
    so Triton's batcher holds the requests until the batch is full: no race with the
    machine's speed."""
    n = 8
    x, yt, r = images(n, 32, 7), labels(n, 6, 7), noise(n, 7)
    one = [{"image": x[i:i + 1], "target": yt[i:i + 1], "noise": r[i:i + 1]} for i in range(n)]
    before = server_stats(batching_server, "translate_label")
    got = send_together(batching_server, one)
    deadline = time.monotonic() + 60  # a hang guard: statistics may follow the answers
    while (after := server_stats(batching_server, "translate_label"))["inferences"] < n:
        assert time.monotonic() < deadline, after
        time.sleep(0.05)
    assert before == {"inferences": 0, "executions": 0, "batches": {}}
    assert after == {"inferences": n, "executions": 1, "batches": {n: 1}}, after
    for i in range(n):
        alone = engine.translate(x[i:i + 1], yt[i:i + 1], noise=r[i:i + 1])
        assert close(got[i], alone), i


@needs_serve
def test_a_full_model_queue_refuses_at_once_as_busy(ckpt, engine, tmp_path):
    """--max-queue-size 1: of two requests sent together, the queue holds one (the batcher
    waits up to its delay for more), the other is refused at once as busy, over HTTP or
    gRPC; tritonserver's words for it are what the front maps (``front.queue_full``)."""
    from tritonclient.utils import InferenceServerException

    from bridgegan.serve.process import ServerProcess

    x, yt, r = images(2, 32, 8), labels(2, 6, 8), noise(2, 8)
    one = [{"image": x[i:i + 1], "target": yt[i:i + 1], "noise": r[i:i + 1]} for i in range(2)]
    with ServerProcess(["--checkpoint", str(ckpt), "--max-batch", "8", "--max-queue-delay-us",
                        "10000000", "--max-queue-size", "1", "--exit-timeout-secs", "10"],
                       tmp_path / "serve.log") as server:
        start = threading.Barrier(2)

        def send(i):
            start.wait(60)
            try:
                return infer(server, ("http", "grpc")[i], "translate_label", one[i])
            except InferenceServerException as exc:
                return exc

        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(send, range(2)))
    refused = [g for g in got if isinstance(g, InferenceServerException)]
    assert len(refused) == 1, got
    assert "the server is busy: the queue of translate_label is full" in str(refused[0]), \
        refused
    i = next(k for k, g in enumerate(got) if not isinstance(g, InferenceServerException))
    assert close(got[i], engine.translate(x[i:i + 1], yt[i:i + 1], noise=r[i:i + 1]))


@needs_serve
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_clear_errors(served, engine, protocol):
    from tritonclient.utils import InferenceServerException

    x, t = images(1, 32, 9), labels(1, 6, 9)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    bad = [({"image": x[..., :16, :16], "target": t},
            "input 'image' must have shape [N, 3, 32, 32] with 1 <= N <= 8, got [1, 3, 16, 16]"),
           ({"image": x, "target": torch.ones(1, 7)}, "input 'target' must have shape [N, 6]"),
           ({"image": nan, "target": t}, "image: contain NaN or Inf values"),
           ({"image": 3 * x, "target": t}, "values must lie in [-1, 1]"),
           ({"image": x, "target": 0.5 * t}, "'target' must hold 0 (absent) or 1 (present)"),
           ({"image": x.expand(9, -1, -1, -1), "target": t.expand(9, -1)},
            "with 1 <= N <= 8, got [9, 3, 32, 32]"),
           ({"image": x}, "missing input(s) target")]
    good = {"image": x, "target": t, "noise": noise(1, 9)}
    want = engine.translate(x, t, noise=noise(1, 9))
    for inputs, message in bad:
        with pytest.raises(InferenceServerException) as err:
            infer(served, protocol, "translate_label", inputs)
        assert message in str(err.value), str(err.value)
        assert "Traceback" not in str(err.value) and ".py" not in str(err.value)
        assert close(infer(served, protocol, "translate_label", good), want)


@needs_serve
def test_bounded_load(served):
    load = benchmark_script("load_serve")
    for protocol in ("http", "grpc"):
        result = load.run_load(served.http, served.grpc, protocol=protocol,
                               concurrency=4, max_requests=24, duration=60)
        assert result["errors"] == 0, result["first_error"]
        assert result["requests"] == 24
        assert all(f"p{q}_ms" in result for q in (20, 50, 80, 99))


def bundled_tritonserver_problem() -> str | None:
    """Why PyTriton's bundled tritonserver cannot start here, or None."""
    from bridgegan.serve.server import tritonserver_command

    with tempfile.TemporaryDirectory() as tmp:
        argv, env = tritonserver_command(tmp, tmp)
        try:
            out = subprocess.run([argv[0], "--help"], env=env, capture_output=True, text=True,
                                 timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
    text = out.stdout + out.stderr
    return None if "--model-repository" in text else text[-500:]


@needs_serve
def test_plain_tritonserver_on_the_python_backend_repository(ckpt, engine, tmp_path):
    from bridgegan.serve.process import ServerProcess

    problem = bundled_tritonserver_problem()
    if problem:
        pytest.skip(f"the bundled tritonserver cannot start here: {problem}")
    repo = tmp_path / "repo"
    assert main(["serve", "--checkpoint", str(ckpt), "--write-repository", str(repo),
                 "--max-batch", "8", "--max-queue-delay-us", "20000"]) == 0
    with ServerProcess(["--repository", str(repo), "--exit-timeout-secs", "10"],
                       tmp_path / "tritonserver.log") as server:
        for protocol in ("http", "grpc"):
            for name, inputs, want in cases(engine):
                assert close(infer(server, protocol, name, inputs), want), (protocol, name)
        invalid_batched_with_valid(server, engine, "http")  # checked by the python backend
        restricted_endpoints_off(server)


# ------------------------------------------------------------------- hostile traffic

MEMORY_BOUND = 64 * 2**20  # growth of the server tree's RSS allowed while refusing


def invalid_batched_with_valid(server, engine, protocol: str) -> None:
    """Eight single-image requests at once, the 4th with a NaN, the 5th with labels of
    0.5, the 7th with noise and the 8th with a strength out of the engine's bounds: those
    get their own errors (400), the others the engine's results."""
    from tritonclient.utils import InferenceServerException

    x, t = images(8, 32, 11), labels(8, 6, 11)
    x[3, 0, 0, 0] = float("nan")
    t[4, 0] = 0.5
    extra = {6: {"noise": torch.full((1, 8), 1e6)}, 7: {"strength": torch.full((1, 1), 11.0)}}
    start = threading.Barrier(8)

    def send(i):
        start.wait()
        try:
            return infer(server, protocol, "translate_label", {
                "image": x[i:i + 1], "target": t[i:i + 1], "noise": noise(1, i),
                **extra.get(i, {})})
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(send, range(8)))
    assert "translate_label: invalid input: image: contain NaN" in str(got[3]), got[3]
    assert "'target' must hold 0 (absent) or 1 (present)" in str(got[4]), got[4]
    assert "'noise' must be finite and within [-10000, 10000], got 1e+06" in str(got[6]), got[6]
    assert "'strength' must be finite and within [-10, 10], got 11" in str(got[7]), got[7]
    if protocol == "http":
        assert all(got[i].status() == "400" for i in (3, 4, 6, 7)), got
    for i in (0, 1, 2, 5):
        assert close(got[i], engine.translate(x[i:i + 1], t[i:i + 1], noise=noise(1, i))), got[i]


@needs_serve
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_invalid_requests_fail_alone_in_their_batch(served, engine, protocol):
    invalid_batched_with_valid(served, engine, protocol)


@needs_serve
def test_malformed_json_gets_400_from_the_server(served):
    """The front's JSON checks, and tritonserver's own parse failures, reach clients as 400."""
    for name, body, header_length, message in MALFORMED[:3]:
        status, answer = post(served.http, body, f"/v2/models/{name}/infer")
        assert status == 400 and message in answer["error"], answer
    classify = {"outputs": [{"name": "output", "parameters": {"classification": "x"}}]}
    for extra, message in [({"id": 3}, "parse 'id'"), ({"outputs": ["output"]}, "parse 'name'"),
                           ({"parameters": {"priority": -1}}, "parse 'priority'"),
                           (classify, "set 'classification'")]:  # the last: 500 before
        status, answer = post(served.http, json.dumps({"inputs": LABEL, **extra}))
        assert status == 400 and f"invalid request: Unable to {message}" in answer["error"]
    status, answer = post(served.http, json.dumps({"inputs": LABEL}))
    assert status == 200 and answer["outputs"][0]["shape"] == [1, 3, 32, 32]


def hostile_requests_refused(server) -> None:
    """Each hostile kind of load_serve, over HTTP and gRPC, plus a body declared 10 GB long
    and a gRPC message over the limit: refused with a message naming the problem (no
    traceback, no path) while the server tree's RSS grows by less than MEMORY_BOUND."""
    import socket

    import grpc
    from tritonclient.grpc import service_pb2

    load = benchmark_script("load_serve")
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    expected = {"nan": "contain NaN or Inf", "shape": "must have shape [N, 3, 32, 32]",
                "oversize": "with 1 <= N <= 8, got [16, 3, 8192, 8192]",
                "garbage": "must be a JSON inference request|not a ModelInferRequest|unknown"}
    ports = load.model_inputs(server.http, "translate_label")
    rng = np.random.default_rng(0)
    base = server.rss()
    with load.PeakMemory(server) as peak:
        for mod, url in ((httpclient, server.http), (grpcclient, server.grpc)):
            client = mod.InferenceServerClient(url)
            for kind in load.HOSTILE_KINDS:
                got = load.send_hostile(kind, client, mod, url, "translate_label", ports, rng)
                assert any(e in got for e in expected[kind].split("|")), (kind, got)
                assert "Traceback" not in got and ".py" not in got, got
            client.close()
        with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
            sock.sendall(b"POST /v2/models/translate_label/infer HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 10000000000\r\n\r\n{")
            assert sock.recv(200).startswith(b"HTTP/1.1 413")
        big = service_pb2.ModelInferRequest(model_name="translate_label",
                                            raw_input_contents=[bytes(2**22)])
        big.inputs.add(name="image", datatype="FP32", shape=[1, 3, 32, 32])
        with grpc.insecure_channel(server.grpc) as channel, pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                big.SerializeToString(), timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert peak.bytes - base < MEMORY_BOUND, (base, peak.bytes)


def process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` in /proc ("T": stopped), None once it has gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports that process ``pid`` listens on (its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def restricted_endpoints_off(server) -> None:
    """No access token on any command line of the server's tree; tritonserver listens on
    no TCP port but metrics, its unix sockets lie in a folder only this user can enter;
    logging refused by the front (HTTP and gRPC) and by tritonserver's private socket."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from bridgegan.serve.http_client import http_get

    pids = server.pids()
    cmdlines = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids}
    assert not any(b"token" in c for c in cmdlines.values())
    pid, triton = next((p, c) for p, c in cmdlines.items()
                       if c.split(b"\0")[0].endswith(b"/tritonserver"))
    assert listening_tcp_ports(pid) == {server.metrics_port}
    private = Path(re.search(rb"--http-address=unix:([^\0]+)", triton).group(1).decode())
    assert b"--grpc-address=unix:" + bytes(private.parent) in triton
    info = private.parent.stat()
    assert info.st_uid == os.getuid() and info.st_mode & 0o777 == 0o700, oct(info.st_mode)
    for address in (server.http, private):
        assert http_get(address, "/v2/logging")[0] == 403, address
    client = grpcclient.InferenceServerClient(server.grpc)
    with pytest.raises(InferenceServerException, match="logging, trace, shared memory and model "
                                                       "control are off"):
        client.get_log_settings()
    client.close()


@needs_serve
def test_hostile_requests_refused_with_bounded_memory(served):
    hostile_requests_refused(served)
    restricted_endpoints_off(served)


def shm_regions(pid: int) -> list[Path]:
    """The shared-memory regions of the python-backend stubs below process ``pid`` (a stub's
    second argument names its region), so that other servers on the machine do not count."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):  # gone, or not a process
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(proc.name))
    regions, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            with contextlib.suppress(OSError):
                argv = (Path("/proc") / str(child) / "cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"triton_python_backend_stub"):
                    regions.append(Path("/dev/shm") / argv[2].decode())
    return regions


@needs_serve
def test_shutdown_under_load_and_busy_port(ckpt, tmp_path):
    import socket

    from bridgegan.serve.process import ServerProcess

    load = benchmark_script("load_serve")
    # --exit-timeout-secs: ample (a busy machine stalls for seconds); the test is that it
    # is never reached, so that no request was given up
    with ServerProcess(["--checkpoint", str(ckpt), "--max-batch", "8", "--max-queue-delay-us",
                        "20000", "--exit-timeout-secs", "60"], tmp_path / "serve.log") as server:
        def drive():  # the load's closing stats call finds the server gone, as it should
            with contextlib.suppress(urllib.error.URLError):
                load.run_load(server.http, server.grpc, concurrency=4, max_requests=10**6,
                              duration=15, hostile=0.5)

        before = server_stats(server, "translate_label")["inferences"]
        loader = threading.Thread(target=drive)
        loader.start()
        # under load: wait until the load's requests are being answered (not a fixed sleep)
        deadline = time.monotonic() + 120  # a hang guard, not a speed limit
        while server_stats(server, "translate_label")["inferences"] == before:
            assert time.monotonic() < deadline and loader.is_alive(), server.log_tail()
            time.sleep(0.1)
        regions = shm_regions(server.proc.pid)
        assert len(regions) == len(MODELS) and all(r.exists() for r in regions), regions
        server.proc.send_signal(signal.SIGTERM)
        # ended by SIGTERM, as a command SIGTERM stopped (it exited with tritonserver's 0)
        assert server.proc.wait(timeout=60) == -signal.SIGTERM  # wait: a hang guard
        loader.join()
    # a clean exit within --exit-timeout-secs: tritonserver did not have to give up on requests
    assert "Exit timeout expired" not in server.log_tail(20000), server.log_tail()
    assert server.log_tail().rstrip().endswith("stopped by SIGTERM"), server.log_tail()
    assert not [r for r in regions if r.exists()]  # its stubs' shared memory is gone
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "bridgegan.cli", "serve", "--checkpoint",
                              str(ckpt), "--http-port", str(port)], capture_output=True,
                             text=True, timeout=120)
    assert out.returncode == 2 and f"--http-port {port} (Address already in use)" in out.stderr


@needs_serve
def test_a_killed_front_takes_tritonserver_and_its_stubs_with_it(ckpt, tmp_path):
    """SIGKILL of the front (an out-of-memory kill) runs no cleanup: tritonserver and its
    stubs ran on, orphaned, holding their memory for good. The kernel now sends tritonserver
    SIGTERM (PR_SET_PDEATHSIG): it shuts down, its stubs and their shared memory with it.
    What stays (the private folders, named with the killed front's pid) is kept while
    tritonserver runs (it holds their locks too) and swept once it has gone."""

    from bridgegan.serve import server as serve_server
    from bridgegan.serve.process import ServerProcess

    with ServerProcess(["--checkpoint", str(ckpt)], tmp_path / "serve.log") as server:
        front = server.proc.pid
        regions = shm_regions(front)
        left = sorted(p for p in Path(tempfile.gettempdir()).iterdir()
                      if p.name.startswith((f"{serve_server.REPOSITORY_PREFIX}{front}-",
                                            f"{serve_server.WORKDIR_PREFIX}{front}-")))
        assert len(left) == 2, left
        workdir = next(p for p in left if p.name.startswith(serve_server.WORKDIR_PREFIX))
        assert len(regions) == len(MODELS) and all(r.exists() for r in regions), regions
        assert all(r.name.startswith(serve_server.shm_prefix(workdir)) for r in regions)
        # tritonserver and its stubs stopped until the sweep below has been tried: the
        # SIGTERM the kernel sends stays pending, however long this process stalls
        others = [pid for pid in server.pids() if pid != front]
        for pid in others:
            os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 60  # a hang guard: stopped takes a moment
            while not all(process_state(pid) in ("T", None) for pid in others):
                assert time.monotonic() < deadline, [process_state(pid) for pid in others]
                time.sleep(0.01)
            os.kill(front, signal.SIGKILL)
            server.proc.wait(timeout=60)
            assert not set(left) & set(serve_server.sweep_leftovers())  # tritonserver holds them
        finally:
            for pid in others:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 120  # a hang guard, not a speed limit
        while server.pids():
            assert time.monotonic() < deadline, f"still running: {server.pids()}"
            time.sleep(0.2)
    assert not [r for r in regions if r.exists()]
    assert set(left) <= set(serve_server.sweep_leftovers())
    assert not [p for p in left if p.exists()]


def test_a_sweep_removes_only_unheld_leftovers_of_this_user(tmp_path):
    """A private folder whose lock nobody holds goes, with its stubs' shared memory; one
    whose lock is held (a running server, or the tritonserver of a killed front), one
    without a lock file (another version's, or being made), a file or link of the name,
    and other names stay."""
    import fcntl

    from bridgegan.serve import server as serve_server

    temp, shm = tmp_path / "tmp", tmp_path / "shm"
    temp.mkdir(), shm.mkdir()

    def private(name: str, alive: bool = True) -> Path:
        folder = temp / name
        (folder / "models").mkdir(parents=True)
        if alive:
            (folder / serve_server.ALIVE).touch()
        return folder

    dead = private(f"{serve_server.WORKDIR_PREFIX}123-abcdefgh")
    dead_repo = private(f"{serve_server.REPOSITORY_PREFIX}123-ijklmnop")
    running = private(f"{serve_server.WORKDIR_PREFIX}456-qrstuvwx")
    unknown = private(f"{serve_server.REPOSITORY_PREFIX}789-yzabcdef", alive=False)
    (temp / f"{serve_server.WORKDIR_PREFIX}1-file").write_text("x")
    (temp / f"{serve_server.WORKDIR_PREFIX}2-link").symlink_to(running)
    other = private("someone-elses-123")
    regions = {f: shm / f"{serve_server.shm_prefix(f)}stub0" for f in (dead, running)}
    for region in regions.values():
        region.write_bytes(b"x")
    fd = os.open(running / serve_server.ALIVE, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # another open file's lock: a running server's
        assert serve_server.sweep_leftovers(temp, shm) == [dead_repo, dead]
    finally:
        os.close(fd)
    assert not dead.exists() and not dead_repo.exists() and not regions[dead].exists()
    assert all(p.exists() for p in (running, unknown, other, regions[running]))
    assert (temp / f"{serve_server.WORKDIR_PREFIX}1-file").is_file()
    assert (temp / f"{serve_server.WORKDIR_PREFIX}2-link").is_symlink()
    assert serve_server.sweep_leftovers(temp, shm) == [running]  # its server gone


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir() or not shutil.which("bash"),
                    reason="needs Linux's /proc and bash")
def test_a_sweep_ends_stubs_that_alone_hold_a_dead_servers_lock(tmp_path):
    """A front killed while its models loaded left the python-backend stubs deadlocked in
    Triton's shutdown, holding its folder's lock (and ~735 MB) for good, so no sweep
    removed it: stubs that alone hold a lock are killed and the folder goes. A lock that
    another process holds too (a running tritonserver), or whose front runs, keeps all."""
    import fcntl

    from bridgegan.serve import server as serve_server
    from conftest import dead_pid

    temp = tmp_path / "tmp"
    folders = [temp / f"{serve_server.WORKDIR_PREFIX}{pid}-abcdefgh"
               for pid in (dead_pid(), os.getpid())]  # the front gone, the front running
    fds = []
    for folder in folders:
        (folder / "models").mkdir(parents=True)
        (folder / serve_server.ALIVE).touch()
        fds.append(os.open(folder / serve_server.ALIVE, os.O_RDONLY))
        fcntl.flock(fds[-1], fcntl.LOCK_SH)  # what the front passed on to its stubs
    stub = subprocess.Popen(["bash", "-c", f"exec -a /opt/tritonserver/backends/python/"
                                           f"{serve_server.STUB} sleep 300"], pass_fds=fds)
    server = subprocess.Popen(["sleep", "300"], pass_fds=fds[:1])  # tritonserver, say
    for fd in fds:
        os.close(fd)
    try:
        deadline = time.monotonic() + 60  # a hang guard: until bash has become the stub
        while serve_server._program(stub.pid) != serve_server.STUB:
            assert time.monotonic() < deadline and stub.poll() is None
            time.sleep(0.01)
        # the first: its server runs; the second: the stub holds it alone, its front runs
        assert serve_server.sweep_leftovers(temp, tmp_path) == []
        assert stub.poll() is None and server.poll() is None
        shutil.rmtree(folders[1])  # (its lock is free once the stub is gone)
        server.kill()
        server.wait()
        folder = folders[0]
        assert serve_server.sweep_leftovers(temp, tmp_path) == [folder]
        assert stub.wait(timeout=60) == -signal.SIGKILL and not folder.exists()
    finally:
        for proc in (stub, server):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_paths_a_shell_would_split_are_refused_before_serving(tmp_path, monkeypatch, capsys):
    """Triton's python backend starts each model through an unquoted shell command line
    holding the repository and the private folders' paths: a TMPDIR with a space hung the
    server (models that never started). Refused up front, naming the path; non-ASCII
    letters pass. The socket path's limit counts bytes (20 CJK letters: 60 bytes)."""
    from bridgegan.serve import server as serve_server

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "t mp"))
    with pytest.raises(ValueError, match=r"the temp folder '.*/t mp' holds ' '.*set TMPDIR"):
        serve_server.check_shell_safe()
    with pytest.raises(ValueError, match=r"the temp folder"):  # before anything is written
        serve_server.serve_checkpoint(tmp_path / "ck", 8, 0, "cpu", "torch", "float32")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "é中文"))
    serve_server.check_shell_safe(tmp_path / "modèles")
    with pytest.raises(ValueError, match=r"the model repository '.*/\$x' holds '\$'"):
        serve_server.check_shell_safe(tmp_path / "$x")
    # a repository written there would be refused when served: refused as it is written,
    # whatever the temp folder (the serving process may have another TMPDIR)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "t mp"))
    assert main(["serve", "--checkpoint", str(tmp_path / "ck"), "--write-repository",
                 str(tmp_path / "sp ace")]) == 2
    assert "the model repository '" in capsys.readouterr().err
    assert not (tmp_path / "sp ace").exists()
    deep = tmp_path / ("中" * 20)
    assert len(str(deep / serve_server.GRPC_SOCKET)) < serve_server.SOCKET_PATH_MAX
    with pytest.raises(ValueError, match=r"longer than 107 bytes"):
        serve_server.private_sockets(deep)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's prctl")
def test_tritonserver_hears_sigint_though_the_fronts_shell_ignored_it():
    """`bridgegan serve &` in a script starts the front with SIGINT ignored, and tritonserver
    inherited that: the SIGINT that stops it did nothing, and the front waited for good."""
    from bridgegan.serve import server as serve_server

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        child = subprocess.Popen(["sleep", "60"],
                                 preexec_fn=serve_server._die_with_this_process())
    finally:
        signal.signal(signal.SIGINT, before)
    try:
        status = Path(f"/proc/{child.pid}/status").read_text()
        ignored = int(re.search(r"SigIgn:\s*([0-9a-f]+)", status).group(1), 16)
        assert not ignored & (1 << (signal.SIGINT - 1))
    finally:
        child.kill()
        child.wait()


def test_a_private_folder_is_locked_while_in_use_and_removed_after(tmp_path, monkeypatch):
    """The lock file is locked before it takes its name; it is held (and listed for the
    tritonserver child) while the folder is in use; the folder goes before the lock."""
    import fcntl

    from bridgegan.serve import server as serve_server

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with serve_server._private_folder(serve_server.WORKDIR_PREFIX) as folder:
        folder = Path(folder)
        assert folder.name.startswith(f"{serve_server.WORKDIR_PREFIX}{os.getpid()}-")
        assert sorted(p.name for p in folder.iterdir()) == [serve_server.ALIVE]
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and len(serve_server._HELD) == 1
        assert serve_server.sweep_leftovers(tmp_path, tmp_path) == []
        fd = os.open(folder / serve_server.ALIVE, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    assert not folder.exists() and not serve_server._HELD


class _FakeLoad:
    """load_serve.run_load against a stand-in of tritonclient and of the server (no server,
    no tritonclient), on a virtual clock, so the figures are exact whatever the machine's
    speed: each client thread has its own time, advanced by what it does (its requests,
    its sleeps), and the main thread reads the latest of them. Each valid request takes
    ``service`` seconds (the ``stall_on``-th, 0-based, ``stall`` more: a pause of the
    server; every ``fail_every``-th fails), each invalid one ``hostile_s``."""

    def __init__(self, monkeypatch, load, service=0.005, stall_on=None, stall=1.0,
                 fail_every=0, hostile_s=0.001):
        self.served, self.calls, self.latest = 0, 0, 0.0
        self.local, self.lock = threading.local(), threading.Lock()
        fake = self

        class Client:
            def __init__(self, url):
                pass

            def close(self):
                pass

            def infer(self, model, inputs):
                with fake.lock:
                    fake.calls += 1
                    call = fake.calls
                fake.advance(service + (stall if call - 1 == stall_on else 0.0))
                if fail_every and call % fail_every == 0:
                    raise RuntimeError("refused")
                with fake.lock:
                    fake.served += 1

        class InferInput:
            def __init__(self, name, shape, dtype):
                pass

            def set_data_from_numpy(self, a):
                pass

        for name in ("tritonclient", "tritonclient.http", "tritonclient.grpc"):
            module = types.ModuleType(name)
            module.InferenceServerClient, module.InferInput = Client, InferInput
            monkeypatch.setitem(sys.modules, name, module)

        def hostile(*args, **kwargs):
            fake.advance(hostile_s)
            return "[400] refused"

        monkeypatch.setattr(load, "time", types.SimpleNamespace(
            perf_counter=self.now, sleep=lambda s: self.advance(max(0.0, s))))
        monkeypatch.setattr(load, "model_inputs", lambda http, model: [
            {"name": "image", "dims": [3, 4, 4], "data_type": "TYPE_FP32"}])
        monkeypatch.setattr(load, "stats", lambda http, model: (fake.served, fake.served))
        monkeypatch.setattr(load, "send_hostile", hostile)

    def now(self) -> float:
        if threading.current_thread() is threading.main_thread():
            with self.lock:
                return self.latest
        return getattr(self.local, "t", 0.0)

    def advance(self, seconds: float) -> None:
        self.local.t = self.now() + seconds
        with self.lock:  # the latest of all threads' times (not keyed by thread ident:
            self.latest = max(self.latest, self.local.t)  # a finished thread's is reused)


def test_load_open_loop_counts_the_wait_of_requests_not_yet_sent(monkeypatch):
    """A 1 s stall at the 10th of 50 requests: the closed loop stops sending while it lasts
    and reports a 5 ms median (coordinated omission); on the open-loop schedule (100/s)
    every request due during the stall is late by up to 1 s and its latency says so."""
    load = benchmark_script("load_serve")
    _FakeLoad(monkeypatch, load, service=0.005, stall_on=9, stall=1.0)
    closed = load.run_load("x", "x", concurrency=1, max_requests=50, duration=60)
    assert closed["loop"] == "closed" and closed["served"] == 50
    assert closed["p50_ms"] == pytest.approx(5.0)
    _FakeLoad(monkeypatch, load, service=0.005, stall_on=9, stall=1.0)
    opened = load.run_load("x", "x", concurrency=1, max_requests=50, duration=60, rate=100)
    assert opened["loop"] == "open, 100 requests/s" and opened["served"] == 50
    # request k is due at 10 k ms; request 9 (due at 90 ms) answered at 1.095 s, 10 at 1.100 s
    assert opened["p50_ms"] > 800 and opened["p99_ms"] == pytest.approx(1002.5)
    assert opened["p50_service_ms"] == pytest.approx(5.0)
    # without a stall the open loop keeps its schedule: latency is the service time
    _FakeLoad(monkeypatch, load, service=0.005)
    calm = load.run_load("x", "x", concurrency=1, max_requests=50, duration=60, rate=100)
    assert calm["p99_ms"] == pytest.approx(5.0) and calm["seconds"] == pytest.approx(0.495, abs=0.006)
    with pytest.raises(ValueError, match="rate must be > 0"):
        load.run_load("x", "x", concurrency=1, rate=0)


def test_load_rates_are_the_valid_requests_and_served_images(monkeypatch):
    """--hostile threads go on until --duration after the valid requests are done: the
    rates are over the valid requests' span; failed requests are no images served."""
    load = benchmark_script("load_serve")
    _FakeLoad(monkeypatch, load, service=0.005, hostile_s=0.001)
    r = load.run_load("x", "x", concurrency=2, max_requests=20, duration=5, hostile=0.5)
    assert r["hostile_clients"] == 1 and r["served"] == 20
    assert r["seconds"] == pytest.approx(0.1) and r["requests_per_s"] == pytest.approx(200)
    assert r["hostile_seconds"] == pytest.approx(5.0, abs=0.01)
    _FakeLoad(monkeypatch, load, service=0.005, fail_every=2)
    r = load.run_load("x", "x", concurrency=1, max_requests=40, duration=60, rows=4)
    assert (r["served"], r["errors"], r["seconds"]) == (20, 20, pytest.approx(0.2))
    assert r["images_per_s"] == pytest.approx(20 * 4 / 0.2)


def test_load_against_a_given_server_warms_it_up_and_names_the_client(monkeypatch, tmp_path):
    """--url: the measured load follows uncounted warm-up requests (the first calls at a
    batch size compile or capture); the JSON names the client's machine and the date."""
    load = benchmark_script("load_serve")
    calls = []

    def run_load(http, grpc, **kw):
        calls.append(kw)
        return {"errors": 0, "hostile": {}}

    monkeypatch.setattr(load, "run_load", run_load)
    out = tmp_path / "load.json"
    assert load.main(["--url", "127.0.0.1:1", "--concurrency", "3", "--requests", "50",
                      "--hostile", "0.5", "--rate", "20", "--json", str(out)]) == 0
    assert [c["max_requests"] for c in calls] == [6, 50]
    assert (calls[0]["hostile"], calls[0]["rate"]) == (0.0, None)
    assert (calls[1]["hostile"], calls[1]["rate"]) == (0.5, 20.0)
    result = json.loads(out.read_text())
    assert result["warmup_requests"] == 6 and "client_machine" in result and result["date"]
    assert result["torch"] == torch.__version__ and result["commit"]  # the code measured
    assert result["server"] == {}  # another machine, maybe: nothing said of it
    assert result["client_machine"].endswith(f"{os.cpu_count()} cores")
    calls.clear()
    assert load.main(["--url", "127.0.0.1:1", "--warmup", "0"]) == 0 and len(calls) == 1


@pytest.mark.parametrize("model_name, inputs, k, datatype, data", [
    ("translate_reference", REFERENCE, 2, "FP32", [1.0, 0, 1, 0, 0, 0]),
    ("translate_label", LABEL, 1, "UINT64", [0, 1, 0, 1, 0, 1]),
    ("translate_label", LABEL, 0, "BOOL", [True] * 3072),
])
def test_an_input_declared_with_another_data_type_is_refused_by_the_front(
        engine, model_name, inputs, k, datatype, data):
    """Values that would pass as the port's type (0 / 1 as BOOL, 0 / 1 as UINT64) are
    still refused when declared with another type: Triton would get a tensor of a type the
    model does not take."""
    want = inputs[k]["datatype"]
    with pytest.raises(RequestError, match=rf"input '{inputs[k]['name']}' must have data type "
                                           rf"{want}, got {datatype}"):
        front_check(engine.config, model_name, changed(inputs, k, datatype=datatype, data=data))
