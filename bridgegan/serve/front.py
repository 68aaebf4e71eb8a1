"""The front that clients talk to: HTTP and gRPC on the public ports, tritonserver behind it
on private unix sockets (``server``).

Tritonserver 2.51 has no request size limits and, for an HTTP JSON request, allocates the
size its shapes declare before checking them against the model. So the front checks each
request on its own before it reaches tritonserver (``request_checks``: its size, count,
JSON, declarations and values) and bounds what clients hold (``client_limits``: connections,
the bytes of bodies being read, requests in hand per client address), and:

- size: an HTTP body or gRPC message larger than ``--max-batch`` rows of the largest model
  (binary: each value's size, JSON: ``JSON_BYTES_PER_VALUE``; a binary request's JSON part
  may carry some inputs' data, up to a JSON request's size) is refused from its declared
  length (HTTP 413, gRPC RESOURCE_EXHAUSTED) before it is read;
- time: a client has ``--read-timeout-secs`` to send a request's header (else the
  connection is closed; also how long an idle connection stays open) and as long again
  for its body (else HTTP 408, or 503 where it waited for the body budget); a gRPC call's
  request message must arrive within the read timeout too (else DEADLINE_EXCEEDED: the
  front reads each call as a stream of one message, as it is on the wire, so that the
  read can have a deadline), and no more gRPC calls are taken at once than HTTP's byte
  budget holds of the largest message (``client_limits``; others get
  RESOURCE_EXHAUSTED); answers too have a deadline: an HTTP response the
  client has not taken within the read timeout ends its connection (reset), and every
  gRPC connection is ended (GOAWAY) after the read timeout, its calls in flight given as
  long again (a call whose answer the client takes no HTTP/2 window for would keep its
  slot for good: grpc's Python API cannot end one call); clients reconnect by themselves;
- one client address: its requests in hand (``--max-client-requests``) count HTTP and
  gRPC together, from their start to their answer (one more is refused at once: HTTP 503,
  gRPC RESOURCE_EXHAUSTED, freeing its call slot);
- headers: ``MAX_HEADERS`` header fields of ``HEADER_LINE`` bytes a request, and a
  malformed request's traceback is not logged (``_ClientErrors``); an inference body
  needs a Content-Length (411: a chunked body is parsed chunk by chunk), and a compressed
  one is refused (415) without being inflated; a refused body still arriving is read for
  ``LINGER_S`` only;
- busy: a 503 (no budget, tritonserver's model queue full) carries Retry-After; a request
  whose client has left by the time it was checked is not forwarded (tritonserver would
  compute an HTTP request whose client has gone).

Bodies larger than ``THREAD_BYTES`` are parsed (gRPC), decoded and checked on a worker
thread, so that they do not hold up the event loop's other clients. An invalid request
gets its own error (HTTP 400 / gRPC INVALID_ARGUMENT) and never reaches tritonserver, so
the valid requests it would have been batched with run; tritonserver's 500 for a JSON
field it cannot parse or set ("id", "outputs", a parameter, an output's
"classification") reaches the client as the 400 it is. Only inference, health, metadata,
model configuration and statistics are forwarded: logging, trace, shared memory and model
control are off. A server-side failure reaches the client as one line without traceback
or paths; the log keeps the detail.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

from .client_limits import (BUSY, CLIENT_BUSY, CLIENT_CONNECTIONS, GRPC_CONNECTIONS,
                            HANDSHAKE_MS, MAX_GRPC_CALLS, MAX_READING, MAX_WAITING,
                            READING_BYTES, Budget, Clients, cap_connections, client_address,
                            connection_cap, hold_connection, read_body, release_connection)
from .models import ModelSpec
from .names import CLIENT_REQUESTS, host_port
from .request_checks import (HEADER_BYTES, JSON_BYTES_PER_VALUE, RequestError, binary_limit,
                             check, grpc_arrays, http_arrays, parse_message, row_values)

LOG = logging.getLogger("bridgegan.serve")
HTTP_LOG = logging.getLogger("bridgegan.serve.http")  # aiohttp's server, filtered: _ClientErrors
T = TypeVar("T")
MAX_HEADERS = 32  # header fields of an HTTP request, each line at most HEADER_LINE bytes
HEADER_LINE = 4096  # (aiohttp's defaults, 128 fields of 8 KiB, let a connection that never
# ends its header hold 1.8 MB, 0.5 MB at 32 such fields; Triton's clients send < 10 short ones)
LINGER_S = 1.0  # how long a refused body still arriving is read (and discarded) after the
# answer, so that its client gets the answer, not a reset (aiohttp's default: 10 s)
RETRY_AFTER_S = 1  # Retry-After of a 503: busy, or tritonserver's queue full
CLOSE_S = 1.0  # on close, how long aiohttp waits for its handlers once ours are done
STOPPING = "the server is shutting down; try again later"
THREAD_BYTES = 1 << 20  # bodies larger than this are parsed and checked on a worker thread
# how tritonserver's 500 on a malformed JSON field begins ("set": an output's parameter)
TRITON_UNPARSED = ("Unable to parse '", "Unable to set '")
GRPC_SERVICE = "/inference.GRPCInferenceService/"
GRPC_FORWARDED = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
                  "ModelConfig", "ModelStatistics", "ModelInfer")
HTTP_FORWARDED_GET = re.compile(
    r"/v2(/health/(live|ready)|/models/[\w.-]+(/versions/\d+)?(/ready|/config|/stats)?)?")
HTTP_INFER = re.compile(r"/v2/models/([\w.-]+)(/versions/\d+)?/infer")
OFF = ("not served: this server answers inference, health, metadata, model configuration and "
       "statistics; logging, trace, shared memory and model control are off")


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
        self.clients = Clients(client_requests)  # requests in hand per client address
        self.host, self.http_port, self.grpc_port = host, http_port, grpc_port
        self.read_timeout_s, self.grace_s = read_timeout_s, grace_s
        self.max_batch = max(b for _, b in specs.values())
        self.binary_limit = binary_limit(specs)
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
        self.reading = Budget(self.reading_bytes, MAX_WAITING)
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
        cap_connections(self.runner.server, connection_cap(),
                         Clients(CLIENT_CONNECTIONS * self.clients.most))
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
        self.grpc_port = self.grpc.add_insecure_port(host_port(self.host, self.grpc_port))
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
                    hold_connection(request)
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
            release_connection(request)  # for the next request on it

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

    async def _http_infer(self, request, model: str, budget: Budget, reader: int):
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

    async def _read(self, request, limit: int, budget: Budget, reader: int) -> bytes:
        """The body (``read_body``), its bytes taken from ``budget`` by ``reader`` as they
        arrive; then the connection is not read from until the answer is sent. A
        RequestError if reading takes more than the read timeout: 408, or 503 where the
        reader was waiting for budget (the server is busy, not the client slow)."""
        try:
            body = await _unless(self.stopping, read_body(
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
        hold_connection(request)
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
                    len(payload), lambda: parse_message(service_pb2.ModelInferRequest, payload))
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
            client = client_address(context.peer())
            if not clients.enter(client):  # at once: its call slot is free again
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    CLIENT_BUSY.format(clients.most, client))
            try:
                payload = await self.front.grpc_message(requests, context)
                return await self.front.grpc_call(details.method, payload, context)
            finally:
                clients.leave(client)
        return grpc.stream_unary_rpc_method_handler(call)


class _ClientErrors(logging.Filter):
    """Drops aiohttp's log record of a malformed request (too many header fields, a line
    too long: an HttpProcessingError, its traceback at ERROR): its client gets the 400,
    and a client could otherwise fill the server's log at will."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


HTTP_LOG.addFilter(_ClientErrors())


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


