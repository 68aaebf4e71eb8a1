"""Run `bridgegan serve` as a child process on free loopback ports and wait until its
models are ready (tests, the load benchmark)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .models import MODELS


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


class ServerProcess:
    """``bridgegan serve ARGS`` (``--http-port`` etc. added) in a child process with
    OMP_NUM_THREADS=1 unless set; output to ``log``. A context manager: entering waits
    until every model answers ready, leaving stops it with SIGINT and then kills what is
    left of its process group (python-backend stubs that outlived the server)."""

    def __init__(self, args: list[str], log: str | os.PathLike, models=MODELS,
                 timeout: float = 180.0, env: dict | None = None):
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.args = ["serve", *args, "--http-port", str(self.http_port), "--grpc-port",
                     str(self.grpc_port), "--metrics-port", str(self.metrics_port)]
        self.log, self.models, self.timeout = Path(log), models, timeout
        self.env = {"OMP_NUM_THREADS": "1", **os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def __enter__(self) -> "ServerProcess":
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "bridgegan.cli", *self.args],
                                         stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        urls = [f"http://{self.http}/v2/health/ready"] + [
            f"http://{self.http}/v2/models/{m}/ready" for m in self.models]
        deadline = time.monotonic() + self.timeout
        while not all(_ready(u) for u in urls):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                status = self.proc.poll()
                what = (f"exited with status {status}" if status is not None
                        else f"was not ready within {self.timeout:.0f} s")
                self.__exit__()
                raise RuntimeError(f"bridgegan {' '.join(self.args)} {what}; log tail:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this object started
        except ProcessLookupError:
            pass
