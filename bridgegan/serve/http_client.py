"""A minimal HTTP client for the server's own checks: GET over TCP or over a unix socket
(tritonserver's private one), and waiting until a server's models are ready."""
from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time


def wait_ready(address: str | os.PathLike, models, proc: subprocess.Popen,
               timeout: float = 180.0) -> None:
    """Wait until the server at ``address`` (see ``http_get``) and each of ``models``
    answer ready; a RuntimeError if ``proc`` exits or ``timeout`` s pass first."""
    paths = ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in models]
    deadline = time.monotonic() + timeout
    while not all(_ready(address, p) for p in paths):
        status = proc.poll()
        if status is not None or time.monotonic() > deadline:
            raise RuntimeError(f"exited with status {status}" if status is not None
                               else f"was not ready within {timeout:.0f} s")
        time.sleep(0.5)


def _ready(address: str | os.PathLike, path: str) -> bool:
    try:
        return http_get(address, path, timeout=2)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the unix socket at ``socket_path``."""

    def __init__(self, socket_path: os.PathLike, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = os.fspath(socket_path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def http_get(address: str | os.PathLike, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of GET ``path`` at ``address``: "host:port" over TCP, or the path of
    a unix socket (an os.PathLike, e.g. tritonserver's private socket)."""
    conn = (http.client.HTTPConnection(address, timeout=timeout) if isinstance(address, str)
            else _UnixConnection(address, timeout))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
