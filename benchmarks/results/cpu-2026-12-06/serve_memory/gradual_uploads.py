"""16 clients uploading ~0.5 MB bodies gradually (32 KB per 20 ms) to an in-process Front whose
tritonserver (fake) takes 0.4 s per request; budget: 4 bodies. Forward times and answers."""
import http.server, json, socket, socketserver, tempfile, threading, time
from collections import Counter
from pathlib import Path
import numpy as np
from bridgegan.engine import Engine
from bridgegan.reference.checkpoint import SHIPPED
from bridgegan.serve import front as fm
from bridgegan.serve.models import model_specs
from bridgegan.serve.process import free_ports

t0 = [0.0]; times = []
class Fake(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"])); times.append(round(time.time() - t0[0], 2))
        time.sleep(0.4); data = b'{"outputs": []}'
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def log_message(self, *a): pass

folder = Path(tempfile.mkdtemp())
fake = socketserver.ThreadingUnixStreamServer(str(folder / "http.sock"), Fake); fake.daemon_threads = True
threading.Thread(target=fake.serve_forever, daemon=True).start()
cfg = Engine.from_checkpoint(SHIPPED).config
specs = {n: (s, 8) for n, s in model_specs(cfg).items()}
img = np.random.default_rng(0).uniform(-1, 1, (8, 3, 32, 32))
body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [8, 3, 32, 32], "data": img.tolist()},
                              {"name": "target", "datatype": "FP32", "shape": [8, cfg.n_attrs], "data": [[0] * cfg.n_attrs] * 8}]}).encode()
head = b"POST /v2/models/translate_label/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
with fm.Front(specs, folder / "http.sock", f"unix:{folder / 'grpc.sock'}", "127.0.0.1", free_ports(1)[0], 0, 3.0) as front:
    front.reading = fm._Budget(4 * len(body), fm.MAX_WAITING)
    codes = []
    def client():
        c = socket.create_connection((front.host, front.http_port), timeout=60); c.sendall(head)
        for k in range(0, len(body), 32768):
            c.sendall(body[k:k + 32768]); time.sleep(0.02)
        codes.append(c.recv(100)[9:12].decode()); c.close()
    th = [threading.Thread(target=client) for _ in range(16)]
    t0[0] = time.time()
    for t in th: t.start()
    for t in th: t.join()
    print(f"body {len(body)/1e3:.0f} KB; forwarded at {times}; answers {dict(Counter(codes))}; {time.time() - t0[0]:.2f} s")
