"""What one client, and all of them together, may hold at the front (``front``):
connections, the bytes of request bodies being read, requests in hand per client
address. Each bound is one a client could otherwise take for good:

- connections: at most ``MAX_CONNECTIONS`` HTTP connections (fewer where the process's
  descriptors would not hold them beside GRPC_CONNECTIONS gRPC connections, each given
  HANDSHAKE_MS to begin HTTP/2: ``connection_cap``; one more is closed as it opens), and
  CLIENT_CONNECTIONS per request one client address may have in hand (``cap_connections``);
- gRPC calls: at most ``MAX_GRPC_CALLS`` taken at once (grpc buffers a call's message
  before the handler sees it: only a bound on calls bounds that memory);
- memory: HTTP requests hold ``MAX_READING`` bodies of the largest size at once (at most
  ``READING_BYTES``, two bodies at least), counted in the bytes received, from the first
  until the answer is sent (``Budget``: a client that sends nothing holds nothing; one
  reader at a time may go a body over); others wait within their read deadline, at most
  ``MAX_WAITING`` of them, each holding a chunk it has received (``read_body``); a
  connection is not read from while its request is served (``hold_connection``);
- one client address: at most ``--max-client-requests`` requests in hand (``Clients``;
  0: no limit, for a front behind a proxy, where every client has the proxy's address).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import resource
import time
from collections.abc import Awaitable, Callable

from .request_checks import RequestError

LOG = logging.getLogger("bridgegan.serve")
MAX_CONNECTIONS = 1024  # HTTP connections open at once; one more is closed as it opens
GRPC_CONNECTIONS = 256  # gRPC connections open at once (grpc refuses more)
HANDSHAKE_MS = 5000  # a gRPC connection's time to begin HTTP/2 (grpc's default: 120 s)
FD_RESERVE = 256  # descriptors kept for all else (``connection_cap``)
CLIENT_CONNECTIONS = 4  # HTTP connections one client address may hold per request in hand
MAX_READING = 32  # largest request bodies held at once (read, checked, forwarded, answered)
READING_BYTES = 1 << 30  # but no more bytes than this where they are larger (two at least)
MAX_WAITING = 4 * MAX_READING  # readers waiting for budget, each holding up to READ_CHUNK
READ_CHUNK = 1 << 18  # bytes read from a body at once (asyncio reads 256 KiB per call)
MAX_GRPC_CALLS = 4 * MAX_READING  # gRPC calls taken at once, read or in flight
BUSY = "the server is busy with other requests' bodies; try again later"
CLIENT_BUSY = ("{} requests of client address {} are in hand, the most one address may "
               "have at once (serve --max-client-requests); try again when one is answered")


def client_address(peer: str) -> str:
    """The client address of a gRPC peer ("ipv4:127.0.0.1:PORT", "ipv6:[::1]:PORT"), as
    aiohttp gives an HTTP client's ("127.0.0.1", "::1"): one address, one share."""
    kind, _, rest = peer.partition(":")
    return rest.rpartition(":")[0].strip("[]") if kind in ("ipv4", "ipv6") else peer


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


def cap_connections(server, most: int, clients: Clients) -> None:
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


def hold_connection(request) -> None:
    """Stop reading ``request``'s connection (its body is in) until ``release_connection``:
    bytes a client sends after its request then wait in the kernel's socket buffer, which
    is bounded, not in aiohttp's queue of parsed messages (up to 32 per connection, each
    holding the bytes it was parsed from)."""
    if request.transport is not None:
        request.transport.pause_reading()


def release_connection(request) -> None:
    """Read the connection again, unless aiohttp holds it paused itself (its message queue
    or a body's buffer full: it resumes reading as it drains them)."""
    protocol, transport = request.protocol, request.transport
    if transport is not None and not (getattr(protocol, "_buffer_paused", False)
                                      or getattr(protocol, "_reading_paused", False)):
        transport.resume_reading()


class Clients:
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


class Budget:
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


async def read_body(request, limit: int, take: Callable[[int], Awaitable[None]]) -> bytes:
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
