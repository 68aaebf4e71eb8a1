"""16 clients uploading ~0.5 MB bodies gradually (32 KB per 20 ms) to an in-process Front
whose tritonserver (a fake) takes 0.4 s per request; the reading budget patched to 4 bodies,
read timeout 3 s. Prints when each request was forwarded and the answers (README.md here)."""
import http.server
import json
import socket
import socketserver
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bridgegan.engine import Engine
from bridgegan.reference.checkpoint import SHIPPED
from bridgegan.serve import front as fm
from bridgegan.serve.models import model_specs
from bridgegan.serve.process import free_ports

START, FORWARDED = [0.0], []


class Fake(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        FORWARDED.append(round(time.time() - START[0], 2))
        time.sleep(0.4)
        data = b'{"outputs": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


folder = Path(tempfile.mkdtemp())
fake = socketserver.ThreadingUnixStreamServer(str(folder / "http.sock"), Fake)
fake.daemon_threads = True
threading.Thread(target=fake.serve_forever, daemon=True).start()
cfg = Engine.from_checkpoint(SHIPPED).config
specs = {name: (spec, 8) for name, spec in model_specs(cfg).items()}
image = np.random.default_rng(0).uniform(-1, 1, (8, 3, 32, 32))
body = json.dumps({"inputs": [
    {"name": "image", "datatype": "FP32", "shape": [8, 3, 32, 32], "data": image.tolist()},
    {"name": "target", "datatype": "FP32", "shape": [8, cfg.n_attrs],
     "data": [[0] * cfg.n_attrs] * 8}]}).encode()
head = (b"POST /v2/models/translate_label/infer HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body))
with fm.Front(specs, folder / "http.sock", f"unix:{folder / 'grpc.sock'}", "127.0.0.1",
              free_ports(1)[0], 0, 3.0) as front:
    front.reading = fm.Budget(4 * len(body), fm.MAX_WAITING)
    codes = []

    def client():
        sock = socket.create_connection((front.host, front.http_port), timeout=60)
        sock.sendall(head)
        for k in range(0, len(body), 32768):
            sock.sendall(body[k:k + 32768])
            time.sleep(0.02)
        codes.append(sock.recv(100)[9:12].decode())
        sock.close()

    threads = [threading.Thread(target=client) for _ in range(16)]
    START[0] = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"body {len(body) / 1e3:.0f} KB; forwarded at {FORWARDED}; answers "
          f"{dict(Counter(codes))}; {time.time() - START[0]:.2f} s")
