"""The front that clients talk to: HTTP and gRPC on the public ports, tritonserver behind it
on private unix sockets (``server``).

Tritonserver 2.51 has no request size limits and, for an HTTP JSON request, allocates the
size its shapes declare before checking them against the model. So the front checks each
request on its own before it reaches tritonserver:

- size: an HTTP body or gRPC message larger than ``--max-batch`` rows of the largest model
  (binary: each value's size, JSON: ``JSON_BYTES_PER_VALUE``; a binary request's JSON part
  may carry some inputs' data, up to a JSON request's size) is refused from its declared
  length (HTTP 413, gRPC RESOURCE_EXHAUSTED) before it is read;
- time: a client has ``--read-timeout-secs`` to send a request's header (else the
  connection is closed; also how long an idle connection stays open) and as long again
  for its body (else HTTP 408);
- memory: HTTP requests hold ``MAX_READING`` bodies of the largest size at once (at most
  ``READING_BYTES``, two bodies at least: the paper model's 128 px JSON bodies at max
  batch 64 are 0.2 GB each), counted in the bytes received, from the first until the
  answer is sent (a client that sends nothing holds nothing; one reader at a time may go
  a body over, up to twice the budget and one body in all, ``_Budget``); others wait within their
  read deadline (HTTP 503 past it, and at once when ``MAX_WAITING`` already wait, each
  holding a chunk it has received); a connection is not read from while its request is
  checked, forwarded and answered (bytes a client sends after its request wait in the
  kernel's socket buffer, not the front's memory); a gRPC call's request message must arrive within the read timeout too (else
  DEADLINE_EXCEEDED: the front reads each call as a stream of one message, as it is on
  the wire, so that the read can have a deadline), and at most ``MAX_GRPC_CALLS`` gRPC
  calls are taken at once, and no more than HTTP's byte budget holds of the largest
  message (others get RESOURCE_EXHAUSTED: grpc buffers a call's message before the
  handler sees it, so only a bound on calls bounds that memory); answers too
  have a deadline: an HTTP response the client has not taken within the read timeout
  ends its connection (reset), and every gRPC connection is ended (GOAWAY) after the
  read timeout, its calls in flight given as long again (a call whose answer the client
  takes no HTTP/2 window for would keep its slot for good: grpc's Python API cannot end
  one call); clients reconnect by themselves;
- one client address: at most ``client_requests`` (--max-client-requests) requests in
  hand, HTTP and gRPC together, from their start to their answer (one more is refused at
  once: HTTP 503, gRPC RESOURCE_EXHAUSTED, freeing its call slot) and CLIENT_CONNECTIONS
  times as many HTTP connections (``_Clients``): one client's idle gRPC calls took every
  call slot, its idle connections every connection, its stalled bodies the budget, and
  its abandoned HTTP requests queued minutes of work (0: no limit, for a front behind a
  proxy, where every client has the proxy's address);
- connections: at most ``MAX_CONNECTIONS`` HTTP connections (fewer where the process's
  descriptors would not hold them beside GRPC_CONNECTIONS gRPC connections, which are
  given HANDSHAKE_MS to begin HTTP/2: ``connection_cap``; one more is closed as it opens),
  ``MAX_HEADERS`` header fields of ``HEADER_LINE`` bytes a request, and a malformed
  request's traceback is not logged (``_ClientErrors``); an inference body needs a
  Content-Length (411: a chunked body is parsed chunk by chunk), and a compressed one is
  refused (415) without being inflated; a refused body still arriving is read for
  ``LINGER_S`` only;
- busy: a 503 (no budget, tritonserver's model queue full) carries Retry-After; a request
  whose client has left by the time it was checked is not forwarded (tritonserver would
  compute an HTTP request whose client has gone);
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

Bodies larger than ``THREAD_BYTES`` are parsed (gRPC), decoded and checked on a worker
thread, so that they do not hold up the event loop's other clients. An invalid request
gets its own error (HTTP 400 / gRPC INVALID_ARGUMENT; any failure while checking it counts
as invalid) and never reaches tritonserver, so the valid requests it would have been
batched with run; tritonserver's 500 for a JSON field it cannot parse or set ("id",
"outputs", a parameter, an output's "classification") reaches the client as the 400 it
is. Only inference, health, metadata, model configuration and statistics are forwarded:
logging, trace, shared memory and model control are off. A server-side failure reaches
the client as one line without traceback or paths; the log keeps the detail.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import logging
import math
import os
import re
import resource
import select
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import numpy as np

from ..engine.export.pbtxt import Port
from ..reference.records import unique_keys
from .http_client import http_get
from .models import NUMPY_TYPES, ModelSpec, check_request
from .names import CLIENT_REQUESTS, MODELS

LOG = logging.getLogger("bridgegan.serve")
HTTP_LOG = logging.getLogger("bridgegan.serve.http")  # aiohttp's server, filtered: _ClientErrors
T = TypeVar("T")
JSON_BYTES_PER_VALUE = 32  # a float32 written by json.dumps: up to 24 characters and ", "
HEADER_BYTES = 64 * 1024  # JSON header of a binary request, names and parameters
MAX_CONNECTIONS = 1024  # HTTP connections open at once; one more is closed as it opens
GRPC_CONNECTIONS = 256  # gRPC connections open at once (grpc refuses more)
HANDSHAKE_MS = 5000  # a gRPC connection's time to begin HTTP/2 (grpc's default: 120 s)
FD_RESERVE = 256  # descriptors kept for all else (``connection_cap``)
CLIENT_CONNECTIONS = 4  # HTTP connections one client address may hold per request in hand
MAX_HEADERS = 32  # header fields of an HTTP request, each line at most HEADER_LINE bytes
HEADER_LINE = 4096  # (aiohttp's defaults, 128 fields of 8 KiB, let a connection that never
# ends its header hold 1.8 MB, 0.5 MB at 32 such fields; Triton's clients send < 10 short ones)
LINGER_S = 1.0  # how long a refused body still arriving is read (and discarded) after the
# answer, so that its client gets the answer, not a reset (aiohttp's default: 10 s)
RETRY_AFTER_S = 1  # Retry-After of a 503: busy, or tritonserver's queue full
CLOSE_S = 1.0  # on close, how long aiohttp waits for its handlers once ours are done
STOPPING = "the server is shutting down; try again later"
MAX_READING = 32  # largest request bodies held at once (read, checked, forwarded, answered)
READING_BYTES = 1 << 30  # but no more bytes than this where they are larger (two at least)
MAX_WAITING = 4 * MAX_READING  # readers waiting for budget, each holding up to READ_CHUNK
READ_CHUNK = 1 << 18  # bytes read from a body at once (asyncio reads 256 KiB per call)
MAX_GRPC_CALLS = 4 * MAX_READING  # gRPC calls taken at once, read or in flight
THREAD_BYTES = 1 << 20  # bodies larger than this are parsed and checked on a worker thread
MAX_PARAMETERS = 64  # keys of a "parameters" object: tritonserver parses a request's in
# time quadratic in their number (tens of thousands take it seconds)
# how tritonserver's 500 on a malformed JSON field begins ("set": an output's parameter)
TRITON_UNPARSED = ("Unable to parse '", "Unable to set '")
JSON_DATA = {"FP32": ((int, float), "numbers"), "BOOL": ((bool,), "true / false"),
             "UINT64": ((int,), "integers")}
GRPC_CONTENTS = {"FP32": "fp32_contents", "BOOL": "bool_contents", "UINT64": "uint64_contents"}
JSON_NAMES = {str: "a string", bool: "true / false", int: "a number", float: "a number",
              dict: "an object", list: "a list", type(None): "null"}
GRPC_SERVICE = "/inference.GRPCInferenceService/"
GRPC_FORWARDED = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
                  "ModelConfig", "ModelStatistics", "ModelInfer")
HTTP_FORWARDED_GET = re.compile(
    r"/v2(/health/(live|ready)|/models/[\w.-]+(/versions/\d+)?(/ready|/config|/stats)?)?")
HTTP_INFER = re.compile(r"/v2/models/([\w.-]+)(/versions/\d+)?/infer")
BUSY = "the server is busy with other requests' bodies; try again later"
CLIENT_BUSY = ("{} requests of client address {} are in hand, the most one address may "
               "have at once (serve --max-client-requests); try again when one is answered")
OFF = ("not served: this server answers inference, health, metadata, model configuration and "
       "statistics; logging, trace, shared memory and model control are off")


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


def unparsed_request(answer: bytes) -> str | None:
    """tritonserver's message when its 500 ``answer`` says it could not parse the request's
    JSON (a field of the wrong type: "id", "outputs", a parameter), the client's error that
    it reports as its own; else None."""
    try:
        message = json.loads(answer)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return message if isinstance(message, str) and message.startswith(TRITON_UNPARSED) else None


def queue_full(body: bytes) -> bool:
    """Whether tritonserver's error ``body`` is its refusal of a request its model's queue
    has no room for (``max_queue_size``): the server is busy, not failing."""
    return b"Exceeds maximum queue size" in body


def queue_busy(model: str) -> str:
    """The client's message for ``queue_full``."""
    return f"the server is busy: the queue of {model} is full (--max-queue-size); try again later"


def server_failure(what: str, detail: str) -> str:
    """Log a server-side failure in full; the one line the client gets instead."""
    LOG.error("%s failed: %s", what, detail)
    return f"{what}: the server failed on this request (its log has the detail)"


class Front:
    """HTTP and gRPC on ``host``'s public ports in front of tritonserver's private
    ``private_http`` socket and ``private_grpc`` target (``server.private_sockets``); an
    HTTP client has ``read_timeout_s`` for a request's header and as long for its body, a
    gRPC client as long for its request message; on close, requests in flight have
    ``grace_s`` to finish; one client address has at most ``client_requests`` requests in
    hand and CLIENT_CONNECTIONS times as many HTTP connections (0: no limit). Runs its own
    event loop in a thread. A context manager; ``grpc_port`` 0 takes a free port (the one
    bound is read back)."""

    def __init__(self, specs: dict[str, tuple[ModelSpec, int]], private_http: os.PathLike,
                 private_grpc: str, host: str, http_port: int, grpc_port: int,
                 read_timeout_s: float, grace_s: float = 2.0,
                 client_requests: int = CLIENT_REQUESTS):
        self.specs, self.private_http, self.private_grpc = specs, private_http, private_grpc
        self.clients = _Clients(client_requests)  # requests in hand per client address
        self.host, self.http_port, self.grpc_port = host, http_port, grpc_port
        self.read_timeout_s, self.grace_s = read_timeout_s, grace_s
        self.max_batch = max(b for _, b in specs.values())
        self.binary_limit = HEADER_BYTES + self.max_batch * max(
            row_bytes(s) for s, _ in specs.values())
        self.json_limit = HEADER_BYTES + JSON_BYTES_PER_VALUE * self.max_batch * max(
            row_values(s) for s, _ in specs.values())
        # a binary request: a JSON part of up to json_limit, binary data of up to a batch
        self.mixed_limit = self.json_limit + self.binary_limit - HEADER_BYTES
        self.reading_bytes = min(MAX_READING * self.mixed_limit,
                                 max(READING_BYTES, 2 * self.mixed_limit))
        # gRPC calls held at once: the same bytes of messages of the largest size (the
        # paper model at max batch 64: 42 of 24 MiB)
        self.grpc_calls = min(MAX_GRPC_CALLS, self.reading_bytes // self.binary_limit)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="front", daemon=True)
        self.closing = threading.Lock()  # held from the first close on

    def __enter__(self) -> "Front":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=60)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop taking requests, let those in flight finish for up to ``grace_s``, stop.
        Calls while one is under way (a second signal) return at once."""
        if not self.closing.acquire(blocking=False):
            return
        if self.thread.is_alive():
            # the drains' own deadline is grace_s: this one only guards against a hang
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(
                timeout=self.grace_s + 60)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    async def _start(self) -> None:
        import aiohttp
        import grpc
        from aiohttp import web

        # no total timeout (aiohttp's default: 300 s, after which a request still queued in
        # tritonserver read as a server failure): a request takes as long as tritonserver
        # takes to answer it; the front's budgets bound how many wait there (and
        # --max-queue-size, where given, how many its queues hold)
        self.stopping = asyncio.Event()  # set by _stop: reads wait no longer
        self.session = aiohttp.ClientSession(
            "http://tritonserver", connector=aiohttp.UnixConnector(os.fspath(self.private_http)),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
        self.reading = _Budget(self.reading_bytes, MAX_WAITING)
        app = web.Application(client_max_size=self.mixed_limit)
        app.router.add_route("*", "/{path:.*}", self._http)
        # keepalive_timeout: a connection without a whole request header is closed after it;
        # auto_decompress off: a compressed body is refused (415), never inflated
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=CLOSE_S,
                                    keepalive_timeout=self.read_timeout_s,
                                    max_headers=MAX_HEADERS, max_field_size=HEADER_LINE,
                                    max_line_size=HEADER_LINE, auto_decompress=False,
                                    lingering_time=LINGER_S, logger=HTTP_LOG)
        await self.runner.setup()
        _cap_connections(self.runner.server, connection_cap(),
                         _Clients(CLIENT_CONNECTIONS * self.clients.most))
        await web.TCPSite(self.runner, self.host, self.http_port).start()
        unlimited = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self.channel = grpc.aio.insecure_channel(self.private_grpc, options=unlimited)
        # a call whose answer the client takes no window for keeps its slot until its
        # connection ends: end each after the read timeout, calls in flight given as long
        # (grpc takes a C int of ms: a read timeout past ~24.8 days would not start)
        age_ms = min(int(1000 * self.read_timeout_s), 2**31 - 1)
        self.grpc = grpc.aio.server(maximum_concurrent_rpcs=self.grpc_calls, options=[
            ("grpc.max_receive_message_length", self.binary_limit),
            ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0),
            ("grpc.max_allowed_incoming_connections", GRPC_CONNECTIONS),
            ("grpc.server_handshake_timeout_ms", HANDSHAKE_MS),
            ("grpc.max_connection_age_ms", age_ms), ("grpc.max_connection_age_grace_ms", age_ms)])
        self.grpc.add_generic_rpc_handlers([_GrpcHandler(self)])
        self.grpc_port = self.grpc.add_insecure_port(f"{self.host}:{self.grpc_port}")
        await self.grpc.start()

    async def _stop(self) -> None:
        """Both protocols stop taking connections at once; HTTP requests still being sent,
        or sent after, are refused (503: a client sending slowly would hold the drain);
        those in hand, and gRPC calls, drain together within ``grace_s``. Then aiohttp
        closes what is left (its own drain waited out its whole timeout now and then for
        an idle keep-alive connection)."""
        self.stopping.set()
        for site in list(self.runner.sites):
            await site.stop()
        await asyncio.gather(self.grpc.stop(self.grace_s), self._http_drained())
        await self.runner.cleanup()
        await self.session.close()
        await self.channel.close()

    async def _http_drained(self) -> None:
        """Until no HTTP request is in hand (each holds a reader of the budget from its
        start to its answer), ``grace_s`` at most."""
        deadline = asyncio.get_running_loop().time() + self.grace_s
        while self.reading.readers and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------------- HTTP

    async def _http(self, request):
        from aiohttp import web

        path = request.path
        infer = HTTP_INFER.fullmatch(path)
        budget = self.reading  # its ticket: the body's bytes, held until the answer is sent
        reader = budget.enter()
        client = request.remote if self.clients.enter(request.remote) else None
        try:
            try:
                if self.stopping.is_set():  # a kept-alive connection's next request
                    raise RequestError(STOPPING, 503)
                if client is None:
                    raise RequestError(CLIENT_BUSY.format(self.clients.most, request.remote),
                                       503)
                if request.method == "POST" and infer:
                    response = await self._http_infer(request, infer.group(1), budget, reader)
                elif request.method == "GET" and HTTP_FORWARDED_GET.fullmatch(path):
                    _hold_connection(request)
                    response = await self._forward(request, b"")
                else:
                    raise RequestError(f"{request.method} {path} is {OFF}", 403)
            except RequestError as exc:
                retry = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 503 else None
                response = web.json_response({"error": str(exc)}, status=exc.status,
                                             headers=retry)
            return await self._respond(request, response)
        finally:
            budget.leave(reader)
            if client is not None:
                self.clients.leave(client)
            _release_connection(request)  # for the next request on it

    async def _respond(self, request, response):
        """Send ``response``; a client that has not taken it within the read timeout (it
        does not read) loses the connection, which would otherwise hold the response and a
        file descriptor for as long as the client likes."""
        async def send():
            await response.prepare(request)
            await response.write_eof()

        try:  # asyncio.wait_for, not asyncio.timeout: Python 3.10 is supported
            await asyncio.wait_for(send(), self.read_timeout_s)
        except ConnectionError:
            # the client left before or while its answer was written: aiohttp's own
            # finish_response lets this go silently; raised from here it would be logged
            # as an "Error handling request" traceback, one per client that leaves
            pass
        except asyncio.TimeoutError:
            LOG.warning("%s: the client did not take the response within %g s; connection "
                        "closed", request.path, self.read_timeout_s)
            transport = request.transport
            if transport is not None:  # reset: close would still wait for the client to read
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                transport.abort()
        return response

    async def _http_infer(self, request, model: str, budget: _Budget, reader: int):
        if model not in self.specs:
            raise RequestError(f"unknown model {model!r}; served: {', '.join(self.specs)}", 404)
        if request.headers.get("Content-Encoding", "identity") != "identity":
            raise RequestError("compressed request bodies are not accepted", 415)
        if request.content_length is None:  # chunked: parsed chunk by chunk, 1 byte each
            raise RequestError("an inference request needs a Content-Length (chunked bodies "
                               "are not accepted)", 411)
        header = request.headers.get("Inference-Header-Content-Length")
        try:
            header_length = None if header is None else int(header)
        except ValueError:
            raise RequestError(f"Inference-Header-Content-Length must be an integer, got "
                               f"{header[:20]!r}") from None
        # the JSON part of a binary request may hold some inputs' data (a client sending
        # the others binary): up to a JSON request's size
        if header_length is not None and not 0 < header_length <= self.json_limit:
            raise RequestError(f"Inference-Header-Content-Length must be 1..{self.json_limit}",
                               413)
        limit = self.json_limit if header_length is None else self.mixed_limit
        body = await self._read(request, limit, budget, reader)
        spec, max_batch = self.specs[model]
        await self._off_loop_if_large(len(body), lambda: check(
            spec, lambda: http_arrays(spec, max_batch, body, header_length)))
        return await self._forward(request, body)

    async def _read(self, request, limit: int, budget: _Budget, reader: int) -> bytes:
        """The body (``_read_body``), its bytes taken from ``budget`` by ``reader`` as they
        arrive; then the connection is not read from until the answer is sent. A
        RequestError if reading takes more than the read timeout: 408, or 503 where the
        reader was waiting for budget (the server is busy, not the client slow)."""
        try:
            body = await _unless(self.stopping, _read_body(
                request, limit, lambda n: budget.take(reader, n)), self.read_timeout_s)
        except _Stopped:
            raise RequestError(STOPPING, 503) from None
        except asyncio.TimeoutError:
            if reader in budget.waiting:
                raise RequestError(f"{BUSY}: no request body budget freed within "
                                   f"{self.read_timeout_s:g} s", 503) from None
            raise RequestError(f"the request body did not arrive within "
                               f"{self.read_timeout_s:g} s (--read-timeout-secs)", 408) from None
        except ConnectionError:  # the client left mid-body: an answer no one will read
            raise RequestError("the connection was lost before the body arrived") from None
        budget.read(reader)
        _hold_connection(request)
        return body

    @staticmethod
    async def _off_loop_if_large(size: int, work: Callable[[], T]) -> T:
        """``work()`` on a request of ``size`` bytes: on a worker thread when larger than
        THREAD_BYTES, so that the event loop goes on serving other clients."""
        if size > THREAD_BYTES:
            return await asyncio.get_running_loop().run_in_executor(None, work)
        return work()

    async def _forward(self, request, body: bytes):
        from aiohttp import ClientError, web

        if _client_left(request):  # tritonserver would compute it for no one (it does not
            # drop an HTTP request whose client has left)
            raise RequestError("the client left before its request was forwarded")
        keep = ("Content-Type", "Inference-Header-Content-Length")
        headers = {k: request.headers[k] for k in keep if k in request.headers}
        try:
            async with self.session.request(request.method, request.rel_url, data=body or None,
                                            headers=headers) as r:
                data = await r.read()
                status, out = r.status, {k: r.headers[k] for k in keep if k in r.headers}
        except (ClientError, OSError, asyncio.TimeoutError) as exc:  # the last: Python 3.10
            raise RequestError(server_failure(request.path, repr(exc)), 503) from None
        unparsed = unparsed_request(data) if status == 500 else None
        if unparsed:
            raise RequestError(f"{request.path}: invalid request: {unparsed}")
        if status == 503 and queue_full(data):
            infer = HTTP_INFER.fullmatch(request.path)
            raise RequestError(queue_busy(infer.group(1) if infer else request.path), 503)
        if status >= 500:
            raise RequestError(server_failure(request.path, data.decode(errors="replace")), status)
        return web.Response(body=data, status=status, headers=out)

    # ------------------------------------------------------------------------- gRPC

    async def grpc_message(self, requests, context) -> bytes:
        """A call's request message, read within the read timeout (DEADLINE_EXCEEDED
        otherwise). A unary call is, on the wire, a stream of one message: read as such,
        the read can be given a deadline, which a unary handler (called once the message
        is in) cannot."""
        import grpc

        try:  # asyncio.wait_for, not asyncio.timeout: Python 3.10 is supported
            return await asyncio.wait_for(anext(requests), self.read_timeout_s)
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, (
                f"the request message did not arrive within {self.read_timeout_s:g} s "
                "(--read-timeout-secs)"))
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call sent no message")

    async def grpc_call(self, method: str, payload: bytes, context):
        import grpc
        from tritonclient.grpc import service_pb2

        name = method.removeprefix(GRPC_SERVICE)
        if not method.startswith(GRPC_SERVICE) or name not in GRPC_FORWARDED:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} is {OFF}")
        if name == "ModelInfer":
            try:
                request = await self._off_loop_if_large(
                    len(payload), lambda: _parse(service_pb2.ModelInferRequest, payload))
                if request.model_name not in self.specs:
                    raise RequestError(f"unknown model {request.model_name!r}; served: "
                                       f"{', '.join(self.specs)}", 404)
                spec, max_batch = self.specs[request.model_name]
                await self._off_loop_if_large(len(payload), lambda: check(
                    spec, lambda: grpc_arrays(spec, max_batch, request)))
            except RequestError as exc:
                code = grpc.StatusCode.NOT_FOUND if exc.status == 404 else \
                    grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(code, str(exc))
        call = self.channel.unary_unary(method)
        try:
            return await call(payload)
        except grpc.aio.AioRpcError as exc:
            if name == "ModelInfer" and queue_full((exc.details() or "").encode()):
                await context.abort(grpc.StatusCode.UNAVAILABLE, queue_busy(request.model_name))
            if exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                              grpc.StatusCode.UNAVAILABLE):
                await context.abort(exc.code(), server_failure(name, exc.details() or ""))
            await context.abort(exc.code(), exc.details() or exc.code().name)


class _GrpcHandler:
    """grpc generic handler: every method goes to ``Front.grpc_call`` as raw bytes, its
    message read by ``Front.grpc_message``."""

    def __init__(self, front: Front):
        self.front = front

    def service(self, details):
        import grpc

        async def call(requests, context):
            clients = self.front.clients
            client = _address(context.peer())
            if not clients.enter(client):  # at once: its call slot is free again
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    CLIENT_BUSY.format(clients.most, client))
            try:
                payload = await self.front.grpc_message(requests, context)
                return await self.front.grpc_call(details.method, payload, context)
            finally:
                clients.leave(client)
        return grpc.stream_unary_rpc_method_handler(call)


def _address(peer: str) -> str:
    """The client address of a gRPC peer ("ipv4:127.0.0.1:PORT", "ipv6:[::1]:PORT"), as
    aiohttp gives an HTTP client's ("127.0.0.1", "::1"): one address, one share."""
    kind, _, rest = peer.partition(":")
    return rest.rpartition(":")[0].strip("[]") if kind in ("ipv4", "ipv6") else peer


class _ClientErrors(logging.Filter):
    """Drops aiohttp's log record of a malformed request (too many header fields, a line
    too long: an HttpProcessingError, its traceback at ERROR): its client gets the 400,
    and a client could otherwise fill the server's log at will."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


HTTP_LOG.addFilter(_ClientErrors())


def connection_cap() -> int:
    """MAX_CONNECTIONS, or fewer where this process's descriptors would not hold them
    beside FD_RESERVE others (gRPC's, tritonserver's sockets, files): the soft limit is
    raised to the hard one first. Past the descriptors, asyncio's accept fails in a loop,
    logging each failure, and the cap never takes effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CONNECTIONS + GRPC_CONNECTIONS + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(
        1, min(MAX_CONNECTIONS, soft - GRPC_CONNECTIONS - FD_RESERVE))


def _cap_connections(server, most: int, clients: _Clients) -> None:
    """Close each connection to aiohttp's ``server`` that opens while ``most`` are open, or
    while its client address holds as many as ``clients`` lets one (else one client's idle
    connections would shut every other out): each holds memory (its buffers, a header
    being read) and a file descriptor. Logged once a minute at most (a client could
    otherwise fill the log)."""
    made, lost = server.connection_made, server.connection_lost
    closed = {"count": 0, "logged": -math.inf}
    counted: dict = {}  # handler -> its client address, for the connections let in

    def connection_lost(handler, exc=None) -> None:
        if handler in counted:
            clients.leave(counted.pop(handler))
        lost(handler, exc)

    def connection_made(handler, transport) -> None:
        made(handler, transport)
        peer = transport.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else peer
        if len(server.connections) <= most and clients.enter(client):
            counted[handler] = client
        else:  # once aiohttp's handler has started: aborted before, it failed an assertion
            # (a traceback logged per connection, 119 MB in 40 s from one address)
            asyncio.get_running_loop().call_soon(transport.abort)
            closed["count"] += 1
            now = time.monotonic()
            if now - closed["logged"] >= 60:
                LOG.warning("%d HTTP connections open (or %d of one client address): %d "
                            "more closed as they opened since the last such line", most,
                            clients.most, closed["count"])
                closed.update(count=0, logged=now)
    server.connection_made, server.connection_lost = connection_made, connection_lost


def _client_left(request) -> bool:
    """Whether ``request``'s client has closed its connection: looked at in the socket
    (the front does not read a connection while its request is served, so the event loop
    does not see the close), by a poll of its descriptor for the peer's hang-up (Linux's
    POLLRDHUP; elsewhere only a reset or a full hang-up). A client that shut down only its
    sending side counts as gone too (HTTP/1.1 clients keep both sides open)."""
    transport = request.transport
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return transport is None or transport.is_closing()
    gone = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | gone)
    return any(events & gone for _, events in poller.poll(0))


class _Stopped(Exception):
    """The front began to close while a read waited (``_unless``)."""


async def _unless(stopping: asyncio.Event, awaitable, timeout: float):
    """``awaitable``'s result within ``timeout`` (asyncio.TimeoutError past it), or
    _Stopped once ``stopping`` is set; ``awaitable`` is cancelled either way."""
    work = asyncio.ensure_future(awaitable)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        done, _ = await asyncio.wait({work, stop}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not work.done():
            work.cancel()
    if work in done:
        return work.result()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await work  # its cancellation (a budget wait, a socket read) done before going on
    raise _Stopped() if stop in done else asyncio.TimeoutError()


def _hold_connection(request) -> None:
    """Stop reading ``request``'s connection (its body is in) until ``_release_connection``:
    bytes a client sends after its request then wait in the kernel's socket buffer, which
    is bounded, not in aiohttp's queue of parsed messages (up to 32 per connection, each
    holding the bytes it was parsed from)."""
    if request.transport is not None:
        request.transport.pause_reading()


def _release_connection(request) -> None:
    """Read the connection again, unless aiohttp holds it paused itself (its message queue
    or a body's buffer full: it resumes reading as it drains them)."""
    protocol, transport = request.protocol, request.transport
    if transport is not None and not (getattr(protocol, "_buffer_paused", False)
                                      or getattr(protocol, "_reading_paused", False)):
        transport.resume_reading()


def _parse(message_class, payload: bytes):
    """``payload`` as a protobuf message, or a RequestError."""
    from google.protobuf.message import DecodeError

    try:
        return message_class.FromString(payload)
    except DecodeError:
        raise RequestError(f"the message is not a {message_class.__name__}") from None


class _Clients:
    """How many of something (requests in hand, connections) each client address holds, on
    the event loop; ``enter`` refuses one past ``most`` (0: no limit: a front behind a
    proxy sees every client at the proxy's address)."""

    def __init__(self, most: int):
        self.most, self.held = most, collections.Counter()

    def enter(self, client) -> bool:
        if self.most and self.held[client] >= self.most:
            return False
        self.held[client] += 1
        return True

    def leave(self, client) -> None:
        self.held[client] -= 1
        if self.held[client] <= 0:
            del self.held[client]


class _Budget:
    """Bytes that body readers take as their bodies arrive, waiting while too few are free,
    and give back when their request is done; on the event loop. One reader at a time may
    overdraw (by at most its body): the first to find the budget short, until its body is
    in (``read``), while less than the budget's size is overdrawn. Readers each holding part
    of the budget and waiting for more would otherwise wait for one another until their
    deadlines (a burst of large bodies would all end in 408); the right goes to a reader
    with bytes in hand, never to a connection that sends nothing, and passes on when its
    body is in, not when its answer is sent (one request at a time would reach
    tritonserver). In use at most: twice the size and one body. At most ``max_waiting``
    readers wait (each holds the chunk it could not yet take); more are refused (503)."""

    def __init__(self, size: int, max_waiting: int):
        self.size, self.max_waiting = size, max_waiting
        self.free, self.given = size, asyncio.Event()
        self.readers: dict[int, int] = {}  # each reader's bytes taken
        self.waiting: set[int] = set()  # readers waiting (or that timed out waiting)
        self.tickets = itertools.count()
        self.overdrawing: int | None = None  # the reader that may overdraw

    def enter(self) -> int:
        """A new reader's ticket."""
        ticket = next(self.tickets)
        self.readers[ticket] = 0
        return ticket

    async def take(self, ticket: int, n: int) -> None:
        while self.free < n:
            if self.overdrawing is None and self.free - n >= -self.size:
                self.overdrawing = ticket
            if self.overdrawing == ticket:
                break
            if ticket not in self.waiting and len(self.waiting) >= self.max_waiting:
                raise RequestError(f"{BUSY}: {self.max_waiting} request bodies already wait "
                                   f"for budget", 503)
            self.waiting.add(ticket)
            self.given.clear()
            await self.given.wait()
        self.waiting.discard(ticket)
        self.free -= n
        self.readers[ticket] += n

    def read(self, ticket: int) -> None:
        """The reader's body is in: it keeps its bytes, not the right to overdraw."""
        if self.overdrawing == ticket:
            self.overdrawing = None
            self.given.set()

    def leave(self, ticket: int) -> None:
        self.waiting.discard(ticket)
        self.free += self.readers.pop(ticket)
        if self.overdrawing == ticket:
            self.overdrawing = None
        self.given.set()


async def _read_body(request, limit: int, take: Callable[[int], Awaitable[None]]) -> bytes:
    """The request body, each chunk's size passed to ``take`` once received; refused with
    413 when its declared or actual length passes ``limit`` (nothing past it is read)."""
    too_big = RequestError(f"request body larger than {limit} bytes, the limit for --max-batch "
                           f"rows of the largest model", 413)
    if request.content_length is not None and request.content_length > limit:
        raise too_big
    chunks, size = [], 0
    while chunk := await request.content.read(min(READ_CHUNK, limit + 1 - size)):
        size += len(chunk)
        if size > limit:
            raise too_big
        await take(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)
