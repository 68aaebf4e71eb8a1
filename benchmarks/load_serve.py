"""Bounded load test of `bridgegan serve`: requests per second, p20 / p50 / p80 / p99
latency, errors, and the batch sizes the server formed.

    python benchmarks/load_serve.py [--checkpoint CKPT | --resolution 128] \\
        [--model translate_label] [--protocol http|grpc] [--concurrency 8] \\
        [--requests 400] [--duration 30] [--max-queue-delay-us 2000] [--json out.json]
    python benchmarks/load_serve.py --url 127.0.0.1:8000 ...   # a server already running

Without --url it starts `bridgegan serve` on free loopback ports (OMP_NUM_THREADS=1 unless
set) with the checkpoint, or seeded weights of the preset configuration, and stops it
afterwards. Each of --concurrency client threads sends single-image requests (its own
client, random inputs: images in [-1, 1], 0/1 labels, N(0, 1) noise; optional inputs
omitted) until --requests have been sent or --duration seconds have passed, whichever
comes first. That is a closed loop: a thread sends its next request only when the last one
is answered, so while the server stalls no request is sent and the stall is counted once
(coordinated omission); its p50 / p99 are latencies at the rate the server let the clients
reach. --rate R instead sends on an open-loop schedule, request k due at k / R seconds
(spread over the threads), and a request's latency counts from when it was due: the time
it waited for a free thread is queueing a user arriving at R per second would see
(p50_service_ms / p99_service_ms: from the actual send). With --hostile F, that share of the
client threads sends invalid requests instead, cycling through HOSTILE_KINDS (NaN image,
wrong shape, an oversize declaration, garbage bytes): each must be refused with its own
error while the valid requests are served. Before the measured load, --warmup valid requests
(default 2 per client thread) go to the server, started here or given by --url, and are not
counted: the first calls at a batch size compile, capture or search what they need. The JSON
names the client's machine (``client_machine``; the server's too, ``server_machine``, when
this script started it on the same machine, with its backend, dtype, device and
resolution), the date, this checkout's commit and the torch / triton versions, and --json
is written atomically.
Without --url the server's peak memory (RSS of its process tree, sampled every 50 ms) is
reported. Only loopback / the given address is contacted. Needs bridgegan[serve].
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from bridgegan.engine.export.names import MAX_BATCH
from bridgegan.files import write_file_atomic
from bridgegan.reference.presets import PRESET_RESOLUTIONS
from bridgegan.serve.names import MODELS

HOSTILE_KINDS = ("nan", "shape", "oversize", "garbage")
OVERSIZE = [16, 3, 8192, 8192]  # declared, not sent: 12.9 GB as float32

def model_inputs(http: str, model: str) -> list[dict]:
    """The required inputs of ``model`` from the server's model configuration."""
    with urllib.request.urlopen(f"http://{http}/v2/models/{model}/config", timeout=10) as r:
        config = json.load(r)
    return [p for p in config["input"] if not p.get("optional")]


def stats(http: str, model: str) -> tuple[int, int]:
    """(inference count, execution count) of ``model`` so far."""
    with urllib.request.urlopen(f"http://{http}/v2/models/{model}/stats", timeout=10) as r:
        s = json.load(r)["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


def random_inputs(ports: list[dict], rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for p in ports:
        shape = (rows, *map(int, p["dims"]))
        if p["data_type"] == "TYPE_BOOL":
            out[p["name"]] = rng.random(shape) < 0.5
        elif len(shape) == 4:  # an image
            out[p["name"]] = rng.uniform(-1, 1, shape).astype(np.float32)
        elif p["name"] in ("target", "source"):
            out[p["name"]] = rng.integers(0, 2, shape).astype(np.float32)
        else:
            out[p["name"]] = rng.standard_normal(shape).astype(np.float32)
    return out


def infer_inputs(mod, arrays: dict[str, np.ndarray]) -> list:
    """tritonclient InferInputs (module ``mod``: http or grpc) holding ``arrays``."""
    inputs = []
    for name, a in arrays.items():
        dtype = "BOOL" if a.dtype == np.bool_ else "FP32"
        inputs.append(mod.InferInput(name, list(a.shape), dtype))
        inputs[-1].set_data_from_numpy(a)
    return inputs


def send_hostile(kind: str, client, mod, url: str, model: str, ports: list[dict],
                 rng: np.random.Generator) -> str:
    """Send one invalid request of ``kind`` (HOSTILE_KINDS); the error it got, or
    "accepted" if the server answered it with a result."""
    arrays = random_inputs(ports, 1, rng)
    if kind in ("nan", "shape"):
        arrays["image"] = (np.full_like(arrays["image"], np.nan) if kind == "nan"
                           else arrays["image"][..., :-1, :-1].copy())
        try:
            client.infer(model, infer_inputs(mod, arrays))
            return "accepted"
        except Exception as exc:
            return str(exc)
    body = rng.bytes(200)
    if kind == "oversize":
        body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": OVERSIZE,
                                       "data": [0.0]}]}).encode()
    if mod.__name__.endswith("http"):
        request = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", data=body)
        try:
            with urllib.request.urlopen(request, timeout=60):
                return "accepted"
        except urllib.error.HTTPError as exc:
            return f"[{exc.code}] {exc.read().decode(errors='replace')}"
        except OSError as exc:
            return str(exc)
    import grpc
    from tritonclient.grpc import service_pb2

    if kind == "oversize":
        request = service_pb2.ModelInferRequest(model_name=model, raw_input_contents=[b"\0" * 4])
        request.inputs.add(name="image", datatype="FP32", shape=OVERSIZE)
        body = request.SerializeToString()
    with grpc.insecure_channel(url) as channel:
        try:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(body, timeout=60)
            return "accepted"
        except grpc.RpcError as exc:
            return f"[{exc.code().name}] {exc.details()}"


def run_load(http: str, grpc: str, model: str = MODELS[0], protocol: str = "http",
             concurrency: int = 8, max_requests: int = 400, duration: float = 30.0,
             rows: int = 1, seed: int = 0, hostile: float = 0.0,
             rate: float | None = None) -> dict:
    """Send the bounded load (``hostile``: the share of client threads sending invalid
    requests; ``rate``: valid requests per second on an open-loop schedule, None: closed
    loop); returns the counts, rates, latency percentiles of the valid requests (open
    loop: from each request's due time, so waiting for a free thread counts) and the
    invalid requests' outcomes by kind."""
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 requests per second, got {rate!r}")
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    mod, url = (httpclient, http) if protocol == "http" else (grpcclient, grpc)
    ports = model_inputs(http, model)
    before = stats(http, model)
    latencies: list[float] = []  # from the due time (open loop) or the send (closed)
    service: list[float] = []  # from the send
    errors: list[str] = []
    refused = {kind: [] for kind in HOSTILE_KINDS}
    lock = threading.Lock()
    sent = [0]
    last_valid = [None]  # when the last valid request was answered
    n_hostile = round(concurrency * hostile)

    def valid(client, rng, due: float | None) -> None:
        inputs = infer_inputs(mod, random_inputs(ports, rows, rng))
        t0 = time.perf_counter()
        try:
            client.infer(model, inputs)
            ok = True
        except Exception as exc:  # counted, the load goes on
            ok, msg = False, str(exc)
        t1 = time.perf_counter()
        with lock:
            last_valid[0] = t1 if last_valid[0] is None else max(last_valid[0], t1)
            if ok:
                latencies.append(t1 - (t0 if due is None else due))
                service.append(t1 - t0)
            else:
                errors.append(msg)

    def worker(k: int) -> None:
        rng = np.random.default_rng(seed + k)
        client = mod.InferenceServerClient(url)
        try:
            for i in range(sys.maxsize):
                if time.perf_counter() - start >= duration:
                    return
                if k < n_hostile:
                    kind = HOSTILE_KINDS[(i + k) % len(HOSTILE_KINDS)]
                    outcome = send_hostile(kind, client, mod, url, model, ports, rng)
                    with lock:
                        refused[kind].append(outcome)
                    continue
                with lock:
                    if sent[0] >= max_requests:
                        return
                    ticket = sent[0]
                    sent[0] += 1
                due = None
                if rate is not None:  # open loop: request ``ticket`` is due at ticket / rate
                    due = start + ticket / rate
                    if due - start >= duration:
                        return
                    time.sleep(max(0.0, due - time.perf_counter()))
                valid(client, rng, due)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    start = time.perf_counter()  # the workers read it when they run
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the valid load's span: the hostile threads go on until --duration whatever the
    # --requests bound, and their time is not the valid requests' time
    ended = time.perf_counter()
    seconds = (last_valid[0] if last_valid[0] is not None else ended) - start
    after = stats(http, model)
    done = len(latencies) + len(errors)
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    service_ms = np.array(service) * 1e3 if service else np.array([np.nan])
    executions = after[1] - before[1]
    hostile_out = {kind: {"sent": len(v), "accepted": v.count("accepted"),
                          "first_error": next((e for e in v if e != "accepted"), None)}
                   for kind, v in refused.items() if v}
    return {"model": model, "protocol": protocol, "concurrency": concurrency, "rows": rows,
            "loop": "closed" if rate is None else f"open, {rate:g} requests/s",
            "hostile_clients": n_hostile, "hostile": hostile_out,
            "requests": done, "served": len(latencies), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "seconds": round(seconds, 2), "hostile_seconds": round(ended - start, 2),
            "requests_per_s": round(done / seconds, 2),
            "images_per_s": round(len(latencies) * rows / seconds, 2),  # served ones only
            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (20, 50, 80, 99)},
            "p50_service_ms": round(float(np.percentile(service_ms, 50)), 1),
            "p99_service_ms": round(float(np.percentile(service_ms, 99)), 1),
            "mean_batch": round((after[0] - before[0]) / executions, 2) if executions else None}


class PeakMemory:
    """Samples the RSS of a ServerProcess's tree every 50 ms while entered; ``bytes``: the
    highest sample."""

    def __init__(self, server):
        self.server, self.bytes, self.done = server, server.rss(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.wait(0.05):
            self.bytes = max(self.bytes, self.server.rss())

    def __enter__(self) -> "PeakMemory":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def _checkpoint(args, tmp: str) -> str:
    if args.checkpoint:
        return args.checkpoint
    import torch

    from bridgegan.reference import BridgeGAN, BridgeGANConfig, save_checkpoint

    torch.manual_seed(0)
    model = BridgeGAN(BridgeGANConfig.preset(args.resolution)).eval()
    return str(save_checkpoint(Path(tmp) / "ckpt", model))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="HTTP address of a running server (default: start one)")
    p.add_argument("--grpc-url", help="its gRPC address (with --url and --protocol grpc)")
    p.add_argument("--checkpoint", help="checkpoint to serve (default: seeded weights)")
    p.add_argument("--resolution", type=int, default=128, choices=PRESET_RESOLUTIONS)
    p.add_argument("--model", default=MODELS[0], choices=MODELS)
    p.add_argument("--protocol", default="http", choices=("http", "grpc"))
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=400, help="at most this many requests")
    p.add_argument("--duration", type=float, default=30.0, help="at most this many seconds")
    p.add_argument("--rate", type=float, default=None,
                   help="valid requests per second on an open-loop schedule, latency counted "
                        "from each request's due time (default: closed loop)")
    p.add_argument("--rows", type=int, default=1, help="images per request")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH)
    p.add_argument("--max-queue-delay-us", type=int, default=2000,
                   help="the started server's batching delay (default 2000, as in the recorded "
                        "runs; `bridgegan serve`'s own default is 1000)")
    p.add_argument("--hostile", type=float, default=0.0,
                   help="share of the client threads sending invalid requests (0..1)")
    p.add_argument("--warmup", type=int, default=None,
                   help="valid requests sent, not counted, before the load (default: 2 per "
                        "client thread)")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    warmup = 2 * args.concurrency if args.warmup is None else args.warmup
    load = dict(model=args.model, protocol=args.protocol, concurrency=args.concurrency,
                max_requests=args.requests, duration=args.duration, rows=args.rows,
                hostile=args.hostile, rate=args.rate)
    warm = {**load, "max_requests": warmup, "duration": 60.0, "hostile": 0.0, "rate": None}
    from bridgegan.engine.machine import cpu_model

    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    server = {}  # what this script knows of the server: only of one it starts
    if args.url:
        if warmup:
            run_load(args.url, args.grpc_url or args.url, **warm)
        result = run_load(args.url, args.grpc_url or args.url, **load)
    else:
        from bridgegan.serve.process import ServerProcess

        from bridgegan.reference.checkpoint import read_config
        from bridgegan.serve.cli import add_arguments

        serve_parser = argparse.ArgumentParser()
        add_arguments(serve_parser)
        defaults = serve_parser.parse_args([])  # what the server runs with: its defaults
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = _checkpoint(args, tmp)
            server.update(resolution=read_config(ckpt).image_size, backend=defaults.backend,
                          dtype=defaults.dtype, device=defaults.device)
            serve_args = ["--checkpoint", ckpt, "--max-batch", str(args.max_batch),
                          "--max-queue-delay-us", str(args.max_queue_delay_us),
                          "--exit-timeout-secs", "10"]
            with ServerProcess(serve_args, Path(tmp) / "serve.log") as srv:
                if warmup:
                    run_load(srv.http, srv.grpc, **warm)
                with PeakMemory(srv) as peak:
                    result = run_load(srv.http, srv.grpc, **load)
                server["peak_rss_mb"] = round(peak.bytes / 2**20)
        server.update(omp_threads=os.environ.get("OMP_NUM_THREADS", "1"),
                      checkpoint=args.checkpoint or f"seeded preset {args.resolution}",
                      max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
                      server_machine=machine)
    import torch

    from bridgegan.engine.machine import environment

    env = environment(torch.device("cpu"))  # this checkout's commit and versions
    result.update(server=server, warmup_requests=warmup, client_machine=machine,
                  python=platform.python_version(),
                  **{k: env[k] for k in ("torch", "triton", "commit")},
                  date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    print(json.dumps(result, indent=2))
    if args.json:
        write_file_atomic(Path(args.json), (json.dumps(result, indent=2) + "\n").encode())
    accepted = sum(h["accepted"] for h in result["hostile"].values())
    return 0 if result["errors"] == 0 and accepted == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
