"""Run `bridgegan serve` as a child process on free loopback ports (tests, the load
benchmark)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .http_client import wait_ready
from .names import HOST, MODELS, host_port


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


class ServerProcess:
    """``bridgegan serve ARGS`` (``--host``, ``--http-port`` etc. added) in a child process
    with OMP_NUM_THREADS=1 unless set; output to ``log``. A context manager: entering waits
    until every model answers ready, leaving stops it with SIGINT and then kills what is
    left of its process group (python-backend stubs that outlived the server)."""

    def __init__(self, args: list[str], log: str | os.PathLike, host: str = HOST):
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.args = ["serve", *args, "--host", host, "--http-port", str(self.http_port),
                     "--grpc-port", str(self.grpc_port), "--metrics-port",
                     str(self.metrics_port)]
        self.log = Path(log)
        self.env = {"OMP_NUM_THREADS": "1", **os.environ}
        self.proc: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return host_port(self.host, self.http_port)

    @property
    def grpc(self) -> str:
        return host_port(self.host, self.grpc_port)

    def pids(self) -> list[int]:
        """The processes of the server's session (it, tritonserver, the python stubs)."""
        out = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if self.proc is not None and int(fields[3]) == self.proc.pid:  # session id
                out.append(int(stat.parent.name))
        return out

    def rss(self) -> int:
        """Resident memory of the server's process tree now, in bytes."""
        total = 0
        for pid in self.pids():
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            except OSError:
                continue
        return total * os.sysconf("SC_PAGE_SIZE")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def __enter__(self) -> "ServerProcess":
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "bridgegan.cli", *self.args],
                                         stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        try:
            wait_ready(self.http, MODELS, self.proc)
        except RuntimeError as exc:
            self.__exit__()
            raise RuntimeError(f"bridgegan {' '.join(self.args)} {exc}; log tail:\n"
                               f"{self.log_tail()}") from None
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
