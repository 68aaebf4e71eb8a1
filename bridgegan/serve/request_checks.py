"""What a request may hold, checked before tritonserver sees it (``front``): its
declarations, then its values.

- size: the largest body or message the front takes follows from ``--max-batch`` rows of
  the largest model (``row_bytes``, ``row_values``: binary, each value's size; JSON,
  ``JSON_BYTES_PER_VALUE``; HEADER_BYTES more for the names and parameters);
- count: a request declaring more inputs than its model takes is refused before they
  are walked (a gRPC message declares one in two bytes);
- JSON: no more items than max batch rows take (``check_json_items``, before it is
  parsed), UTF-8, no key repeated in an object (tritonserver would take the first,
  Python's json the last), ``"parameters"`` objects of at most ``MAX_PARAMETERS`` keys,
  integer dimensions, JSON numbers for FP32, integers for UINT64 and true / false for
  BOOL ("data" lists may nest); binary BOOL bytes 0 or 1;
- declarations: known model and inputs, data types, shapes (N, <dims of the model
  configuration>) with 1 <= N <= max batch, checked before any tensor is decoded;
- values: ``models.check_request`` (the engine's image checks, 0 / 1 labels, finite values,
  the engine's bounds on noise and strength).

Anything wrong is a ``RequestError`` with the HTTP status the request gets (400 unless
said); any failure while checking a request counts as the request's (``check``).
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import os
from collections.abc import Callable, Mapping

import numpy as np

from ..engine.export.pbtxt import Port
from ..reference.records import unique_keys
from .http_client import http_get
from .models import NUMPY_TYPES, ModelSpec, check_request
from .names import MODELS

LOG = logging.getLogger("bridgegan.serve")
JSON_BYTES_PER_VALUE = 32  # a float32 written by json.dumps: up to 24 characters and ", "
HEADER_BYTES = 64 * 1024  # JSON header of a binary request, names and parameters
GRPC_MESSAGE_BYTES = 2**31 - 1  # the largest message grpc takes (a C int)
MAX_PARAMETERS = 64  # keys of a "parameters" object: tritonserver parses a request's in
# time quadratic in their number (tens of thousands take it seconds)
JSON_DATA = {"FP32": ((int, float), "numbers"), "BOOL": ((bool,), "true / false"),
             "UINT64": ((int,), "integers")}
GRPC_CONTENTS = {"FP32": "fp32_contents", "BOOL": "bool_contents", "UINT64": "uint64_contents"}
JSON_NAMES = {str: "a string", bool: "true / false", int: "a number", float: "a number",
              dict: "an object", list: "a list", type(None): "null"}


class RequestError(ValueError):
    """A request refused by the front, with the HTTP status it gets."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def model_spec(config: Mapping) -> tuple[ModelSpec, int]:
    """(spec, max batch) of a model from tritonserver's JSON model configuration."""
    def ports(items):
        return tuple(Port(p["name"], p["data_type"].removeprefix("TYPE_"),
                          tuple(int(d) for d in p["dims"]), bool(p.get("optional")))
                     for p in items)
    return (ModelSpec(config["name"], ports(config["input"]), ports(config["output"])),
            int(config["max_batch_size"]))


def fetch_specs(http: os.PathLike, models=MODELS) -> dict[str, tuple[ModelSpec, int]]:
    """The served models' specs and max batch, read from tritonserver's HTTP socket."""
    out = {}
    for name in models:
        status, body = http_get(http, f"/v2/models/{name}/config")
        if status != 200:
            raise RuntimeError(f"tritonserver has no configuration of {name!r} ({status})")
        out[name] = model_spec(json.loads(body))
    return out


def row_values(spec: ModelSpec) -> int:
    """Values in one row of all of ``spec``'s inputs."""
    return sum(int(np.prod(p.shape)) for p in spec.inputs)


def row_bytes(spec: ModelSpec) -> int:
    """Bytes in one binary row of all of ``spec``'s inputs."""
    return sum(int(np.prod(p.shape)) * np.dtype(NUMPY_TYPES[p.dtype]).itemsize
               for p in spec.inputs)


def binary_limit(specs: Mapping[str, tuple[ModelSpec, int]],
                 what: str = "the models' max_batch_size") -> int:
    """Bytes of the largest binary request of ``specs`` (name -> (spec, max batch)): max
    batch rows of the largest model and HEADER_BYTES; a ValueError naming ``what`` (the
    max batch's source) where gRPC could not take a message that large."""
    max_batch = max(b for _, b in specs.values())
    row = max(row_bytes(s) for s, _ in specs.values())
    limit = HEADER_BYTES + max_batch * row
    if limit > GRPC_MESSAGE_BYTES:
        raise ValueError(f"{what} {max_batch}: a gRPC request of that many rows would pass "
                         f"gRPC's {GRPC_MESSAGE_BYTES} byte message limit; give at most "
                         f"{(GRPC_MESSAGE_BYTES - HEADER_BYTES) // row}")
    return limit


def check_declared(spec: ModelSpec, max_batch: int, declared: list[tuple[str, str, list]]) -> int:
    """Check (name, data type, shape) of each input as declared, before any data is decoded;
    returns the number of rows."""
    ports = {p.name: p for p in spec.inputs}
    names = [name for name, _, _ in declared]
    if len(set(names)) != len(names):
        raise RequestError(f"an input is given twice: {', '.join(names)}")
    rows = set()
    for name, dtype, shape in declared:
        port = ports.get(name)
        if port is None:
            raise RequestError(f"unknown input {name!r}; {spec.name} takes {', '.join(ports)}")
        if dtype != port.dtype:
            raise RequestError(f"input {name!r} must have data type {port.dtype}, got {dtype}")
        if not (isinstance(shape, list)
                and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            raise RequestError(f"input {name!r}: the shape must be a list of integers, got "
                               f"{json.dumps(shape)[:100]}")
        if (len(shape) != len(port.shape) + 1 or tuple(shape[1:]) != port.shape
                or not 1 <= shape[0] <= max_batch):
            raise RequestError(f"input {name!r} must have shape {port.batched_shape()} with "
                               f"1 <= N <= {max_batch}, got {list(shape)}")
        rows.add(shape[0])
    missing = [p.name for p in spec.inputs if not p.optional and p.name not in names]
    if missing:
        raise RequestError(f"missing input(s) {', '.join(missing)}")
    if len(rows) > 1:
        raise RequestError(f"inputs have different numbers of rows: {sorted(rows)}")
    return rows.pop()


def _json_values(name: str, dtype: str, data) -> list:
    """The values of an input's JSON "data": a list (nested lists flattened) of the JSON
    type ``dtype`` takes (``JSON_DATA``), or a RequestError."""
    types, accepted = JSON_DATA[dtype]
    if not isinstance(data, list):
        raise RequestError(f'input {name!r}: "data" must be a list of {accepted} (or give '
                           f'"binary_data_size"), got {JSON_NAMES[type(data)]}')
    values = data
    while (kinds := set(map(type, values))) == {list}:
        values = list(itertools.chain.from_iterable(values))
    wrong = kinds - set(types)
    if wrong:
        raise RequestError(f'input {name!r}: "data" of a {dtype} input must hold JSON '
                           f'{accepted} (lists of them may nest, evenly), got '
                           f'{", ".join(sorted({JSON_NAMES[k] for k in wrong}))}')
    if dtype == "UINT64":  # numpy would wrap a negative one around
        bad = next((v for v in values if not 0 <= v < 2 ** 64), None)
        if bad is not None:
            raise RequestError(f"input {name!r}: UINT64 values must lie in [0, 2**64), got {bad}")
    return values


def _array(name: str, dtype: str, shape: list, values) -> np.ndarray:
    """``values`` (bytes or a list) as an array of ``shape``, or a RequestError."""
    try:
        a = (np.frombuffer(values, NUMPY_TYPES[dtype]) if isinstance(values, bytes)
             else np.asarray(values, NUMPY_TYPES[dtype]))
    except (ValueError, OverflowError) as exc:  # a byte count, a number out of range
        raise RequestError(f"input {name!r}: data must be {dtype} values ({exc})") from None
    if dtype == "BOOL" and isinstance(values, bytes) and (a.view(np.uint8) > 1).any():
        raise RequestError(f"input {name!r}: binary BOOL data must be bytes 0 (false) or 1 "
                           f"(true)")
    if a.size != int(np.prod(shape)):
        raise RequestError(f"input {name!r}: {a.size} values given for shape {list(shape)}")
    return a.reshape(shape)


def _parameters(owner: Mapping, what: str) -> dict:
    """``owner``'s "parameters" (none: empty), which must be a JSON object."""
    params = owner.get("parameters", {})
    if not isinstance(params, dict):
        raise RequestError(f'{what}: "parameters" must be a JSON object, got '
                           f'{JSON_NAMES[type(params)]}')
    if len(params) > MAX_PARAMETERS:
        raise RequestError(f'{what}: at most {MAX_PARAMETERS} "parameters", got {len(params)}')
    return params


def json_head(raw: bytes) -> dict:
    """The JSON of an HTTP inference request (UTF-8, no key repeated in an object)."""
    try:
        return json.loads(raw.decode("utf-8"),
                          object_pairs_hook=functools.partial(unique_keys, error=RequestError))
    except UnicodeDecodeError as exc:
        raise RequestError(f"the request must be a JSON inference request in UTF-8; byte "
                           f"{exc.start} is not UTF-8") from None


def check_json_items(spec: ModelSpec, max_batch: int, raw: bytes) -> None:
    """Refuse JSON with more items (commas and opening brackets, counted before it is
    parsed) than ``max_batch`` rows of ``spec``'s inputs take, and HEADER_BYTES more: a
    "data" list of V values has V - 1 commas and, for these models' shapes, at most V + 1
    lists however it nests. An empty list costs Python some 64 bytes: a body of "[],"
    within the size limit would build objects of 20 times its size."""
    items = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    most = 2 * max_batch * row_values(spec) + HEADER_BYTES
    if items > most:
        raise RequestError(f"the JSON holds {items} items (commas and brackets), more than "
                           f"{max_batch} rows of {spec.name}'s inputs take ({most})", 413)


def http_arrays(spec: ModelSpec, max_batch: int, body: bytes,
                header_length: int | None) -> dict[str, np.ndarray]:
    """The input arrays of an HTTP inference request (JSON, or the binary extension with
    a JSON header of ``header_length`` bytes), declarations checked first."""
    head_bytes = body if header_length is None else body[:header_length]  # one copy
    check_json_items(spec, max_batch, head_bytes)
    try:
        head = json_head(head_bytes)
        inputs = head["inputs"]
        if not isinstance(inputs, list):  # a string or object: not "N inputs given"
            raise TypeError
        check_count(spec, len(inputs))
        _parameters(head, "the request")
        outputs = head.get("outputs")  # of another type: tritonserver's 400
        for k, o in enumerate(outputs if isinstance(outputs, list) else []):
            if isinstance(o, dict):
                _parameters(o, f"output {k}")
        declared = [(i["name"], i["datatype"], i["shape"]) for i in inputs]
        check_declared(spec, max_batch, declared)
    except (ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, RequestError):
            raise
        raise RequestError("the request must be a JSON inference request: {\"inputs\": "
                           "[{\"name\", \"datatype\", \"shape\", \"data\"}]}; "
                           f"{accepted(spec)}") from None
    arrays, offset = {}, header_length or 0
    for i, (name, dtype, shape) in zip(inputs, declared):
        params = _parameters(i, f"input {name!r}")
        if "shared_memory_region" in params:
            raise RequestError(f"input {name!r}: shared memory is off; send the data")
        size = params.get("binary_data_size")
        if size is None:
            arrays[name] = _array(name, dtype, shape, _json_values(name, dtype, i.get("data")))
            continue
        if header_length is None or not isinstance(size, int) or offset + size > len(body):
            raise RequestError(f"input {name!r}: binary_data_size {size} does not match the body")
        arrays[name] = _array(name, dtype, shape, body[offset:offset + size])
        offset += size
    if header_length is not None and offset != len(body):
        raise RequestError(f"the body has {len(body) - offset} bytes after the binary inputs")
    return arrays


def check_count(spec: ModelSpec, count: int) -> None:
    """Refuse a request declaring more inputs than ``spec`` has, before they are walked: a
    gRPC message declares an input in two bytes, and half a million of them would cost a
    walk (and an error naming each) on the event loop."""
    if count > len(spec.inputs):
        raise RequestError(f"{count} inputs given; {accepted(spec)}")


def grpc_arrays(spec: ModelSpec, max_batch: int, request) -> dict[str, np.ndarray]:
    """The input arrays of a gRPC ModelInferRequest, declarations checked first (and no
    more requested outputs than the model has: tritonserver would take each)."""
    check_count(spec, len(request.inputs))
    if len(request.outputs) > len(spec.outputs):
        raise RequestError(f"{len(request.outputs)} outputs requested; {spec.name} has "
                           f"{', '.join(p.name for p in spec.outputs)}")
    declared = [(i.name, i.datatype, list(i.shape)) for i in request.inputs]
    check_declared(spec, max_batch, declared)
    raw = request.raw_input_contents
    if raw and len(raw) != len(declared):
        raise RequestError(f"{len(raw)} raw_input_contents for {len(declared)} inputs")
    arrays = {}
    for k, (i, (name, dtype, shape)) in enumerate(zip(request.inputs, declared)):
        if "shared_memory_region" in i.parameters:
            raise RequestError(f"input {name!r}: shared memory is off; send the data")
        values = raw[k] if raw else getattr(i.contents, GRPC_CONTENTS[dtype])
        arrays[name] = _array(name, dtype, shape, values)
    return arrays


def accepted(spec: ModelSpec) -> str:
    """What ``spec`` takes, for error messages: each input's name, data type and shape."""
    return f"{spec.name} takes " + ", ".join(
        f"{p.name} {p.dtype} {p.batched_shape()}" + (" (optional)" if p.optional else "")
        for p in spec.inputs)


def check(spec: ModelSpec, decode: Callable[[], dict[str, np.ndarray]]) -> None:
    """Decode a request's arrays (``decode()``) and check them (``models.check_request``).
    Anything wrong is a RequestError naming the model; a failure the checks did not
    foresee is the request's too (400, the detail logged), not the server's."""
    try:
        check_request(spec, decode())
    except RequestError:
        raise
    except ValueError as exc:
        raise RequestError(f"{spec.name}: invalid input: {exc}") from None
    except Exception as exc:
        LOG.warning("%s: request refused: %r", spec.name, exc)
        raise RequestError(f"{spec.name}: invalid request ({type(exc).__name__}: "
                           f"{str(exc)[:200]}); {accepted(spec)}") from None


def parse_message(message_class, payload: bytes):
    """``payload`` as a protobuf message, or a RequestError."""
    from google.protobuf.message import DecodeError

    try:
        return message_class.FromString(payload)
    except DecodeError:
        raise RequestError(f"the message is not a {message_class.__name__}") from None
