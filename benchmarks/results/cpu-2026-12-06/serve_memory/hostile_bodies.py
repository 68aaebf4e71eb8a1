"""Front RSS growth under bursts of N clients each posting a 1.26 MB JSON body that is
refused once decoded (README.md here). Usage: hostile_bodies.py LOG N [N ...]"""
import json
import re
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

import bridgegan
from bridgegan.serve.process import ServerProcess

CHECKPOINT = str(Path(bridgegan.__file__).parent / "assets/default")


def rss_mib(server) -> float:
    return int(Path(f"/proc/{server.proc.pid}/statm").read_text().split()[1]) * 4096 / 2**20


def burst(server, n: int) -> str:
    rows = 8
    image = np.random.default_rng(0).uniform(-1, 1, (rows, 3, 32, 32))
    image[-1, -1, -1, -1] = 5.0  # out of range: refused once the whole body is decoded
    body = json.dumps({"inputs": [
        {"name": name, "datatype": "FP32", "shape": [rows, 3, 32, 32], "data": image.tolist()}
        for name in ("image", "reference")]}).encode()
    body = re.sub(rb"-?\d\.\d+(e-?\d+)?", lambda m: b"%.17e" % float(m.group()), body)
    request = (b"POST /v2/models/translate_reference/infer HTTP/1.1\r\nHost: x\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    answers = []

    def client():
        try:
            sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=300)
            sock.sendall(request)
            answers.append(sock.recv(100)[9:12].decode() or "closed")
            sock.close()
        except OSError as exc:
            answers.append(type(exc).__name__)

    base, peak = rss_mib(server), 0.0
    threads = [threading.Thread(target=client) for _ in range(n)]
    t0 = time.time()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mib(server))
        time.sleep(0.05)
    return (f"{n} bodies of {len(body) / 1e6:.2f} MB: front RSS +{peak - base:.0f} MB, "
            f"{time.time() - t0:.1f} s, answers {dict(Counter(answers))}")


with ServerProcess(["--checkpoint", CHECKPOINT, "--max-batch", "8"], sys.argv[1]) as server:
    for n in map(int, sys.argv[2:]):
        print(burst(server, n), flush=True)
