"""Bounded load test of `bridgegan serve`: requests per second, p20 / p50 / p80 / p99
latency, errors, and the batch sizes the server formed.

    python benchmarks/load_serve.py [--checkpoint CKPT | --resolution 128] \\
        [--model translate_label] [--protocol http|grpc] [--concurrency 8] \\
        [--requests 400] [--duration 30] [--max-queue-delay-us 2000] [--json out.json]
    python benchmarks/load_serve.py --url 127.0.0.1:8000 ...   # a server already running

Without --url it starts `bridgegan serve` on free loopback ports (OMP_NUM_THREADS=1 unless
set) with the checkpoint, or seeded weights of the preset configuration, and
`--max-client-requests 0` (the threads stand in for many clients from one address), and
stops it afterwards; a server given by --url holds this address to its
--max-client-requests (16 by default: more threads get 503s). Each of --concurrency client threads sends single-image requests (its own
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
import itertools
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
    """``rows`` random values for each of ``ports``: images in [-1, 1], 0/1 labels and
    booleans, N(0, 1) noise."""
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
    load = _Load(mod, url, model, model_inputs(http, model), rows, max_requests, duration, rate)
    before = stats(http, model)
    n_hostile = round(concurrency * hostile)
    ended = load.run(concurrency, n_hostile, seed)
    after = stats(http, model)
    return {"model": model, "protocol": protocol, "concurrency": concurrency, "rows": rows,
            "loop": "closed" if rate is None else f"open, {rate:g} requests/s",
            "hostile_clients": n_hostile, "hostile": load.hostile_outcomes(),
            **load.figures(ended), "mean_batch": _mean_batch(before, after)}


class _Load:
    """One load's client threads and what they record under ``lock``: the valid requests'
    latencies (from the due time, open loop, or the send, closed), service times (from the
    send) and errors, when the last valid one was answered, and the invalid ones' outcomes
    by kind. ``start``: when the threads began, the origin of the open-loop schedule."""

    def __init__(self, mod, url: str, model: str, ports: list[dict], rows: int,
                 max_requests: int, duration: float, rate: float | None):
        self.mod, self.url, self.model, self.ports, self.rows = mod, url, model, ports, rows
        self.max_requests, self.duration, self.rate = max_requests, duration, rate
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.service: list[float] = []
        self.errors: list[str] = []
        self.refused: dict[str, list[str]] = {kind: [] for kind in HOSTILE_KINDS}
        self.sent, self.last_valid, self.start = 0, None, 0.0

    def run(self, concurrency: int, n_hostile: int, seed: int) -> float:
        """Run ``concurrency`` client threads (the first ``n_hostile`` sending invalid
        requests) until each is done; when the last one ended."""
        threads = [threading.Thread(target=self._client, args=(k, k < n_hostile, seed))
                   for k in range(concurrency)]
        self.start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter()

    def _client(self, k: int, hostile: bool, seed: int) -> None:
        """Client thread ``k``: its own client and random inputs (seed + k), sending until
        the duration has passed (a valid one: or no request is left to send)."""
        rng = np.random.default_rng(seed + k)
        client = self.mod.InferenceServerClient(self.url)
        try:
            for i in itertools.count():
                if time.perf_counter() - self.start >= self.duration:
                    return
                if hostile:
                    self._send_hostile(HOSTILE_KINDS[(i + k) % len(HOSTILE_KINDS)], client, rng)
                elif not self._valid_turn(client, rng):
                    return
        finally:
            client.close()

    def _send_hostile(self, kind: str, client, rng: np.random.Generator) -> None:
        """Send one invalid request of ``kind`` and record its outcome."""
        outcome = send_hostile(kind, client, self.mod, self.url, self.model, self.ports, rng)
        with self.lock:
            self.refused[kind].append(outcome)

    def _valid_turn(self, client, rng: np.random.Generator) -> bool:
        """Take the next valid request's ticket, wait until it is due (open loop: ticket k
        at k / rate) and send it; False when the bound, or the schedule past the duration,
        leaves none to send."""
        with self.lock:
            if self.sent >= self.max_requests:
                return False
            ticket = self.sent
            self.sent += 1
        due = None
        if self.rate is not None:
            due = self.start + ticket / self.rate
            if due - self.start >= self.duration:
                return False
            time.sleep(max(0.0, due - time.perf_counter()))
        self._send_valid(client, rng, due)
        return True

    def _send_valid(self, client, rng: np.random.Generator, due: float | None) -> None:
        """Send one valid request and record its latency (from ``due`` when given) and
        service time, or its error: a failed request is counted, the load goes on."""
        inputs = infer_inputs(self.mod, random_inputs(self.ports, self.rows, rng))
        t0 = time.perf_counter()
        try:
            client.infer(self.model, inputs)
            error = None
        except Exception as exc:
            error = str(exc)
        t1 = time.perf_counter()
        with self.lock:
            self.last_valid = t1 if self.last_valid is None else max(self.last_valid, t1)
            if error is None:
                self.latencies.append(t1 - (t0 if due is None else due))
                self.service.append(t1 - t0)
            else:
                self.errors.append(error)

    def figures(self, ended: float) -> dict:
        """Counts, rates and latency percentiles of the valid requests. Their span ends at
        the last valid answer: the hostile threads go on until the duration whatever the
        request bound, and their time is not the valid requests' time."""
        seconds = (self.last_valid if self.last_valid is not None else ended) - self.start
        done, served = len(self.latencies) + len(self.errors), len(self.latencies)
        p20, p50, p80, p99 = _percentiles_ms(self.latencies, (20, 50, 80, 99))
        service_p50, service_p99 = _percentiles_ms(self.service, (50, 99))
        return {"requests": done, "served": served, "errors": len(self.errors),
                "first_error": self.errors[0] if self.errors else None,
                "seconds": round(seconds, 2), "hostile_seconds": round(ended - self.start, 2),
                "requests_per_s": round(done / seconds, 2),
                "images_per_s": round(served * self.rows / seconds, 2),  # served ones only
                "p20_ms": p20, "p50_ms": p50, "p80_ms": p80, "p99_ms": p99,
                "p50_service_ms": service_p50, "p99_service_ms": service_p99}

    def hostile_outcomes(self) -> dict:
        """Per kind sent: how many, how many the server accepted, the first error."""
        return {kind: {"sent": len(v), "accepted": v.count("accepted"),
                       "first_error": next((e for e in v if e != "accepted"), None)}
                for kind, v in self.refused.items() if v}


def _percentiles_ms(seconds: list[float], qs: tuple[int, ...]) -> list[float]:
    """The ``qs`` percentiles of ``seconds`` in ms, to 0.1 ms; NaN when there are none (no
    request served)."""
    ms = np.array(seconds) * 1e3 if seconds else np.array([np.nan])
    return [round(float(np.percentile(ms, q)), 1) for q in qs]


def _mean_batch(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Images per execution between two ``stats`` readings: the batches the server formed
    (None when it executed nothing)."""
    executions = after[1] - before[1]
    return round((after[0] - before[0]) / executions, 2) if executions else None


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
    """--checkpoint, else a checkpoint of seeded weights of the --resolution preset in
    ``tmp``."""
    if args.checkpoint:
        return args.checkpoint
    import torch

    from bridgegan.reference import BridgeGAN, BridgeGANConfig, save_checkpoint

    torch.manual_seed(0)
    model = BridgeGAN(BridgeGANConfig.preset(args.resolution)).eval()
    return str(save_checkpoint(Path(tmp) / "ckpt", model))


def main(argv: list[str] | None = None) -> int:
    """Run the load benchmark (see the module docstring); 0 when every valid request was
    served and every invalid one refused, else 1."""
    args = _parse_args(argv)
    load, warm = _loads(args)
    from bridgegan.engine.machine import cpu_model

    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    if args.url:
        grpc = args.grpc_url or args.url
        _warm_up(args.url, grpc, warm)
        result = run_load(args.url, grpc, **load)
        server = {}  # another machine, maybe: nothing is said of it
    else:
        result, server = _load_started_server(args, load, warm, machine)
    _describe(result, server, warm["max_requests"], machine)
    _report(result, args.json)
    accepted = sum(h["accepted"] for h in result["hostile"].values())
    return 0 if result["errors"] == 0 and accepted == 0 else 1


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
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
    return p.parse_args(argv)


def _loads(args: argparse.Namespace) -> tuple[dict, dict]:
    """run_load's keywords for the measured load and for the warm-up before it: --warmup
    valid requests (default 2 per client thread), closed loop, within 60 s."""
    warmup = 2 * args.concurrency if args.warmup is None else args.warmup
    load = dict(model=args.model, protocol=args.protocol, concurrency=args.concurrency,
                max_requests=args.requests, duration=args.duration, rows=args.rows,
                hostile=args.hostile, rate=args.rate)
    return load, {**load, "max_requests": warmup, "duration": 60.0, "hostile": 0.0, "rate": None}


def _warm_up(http: str, grpc: str, warm: dict) -> None:
    """Send the uncounted warm-up (none when it has no requests): the first calls at a
    batch size compile, capture or search what they need."""
    if warm["max_requests"]:
        run_load(http, grpc, **warm)


def _load_started_server(args: argparse.Namespace, load: dict, warm: dict,
                         machine: str) -> tuple[dict, dict]:
    """Start `bridgegan serve` on free loopback ports with the checkpoint (or seeded
    weights), warm it up and measure the load while sampling its peak memory; the result
    and what is known of that server (its settings, peak RSS and ``machine``)."""
    from bridgegan.reference.checkpoint import read_config
    from bridgegan.serve.process import ServerProcess

    defaults = _serve_defaults()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(args, tmp)
        server = {"resolution": read_config(ckpt).image_size, **defaults}
        # the client threads stand in for many clients from one address: no per-address
        # share (a server given by --url holds this address to its --max-client-requests)
        serve_args = ["--checkpoint", ckpt, "--max-batch", str(args.max_batch),
                      "--max-queue-delay-us", str(args.max_queue_delay_us),
                      "--exit-timeout-secs", "10", "--max-client-requests", "0"]
        with ServerProcess(serve_args, Path(tmp) / "serve.log") as srv:
            _warm_up(srv.http, srv.grpc, warm)
            with PeakMemory(srv) as peak:
                result = run_load(srv.http, srv.grpc, **load)
            server["peak_rss_mb"] = round(peak.bytes / 2**20)
    server.update(omp_threads=os.environ.get("OMP_NUM_THREADS", "1"),
                  checkpoint=args.checkpoint or f"seeded preset {args.resolution}",
                  max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
                  server_machine=machine)
    return result, server


def _serve_defaults() -> dict:
    """The backend, dtype and device `bridgegan serve` runs with when not told (this
    script passes none of them)."""
    from bridgegan.serve.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = parser.parse_args([])
    return {"backend": defaults.backend, "dtype": defaults.dtype, "device": defaults.device}


def _describe(result: dict, server: dict, warmup: int, machine: str) -> None:
    """Add to ``result`` what was measured where: the server, the warm-up, the client's
    machine, this checkout's commit, the python / torch / triton versions and the date."""
    import torch

    from bridgegan.engine.machine import environment

    env = environment(torch.device("cpu"))
    result.update(server=server, warmup_requests=warmup, client_machine=machine,
                  python=platform.python_version(),
                  **{k: env[k] for k in ("torch", "triton", "commit")},
                  date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


def _report(result: dict, path: str | None) -> None:
    """Print ``result`` as JSON and, with ``path`` (--json), write it there atomically."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        write_file_atomic(Path(path), (text + "\n").encode())


if __name__ == "__main__":
    sys.exit(main())
