"""Front RSS growth under bursts of N clients each posting a 1.26 MB JSON body that is
refused once decoded (README.md here). Usage: hostile_bodies.py LOG N [N ...]"""
import json, re, socket, sys, threading, time
from pathlib import Path
import numpy as np
import bridgegan
from bridgegan.serve.process import ServerProcess

CKPT = str(Path(bridgegan.__file__).parent / "assets/default")
LOG = sys.argv[1]

def rss(s):
    return int(Path(f"/proc/{s.proc.pid}/statm").read_text().split()[1]) * 4096 / 2**20

def bodies_held(n):
    B = 8
    img = np.random.default_rng(0).uniform(-1, 1, (B, 3, 32, 32)); img[-1, -1, -1, -1] = 5.0
    body = json.dumps({"inputs": [{"name": k, "datatype": "FP32", "shape": [B, 3, 32, 32],
                                   "data": img.tolist()} for k in ("image", "reference")]}).encode()
    body = re.sub(rb"-?\d\.\d+(e-?\d+)?", lambda m: b"%.17e" % float(m.group()), body)
    req = (b"POST /v2/models/translate_reference/infer HTTP/1.1\r\nHost: x\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body) + body)
    codes = []
    def one():
        try:
            c = socket.create_connection(("127.0.0.1", s.http_port), timeout=300)
            c.sendall(req); codes.append(c.recv(100)[9:12] or b"closed"); c.close()
        except OSError as exc:
            codes.append(type(exc).__name__.encode())
    base, peak = rss(s), 0
    th = [threading.Thread(target=one) for _ in range(n)]
    t0 = time.time()
    for t in th: t.start()
    while any(t.is_alive() for t in th):
        peak = max(peak, rss(s)); time.sleep(0.05)
    from collections import Counter
    return f"{n} bodies of {len(body)/1e6:.2f} MB: front RSS +{peak - base:.0f} MB, {time.time()-t0:.1f} s, answers {dict(Counter(c.decode() for c in codes))}"

with ServerProcess(["--checkpoint", CKPT, "--max-batch", "8"], LOG) as s:
    for n in map(int, sys.argv[2:]):
        print(bodies_held(n), flush=True)
